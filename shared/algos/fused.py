"""The fused single-process path (paper 002, 3.2.2): the policy acts inside the jitted `lax.scan` rollout over a batch
of scenes, and the learner's update step runs on what it collected, all in one jitted `train_iteration`.

  cfg = FusedConfig(env=env.EnvConfig(control_mode="all"), algo="ppo", num_scenes=4)
  carry = init_carry(agent, cfg, scenarios, rng)          # scenarios: list of padded Scenario (the scene pool)
  iteration = make_train_iteration(agent, cfg)
  carry, metrics = iteration(carry)                       # one episode of B scenes + one update

The algorithm is any bundle of shared.algos.registry (`cfg.algo`; `cfg.learner` its config, default the bundle's).
Each iteration draws `num_scenes` scenes from the pool (held on the device inside the carry), resets them, and rolls
`num_steps` steps (default: to the end of the log, so episodes end by termination or the log's truncation).
A bundle acting "policy" (PPO): actions sampled from the current params. Acting "expert" (BC): the closed-loop grid
expert of the log (`rollout.grid_expert`) drives, and its grid actions with the rewards of that replay are the
labels; with `dagger` > 0 the policy itself drives some steps and the expert only labels them (DAgger-style).
The update is exactly the learner service's: the bundle's `make_update`, fed by its `from_rollout`.
Shapes: B scenes, O objects, T steps, M acting rows per scene (shared.sim.rows: the controlled objects, 1 for
the self-driving car alone, else min(max_controlled, O)); the policy runs on, and the update learns from, the M
rows only: recorded arrays are (T, B, M, ...), observations (T + 1, B, M, ...); episode flags stay (B, O).
`run` is the Python driver around it: a per-iteration callback (history lines, checkpoints, periodic evaluation live
in the caller) and an optional progress callback (the CLI draws its bar with it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from shared.algos import api, registry
from shared.algos.agent import Agent, as_net_input
from shared.scenes import types
from shared.sim import env, loop, rollout
from shared.sim import rows as rows_lib

Array = jax.Array
Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class FusedConfig:
  """Fused training settings.

  Attributes:
    env: the training environment (done signals on).
    algo: a name in shared.algos.registry.
    num_scenes: B, scenes simulated per iteration.
    num_steps: steps per iteration (None: from init_step to the end of the log).
    learner: the algorithm's config (its bundle's `config_type`); None: the bundle's default.
    dagger: an algorithm acting "expert" only: the probability that, at each step, an acting agent's own policy
      (sampled) drives instead of the grid expert (DAgger-style data aggregation). Every visited state is still
      labelled with the grid expert's action for it (the expert tracks the log from wherever the car is), so the
      demonstrations cover the states the policy drifts into. 0: the expert alone drives (plain BC).
    dagger_ramp_iters: the policy's share grows linearly from 0 to `dagger` over this many iterations (0: at once),
      so the first, untrained policies do not fill the demonstrations with states far off the log.
  """

  env: env.EnvConfig = env.EnvConfig()
  algo: str = "ppo"
  num_scenes: int = 4
  num_steps: int | None = None
  learner: Any = None
  dagger: float = 0.0
  dagger_ramp_iters: int = 0

  def __post_init__(self):
    algorithm = registry.get(self.algo)  # ValueError naming the choices
    if self.learner is None:
      object.__setattr__(self, "learner", algorithm.default_config())
    elif not isinstance(self.learner, algorithm.config_type):
      raise ValueError(f"FusedConfig.learner must be a {algorithm.config_type.__name__} for {self.algo!r}, got "
                       f"{type(self.learner).__name__}")
    if not 0.0 <= self.dagger <= 1.0:
      raise ValueError(f"FusedConfig.dagger must be a probability in [0, 1], got {self.dagger}")

  @property
  def algorithm(self) -> api.Algorithm:
    return registry.get(self.algo)

  def steps_for(self, num_timesteps: int) -> int:
    return num_timesteps - 1 - self.env.init_step if self.num_steps is None else int(self.num_steps)


@flax.struct.dataclass
class FusedCarry:
  """Attributes: train (TrainingState), scenes (Scenario pool, (N, ...)), rng, iteration () int32, reference
  (frozen params of the reference policy for PPOConfig.ref_kl_coef > 0, e.g. the BC policy being fine-tuned; None
  otherwise)."""

  train: Any  # the algorithm's state (a training.TrainingState for PPO and BC)
  scenes: types.Scenario
  rng: Array
  iteration: Array
  reference: Any = None


@flax.struct.dataclass
class Collected:
  """One rollout of B scenes (see the module docstring for shapes)."""

  obs: Any
  factors: Array
  logp: Array
  value: Array
  reward: Array
  terminated: Array
  truncated: Array
  acting: Array
  label_ok: Array
  controlled0: Array  # (B, O)
  final: Any  # SimState after the rollout
  overlap: Array  # (B, O) any overlap while acting
  offroad: Array


def _expert_act(agent: Agent, cfg: env.EnvConfig):
  """Per-scene grid expert returning (grid action, label valid: shared.sim.loop.label_ok)."""
  expert = rollout.grid_expert(cfg)
  return lambda state, key: (expert(state, None, key), loop.label_ok(state))


def collect(agent: Agent, cfg: FusedConfig, params, scenarios: types.Scenario, rng: Array, expert: bool,
            dagger: float | Array = 0.0) -> Collected:
  """Resets B scenes and rolls them `num_steps` steps (shared.sim.loop.run) under the policy (sampled) or the
  grid expert. With `expert` and `dagger` (a Python float > 0, or a traced probability) each acting agent's sampled
  policy action drives with probability `dagger` at each step, and the recorded actions (factors, label_ok) are
  still the grid expert's for the visited states."""
  mix = not isinstance(dagger, (int, float)) or dagger > 0
  ecfg = cfg.env
  k_reset, k_roll = jax.random.split(rng)
  state = env.reset_batch(scenarios, k_reset, ecfg)
  rows = rows_lib.env_rows(state.controlled, ecfg)
  view = lambda o: rows.gather(as_net_input(o))
  num_steps = cfg.steps_for(scenarios.objects.x.shape[-1])
  expert_act = _expert_act(agent, ecfg)

  def act(s, obs, key):
    if expert:
      if mix:
        key, k_policy, k_mix = jax.random.split(key, 3)
      grid_o, ok_o = jax.vmap(expert_act)(s, jax.random.split(key, s.t.shape[0]))
      grid, ok = rows.gather((grid_o, ok_o))
      factors, logp, value = agent.to_factors(grid), jnp.zeros(grid.shape), jnp.zeros(grid.shape)
      if mix:  # the policy drives some steps; the labels stay the expert's
        own = agent.select_action(params, obs, k_policy).action
        grid_o = rows.scatter(jnp.where(jax.random.bernoulli(k_mix, dagger, grid.shape), own, grid))
    else:
      a = agent.select_action(params, obs, key)
      grid, factors, logp, value, ok = a.action, a.factors, a.logp, a.value, jnp.ones(a.action.shape, bool)
      grid_o = rows.scatter(grid)
    return grid_o, (factors, logp, value, ok)

  def record(s, obs, extras, out):
    factors, logp, value, ok = extras
    acting_o = s.controlled & ~s.done
    acting, reward, done, truncated = rows.gather((acting_o, out.reward, out.done, out.truncated))
    return dict(obs=obs, factors=factors, logp=logp, value=value, reward=reward, terminated=done & acting,
                truncated=truncated & acting, acting=acting, label_ok=ok & acting,
                overlap=out.metrics.overlap & acting_o, offroad=out.metrics.offroad & acting_o)

  keys = jax.random.split(k_roll, num_steps)
  final, obs_last, rec = loop.run(ecfg, act, state, view(loop.observe(ecfg, state)), keys, record, view)
  obs = jax.tree.map(lambda xs, x: jnp.concatenate([xs, x[None]], 0), rec.pop("obs"), obs_last)
  overlap, offroad = jnp.any(rec.pop("overlap"), 0), jnp.any(rec.pop("offroad"), 0)
  return Collected(obs=obs, controlled0=state.controlled, final=final, overlap=overlap, offroad=offroad, **rec)


def rollout_rates(c: Collected) -> Metrics:
  """Episode rates over the agents controlled at reset: goal, collision, off-road; and agent steps taken."""
  n = jnp.maximum(jnp.sum(c.controlled0), 1)
  rate = lambda flags: jnp.sum(flags & c.controlled0) / n
  return {"goal_rate": rate(c.final.goal_reached), "collision_rate": rate(c.overlap),
          "offroad_rate": rate(c.offroad), "agent_steps": jnp.sum(c.acting).astype(jnp.float32),
          "mean_episode_reward": jnp.sum(c.reward) / n}


def sample_scenes(pool: types.Scenario, num: int, rng: Array) -> types.Scenario:
  """`num` scenes of the pool, without replacement when the pool is large enough."""
  n = pool.objects.x.shape[0]
  idx = jax.random.choice(rng, n, (num,), replace=n < num)
  return jax.tree.map(lambda x: x[idx], pool)


def make_update_fn(agent: Agent, cfg: FusedConfig):
  """The learner's un-jitted update for cfg.algo (the very function the learner service jits)."""
  return cfg.algorithm.make_update(agent, cfg.learner, None)


def dagger_probability(cfg: FusedConfig, iteration: Array) -> float | Array:
  """The policy's share of the driving at BC iteration `iteration` (0-based): cfg.dagger, reached linearly over
  cfg.dagger_ramp_iters iterations. A Python float when there is no ramp (0.0: plain BC, no policy in the rollout)."""
  if cfg.dagger == 0 or cfg.dagger_ramp_iters <= 0:
    return cfg.dagger
  return cfg.dagger * jnp.minimum(jnp.asarray(iteration, jnp.float32) / cfg.dagger_ramp_iters, 1.0)


def make_train_iteration(agent: Agent, cfg: FusedConfig):
  """Jitted `train_iteration(carry) -> (carry, metrics)`: COLLECT then UPDATE; the carry is donated."""
  if agent.grid_cfg != cfg.env.actions:
    raise ValueError(f"agent grid {agent.grid_cfg} != environment grid {cfg.env.actions}")
  algorithm = cfg.algorithm
  update = make_update_fn(agent, cfg)
  kl_to_reference = algorithm.wants_reference(cfg.learner)

  def train_iteration(carry: FusedCarry) -> tuple[FusedCarry, Metrics]:
    if kl_to_reference and carry.reference is None:
      raise ValueError(f"{cfg.algo}: a KL to a reference policy needs reference params: "
                       "init_carry(..., reference_params=...)")
    rng, k_scenes, k_roll = jax.random.split(carry.rng, 3)
    # COLLECT
    scenarios = sample_scenes(carry.scenes, cfg.num_scenes, k_scenes)
    c = collect(agent, cfg, algorithm.policy_params(carry.train), scenarios, k_roll,
                expert=algorithm.acting == "expert", dagger=dagger_probability(cfg, carry.iteration))
    # UPDATE
    batch = algorithm.from_rollout(c, cfg.learner)
    if kl_to_reference:  # the reference policy's logits on the visited states, one batched forward pass
      batch = algorithm.add_reference(agent, batch, carry.reference)
    train, metrics = update(carry.train, batch)
    metrics = dict(metrics, **rollout_rates(c))
    return carry.replace(train=train, rng=rng, iteration=carry.iteration + 1), metrics

  return jax.jit(train_iteration, donate_argnums=0)


def observation_example(scenario: types.Scenario, cfg: env.EnvConfig) -> Any:
  """Shapes (ShapeDtypeStruct) of one scene's NetInput (O, ...), without running the simulator."""
  return jax.eval_shape(lambda s: as_net_input(env.observe(env.reset(s, jax.random.PRNGKey(0), cfg), cfg)),
                        scenario)


def init_carry(agent: Agent, cfg: FusedConfig, scenarios: list[types.Scenario], rng: Array,
               params: Any = None, reference_params: Any = None) -> FusedCarry:
  """The carry for a scene pool; fresh params (host-drawn, no compile) unless `params` is given;
  `reference_params`: the frozen reference policy of PPOConfig.ref_kl_coef > 0 (a copy is kept)."""
  pool = types.stack(list(scenarios))
  k_params, k_train, k_carry = jax.random.split(rng, 3)
  if params is None:
    seed = int(jax.random.randint(k_params, (), 0, 2**31 - 1))
    params = agent.host_init(seed, observation_example(scenarios[0], cfg.env))
  train = cfg.algorithm.init(agent, cfg.learner, jax.tree.map(jnp.array, params), k_train)
  reference = None if reference_params is None else jax.tree.map(jnp.array, reference_params)
  return FusedCarry(train=train, scenes=pool, rng=k_carry, iteration=jnp.zeros((), jnp.int32), reference=reference)


# DRIVER

def run(iteration_fn, carry: FusedCarry, total_agent_steps: int, on_iteration=None, progress=None,
        max_iterations: int | None = None, agent_steps_done: int = 0) -> tuple[FusedCarry, int]:
  """Calls `iteration_fn` until `total_agent_steps` agent steps (or `max_iterations`); returns (carry, agent steps).

  on_iteration(carry, metrics: dict of floats, agent_steps: int, wall_s: float) runs after every iteration
  (metrics are fetched to the host there, once per iteration) and may return False to stop early.
  progress(agent_steps, metrics, wall_s), if given, runs after it (a progress bar, a log line).
  """
  import time

  t0, steps, it = time.perf_counter(), int(agent_steps_done), 0
  while steps < total_agent_steps and (max_iterations is None or it < max_iterations):
    carry, metrics = iteration_fn(carry)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    steps, it = steps + int(metrics["agent_steps"]), it + 1
    wall = time.perf_counter() - t0
    stop = on_iteration is not None and on_iteration(carry, metrics, steps, wall) is False
    if progress is not None:
      progress(steps, metrics, wall)
    if stop:
      break
  return carry, steps


__all__ = ["Collected", "FusedCarry", "FusedConfig", "collect", "dagger_probability", "init_carry",
           "make_train_iteration", "make_update_fn", "observation_example", "rollout_rates", "run", "sample_scenes"]
