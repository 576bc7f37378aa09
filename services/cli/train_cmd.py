"""`drivelab train --algo NAME [--pretrain bc] --scenes SPEC --steps N`: the fused single-process trainer.

Runs shared.algos.fused (policy inside the jitted rollout, the learner's own update step; the loop is
services/cli/train_loop.py) with a progress bar showing agent steps, steps/s, the training rollouts' rates and the
latest held-out evaluation, and writes into --run-dir:
  metrics_history.jsonl          one line per iteration: phase, iteration, agent_steps, wall_s, losses, rates;
                                 every --eval-every iterations also a line with kind "eval": greedy held-out
                                 evaluation (done signals off) as eval/goal_reached, eval/collision, eval/offroad, ...
  checkpoints/<phase>/ckpt_<version>/  atomic orbax checkpoints (shared.training.checkpoint), the last 3 kept
  policy.json                    how to rebuild the agent (net, preset, grid, agents) for `load_policy`
  evaluations/, report/          greedy evaluation (done signals off) of the final params and the log, and the report
A rerun with the same --run-dir resumes from the newest checkpoint (same scenes and flags: exactly where it stopped).
`--stack` runs each phase with the service stack instead (services/cli/train_stack.py: the processes `drivelab up`
starts, the learner calling the same update steps; BC then PPO fine-tuned from the BC checkpoint), then the same
evaluation and report.
Exit codes: 0 ok, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from services.cli import scenes_io
from services.cli.train_loop import EVAL_KEYS, eval_row, eval_rows, summary_row, summary_rows, train_phase

NETS, PRESETS = ("mlp", "perceiver"), ("tiny", "small", "base")


def register(subparsers) -> None:
  p = subparsers.add_parser("train", help="train a driving policy (fused single-process path)")
  from shared.algos import registry

  p.add_argument("--algo", type=registry.check, default="ppo",
                 help=f"a registered algorithm ({', '.join(registry.names())}) or a plug-in module:ATTRIBUTE")
  p.add_argument("--pretrain", choices=("bc",), default=None, help="pretrain policy and value by BC first")
  p.add_argument("--scenes", default="synthetic", help="'synthetic', 'synthetic:N', a folder or a scene file")
  p.add_argument("--num", type=int, default=None, help="scenes to use (synthetic: how many; default 16)")
  p.add_argument("--seed", type=int, default=0, help="synthetic scene seed and training seed")
  p.add_argument("--steps", type=int, default=200_000, help="agent steps of the main algorithm")
  p.add_argument("--pretrain-steps", type=int, default=None, help="agent steps of BC pretraining (default --steps)")
  p.add_argument("--run-dir", default="runs/train", help="outputs and checkpoints; reruns resume from here")
  from services.cli import eval_cmd

  p.add_argument("--agents", default="all", help=eval_cmd.AGENTS_HELP)
  p.add_argument("--at-goal", default="stop", help=eval_cmd.AT_GOAL_HELP)
  p.add_argument("--net", choices=NETS, default="mlp")
  p.add_argument("--preset", choices=PRESETS, default="small", help="network size")
  p.add_argument("--scenes-per-iter", type=int, default=4, help="scenes simulated per iteration")
  p.add_argument("--lr", type=float, default=None, help="learning rate (default: 3e-4 PPO, 1e-3 BC)")
  p.add_argument("--bc-dagger", type=float, default=0.0,
                 help="BC: probability that the policy drives a step while the grid expert labels it (DAgger-style; "
                      "0: the expert drives)")
  p.add_argument("--ref-kl", type=float, default=0.0,
                 help="with --pretrain bc: weight of KL(pi_BC || pi) in PPO's loss, keeping fine-tuning near the BC "
                      "policy on the states PPO visits (0: off)")
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--minibatches", type=int, default=4)
  p.add_argument("--checkpoint-every", type=int, default=20, help="iterations between checkpoints")
  p.add_argument("--eval-every", type=int, default=20,
                 help="iterations between greedy evaluations on the held-out scenes, shown in the bar (0: off)")
  p.add_argument("--max-seconds", type=float, default=None, help="stop each phase after this much training time")
  p.add_argument("--held-out-fraction", type=float, default=0.2)
  p.add_argument("--no-eval", action="store_true", help="skip the final evaluation and report")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--stack", action="store_true",
                 help="train with the service stack (as `drivelab up` runs it) instead of the fused single process")
  p.add_argument("--simulators", type=int, default=2, help="--stack: simulator replicas")
  scenes_io.add_caps_arguments(p)
  p.set_defaults(func=cmd_train, max_objects=32, max_road_points=3000, lr_decay_iters=0)  # constant step size


def load_scenes(scenes: str, num: int | None, seed: int, scene_cfg, vehicles: tuple[int, int] | None = None):
  """(scenarios, metas, source) of a shared.scenes.source spec ("synthetic", "synthetic:N", a folder or a file;
  `vehicles`: range per synthetic scene, default the generator's); raises ValueError. `source` says how to make the
  same scenes again (the report reloads them)."""
  from shared.scenes import source as scene_source

  loaded = scene_source.load(scene_source.parse(scenes, num, seed, vehicles), scene_cfg)
  return loaded.scenarios, loaded.metas, loaded.record


def make_agent(net: str, preset: str):
  from shared.algos import agent as agent_lib
  from shared.nets import actor_critic
  from shared.sim import actions

  grid = actions.ActionGridConfig()
  return agent_lib.make_agent(actor_critic.preset(preset, net), grid)


def train_env_config(agents: str, at_goal: str = "stop"):
  """The training environment for an --agents value (failure done signals on) and an --at-goal value (see
  eval_cmd.env_config_for); raises ValueError on a bad value."""
  from services.cli import eval_cmd

  return eval_cmd.env_config_for(agents, at_goal)


def fused_config(args, algo: str, env_cfg, **hyper):
  """FusedConfig from the flags (lr, lr_decay_iters, epochs, minibatches, scenes_per_iter, bc_dagger) for the
  registry's `algo` (shared.training.recipes.fused_config); `hyper`: more api.Hyper fields (e.g. ref_kl_coef)."""
  from shared.training import recipes

  return recipes.fused_config(algo, env_cfg, args.scenes_per_iter, args.lr, args.lr_decay_iters, args.epochs,
                              args.minibatches, args.bc_dagger, **hyper)


def evaluate_and_report(agent, params, scenarios, metas, env_cfg, scene_cfg, run_dir: str, source: dict,
                        held_out_fraction: float, seed: int, policy_name: str, with_log: bool = True) -> dict:
  """Greedy evaluation (done signals off) of `params` (and the log) into run_dir/evaluations; returns the record."""
  import jax

  from services.evaluator import report
  from shared import evaluation

  _, held = evaluation.split_scenes(metas, held_out_fraction, seed)
  split = {"held_out_fraction": held_out_fraction, "seed": seed}
  out = None
  for name, policy in ([("log", "log")] if with_log else []) + [(policy_name, agent.policy_fn(greedy=True))]:
    res = evaluation.evaluate_scenes(policy, params, scenarios, env_cfg, jax.random.PRNGKey(seed),
                                     batch_size=min(4, len(scenarios)))
    record = report.make_record(name, res["per_agent"], metas, source, evaluation.eval_env_config(env_cfg),
                                scene_cfg, held, split)
    report.write_evaluation(run_dir, record, {k: res[k] for k in ("x", "y", "yaw")})
    out = record
  return out


def load_policy(run_dir: str):
  """(agent, params, policy.json dict) from a training run's newest checkpoint (PPO if any, else BC)."""
  from shared.training import checkpoint

  with open(os.path.join(run_dir, "policy.json")) as f:
    meta = json.load(f)
  for phase in ("ppo", "bc"):
    found = checkpoint.list_checkpoints(os.path.join(run_dir, "checkpoints", phase))
    if found:
      raw, _, _ = checkpoint.read_raw(found[-1][1])
      return make_agent(meta["net"], meta["preset"]), raw["train"]["params"], meta
  raise FileNotFoundError(f"no checkpoint under {run_dir}/checkpoints")


def cmd_train(args: argparse.Namespace) -> int:
  from rich.console import Console

  from shared.algos import registry

  console = Console()
  try:
    env_cfg = train_env_config(args.agents, args.at_goal)
    scene_cfg = scenes_io.caps_from_args(args)
    if args.steps < 1 or args.scenes_per_iter < 1 or args.eval_every < 0:
      raise ValueError("need --steps >= 1, --scenes-per-iter >= 1 and --eval-every >= 0")
    if args.pretrain and registry.get(args.algo).acting != "policy":
      raise ValueError(f"--pretrain bc goes with an algorithm that acts with its own policy, not --algo {args.algo}")
    if args.ref_kl < 0 or (args.ref_kl > 0 and not args.pretrain):
      raise ValueError("--ref-kl is a weight >= 0 and needs --pretrain bc (the BC policy is the reference)")
    if args.stack:
      from services.cli import train_stack

      train_stack.check_args(args)
    scenarios, metas, source = load_scenes(args.scenes, args.num, args.seed, scene_cfg)
  except ValueError as e:
    console.print(f"drivelab train: {e}")
    return 2
  if not scenarios:
    console.print(f"drivelab train: no scenes loaded from {args.scenes}")
    return 2
  from shared import evaluation

  if args.stack:
    return _train_with_stack(args, console, scenarios, metas, source, env_cfg, scene_cfg)
  train_idx, held = evaluation.split_scenes(metas, args.held_out_fraction, args.seed)
  train_scenes, held_scenes = [scenarios[i] for i in train_idx], [scenarios[i] for i in held]
  os.makedirs(args.run_dir, exist_ok=True)
  agent = make_agent(args.net, args.preset)
  meta = {"net": args.net, "preset": args.preset, "agents": args.agents, "at_goal": args.at_goal, "algo": args.algo,
          "pretrain": args.pretrain, "ref_kl": args.ref_kl,
          "source": source, "caps": dataclasses.asdict(scene_cfg)}
  with open(os.path.join(args.run_dir, "policy.json"), "w") as f:
    json.dump(meta, f, indent=1)
  console.print(f"training {args.algo}{' after BC' if args.pretrain else ''} on {len(train_scenes)} scenes "
                f"({len(scenarios) - len(train_scenes)} held out), run dir {args.run_dir}")
  t0, params = time.perf_counter(), None
  for algo, steps in _phases(args):
    kl = algo == args.algo and args.ref_kl > 0  # the reference is the BC phase's final params
    cfg = fused_config(args, algo, env_cfg, **({"ref_kl_coef": args.ref_kl} if kl else {}))
    params, done, _ = train_phase(agent, cfg, train_scenes, steps, args.run_dir, args.seed, params,
                                  args.checkpoint_every, not args.no_progress, held_out=held_scenes,
                                  eval_every=args.eval_every, max_seconds=args.max_seconds,
                                  reference=params if kl else None)
    console.print(f"{algo}: {done:,} agent steps, {time.perf_counter() - t0:.0f} s")
  if not args.no_eval:
    _final_report(args, console, agent, params, scenarios, metas, env_cfg, scene_cfg, dict(source, agents=args.agents),
                  args.held_out_fraction)
  return 0


def _phases(args) -> list[tuple[str, int]]:
  """(algorithm, agent steps) of each training phase: BC first with --pretrain bc."""
  return ([("bc", args.pretrain_steps or args.steps)] if args.pretrain else []) + [(args.algo, args.steps)]


def _final_report(args, console, agent, params, scenarios, metas, env_cfg, scene_cfg, source: dict,
                  held_out_fraction: float) -> None:
  """Greedy evaluation of the final params (and the log), its summary on the console, and the HTML report."""
  from services.cli import eval_cmd

  record = evaluate_and_report(agent, params, scenarios, metas, env_cfg, scene_cfg, args.run_dir, source,
                               held_out_fraction, args.seed, f"{args.algo}{'+bc' if args.pretrain else ''}")
  eval_cmd.print_summary(console, record, "final policy, greedy, done signals off")
  try:
    from services.evaluator import report

    console.print(f"report: {report.build_report(args.run_dir)['html']}")
  except Exception as e:  # noqa: BLE001  the report is a convenience; training results are already written
    console.print(f"report failed: {e!r}")


def _train_with_stack(args, console, scenarios, metas, source, env_cfg, scene_cfg) -> int:
  """`--stack`: each phase by the service stack (services/cli/train_stack.py), then the same evaluation and report.
  The stack's scene loader feeds every scene to training, so the report has no held-out split."""
  from services.cli import train_stack

  os.makedirs(args.run_dir, exist_ok=True)
  console.print(f"training {args.algo}{' after BC' if args.pretrain else ''} with the service stack on "
                f"{len(scenarios)} scenes (all of them: the stack has no held-out split), run dir {args.run_dir}")
  t0 = time.perf_counter()
  for algo, steps in _phases(args):
    try:
      done = train_stack.run_phase(args, algo, steps, console, not args.no_progress)
    except RuntimeError as e:
      console.print(f"drivelab train: {e}")
      return 1
    console.print(f"{algo}: {done:,} agent steps learned from, {time.perf_counter() - t0:.0f} s")
  if args.no_eval:
    return 0
  try:
    agent, params, _ = load_policy(args.run_dir)
  except FileNotFoundError as e:
    console.print(f"drivelab train: {e}")
    return 1
  _final_report(args, console, agent, params, scenarios, metas, env_cfg, scene_cfg,
                dict(source, agents=args.agents, trained_by="stack"), 0.0)
  return 0


# train_loop's names are re-exported: the loop is part of this command's interface.
__all__ = ["EVAL_KEYS", "register", "cmd_train", "eval_row", "evaluate_and_report", "fused_config", "load_policy",
           "load_scenes", "make_agent", "summary_row", "summary_rows", "eval_rows", "train_env_config",
           "train_phase"]
