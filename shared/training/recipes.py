"""Training recipes as typed library code: the fused trainer's config from plain settings, and the benchmark's
recipe (`drivelab bench learn`, whose quick version is also `make run`'s training phase).

  cfg = recipes.fused_config("ppo", env_cfg, num_scenes=4, learning_rate=1e-3, num_epochs=4, num_minibatches=2)
  s = recipes.settings(quick=True)              # the benchmark's recipe: scenes, budgets, step sizes, schedules
  cfg = recipes.synthetic_ppo(s, env_cfg)       # its from-scratch PPO on synthetic scenes

`fused_config` turns the settings every front end offers into a FusedConfig for any registry algorithm (its own
config built by the bundle's `configure` from an api.Hyper); `dagger` applies to algorithms acting "expert".
"""

from __future__ import annotations

from shared.algos import api, fused, registry

# Paper 002's RL fine-tuning after BC (appendix E): clip 0.3, entropy 3e-2, lr 5.6e-5 (`lr_finetune`). Its value
# loss scale (1e-2) goes with its unnormalised returns; ours are O(1) (+-1 events), so the default value_coef stays.
# ref_kl_coef: KL(pi_BC || pi) on the visited states, the divergence term paper 002's conclusion proposes: with
# every moving vehicle controlled it keeps fine-tuning from trading progress for fewer encounters.
FINETUNE_PPO = dict(clip_eps=0.3, entropy_coef=3e-2, ref_kl_coef=0.2)
BENCH_EPOCHS, BENCH_MINIBATCHES = 4, 2


def fused_config(algo: str, env_cfg, num_scenes: int, learning_rate: float | None = None, lr_decay_iters: int = 0,
                 num_epochs: int = 4, num_minibatches: int = 4, dagger: float = 0.0, dagger_ramp_iters: int = 0,
                 **hyper) -> fused.FusedConfig:
  """FusedConfig of the registry's `algo`. learning_rate None: the bundle's default; lr_decay_iters > 0: the step
  size falls along a half cosine to 0 over that many iterations' gradient steps; `hyper`: more api.Hyper fields
  (e.g. clip_eps, ref_kl_coef)."""
  algorithm = registry.get(algo)
  h = api.Hyper(learning_rate=learning_rate, lr_decay_steps=lr_decay_iters * num_epochs * num_minibatches,
                num_epochs=num_epochs, num_minibatches=num_minibatches, **hyper)
  return fused.FusedConfig(env=env_cfg, algo=algo, num_scenes=num_scenes, learner=algorithm.configure(h),
                           dagger=dagger if algorithm.acting == "expert" else 0.0, dagger_ramp_iters=dagger_ramp_iters)


def settings(quick: bool) -> dict:
  """The benchmark's recipe (also `make run`'s training phase)."""
  if quick:
    return dict(num_timesteps=41, synth_scenes=48, synth_vehicles=(4, 10), max_objects=16, synth_budget_s=600,
                held_out_fraction=0.25, eval_every=60, scenes_per_iter=4, bc_iters=300, lr_ppo=1e-3,
                lr_bc=2e-3, lr_finetune=5.6e-5, net="tiny", ppo_agent_steps=240_000, select_every_steps=24_000,
                bc_dagger=0.5, bc_dagger_ramp=100, bc_lr_decay=True, bc_agents="moving", ppo_agents=None,
                real_road_points=3000)
  return dict(num_timesteps=91, synth_scenes=64, synth_vehicles=(10, 28), max_objects=32, synth_budget_s=3600,
              held_out_fraction=0.25, eval_every=50, scenes_per_iter=8, bc_iters=1000, lr_ppo=3e-4,
              lr_bc=2e-3, lr_finetune=5.6e-5, net="small", ppo_agent_steps=4_000_000, select_every_steps=200_000,
              bc_dagger=0.5, bc_dagger_ramp=300, bc_lr_decay=True, bc_agents="moving", ppo_agents=None,
              real_road_points=3000)


def bench_config(s: dict, algo: str, env_cfg, learning_rate: float, num_scenes: int | None = None, **over):
  """fused_config with the benchmark's epochs and minibatches and recipe `s`'s scenes per iteration."""
  return fused_config(algo, env_cfg, num_scenes or s["scenes_per_iter"], learning_rate,
                      num_epochs=BENCH_EPOCHS, num_minibatches=BENCH_MINIBATCHES, **over)


def synthetic_ppo(s: dict, env_cfg) -> fused.FusedConfig:
  """The synthetic from-scratch PPO configuration of recipe `s`."""
  return bench_config(s, "ppo", env_cfg, s["lr_ppo"])


def eval_due(it: int, steps: int, block: int, every: int, every_steps: int) -> tuple[bool, int]:
  """(evaluate now?, block) after iteration `it` (1-based) with `steps` agent steps done: on the first iteration, then
  every `every` iterations, or whenever the steps enter a new block of `every_steps` (`block`: the last one seen;
  one iteration may cross several blocks and still evaluates once)."""
  new_block = steps // every_steps if every_steps else 0
  due = it == 1 or bool(every and it % every == 1) or bool(every_steps and new_block > block)
  return due, new_block


__all__ = ["BENCH_EPOCHS", "BENCH_MINIBATCHES", "FINETUNE_PPO", "bench_config", "eval_due", "fused_config",
           "settings", "synthetic_ppo"]
