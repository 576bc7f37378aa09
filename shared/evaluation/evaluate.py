"""Closed-loop evaluation: a policy driven greedily with done signals off (paper 002) -> per-agent episode metrics.

  policy = make_policy("expert-grid", env_cfg)             # or from_policy_fn(net_apply_greedy)
  out = evaluate(policy, params, scenarios, env_cfg, rng)  # scenarios: a batch (B, O, T); out.per_agent (B, O)
  res = evaluate_scenes(policy, params, scenario_list, env_cfg, rng, batch_size=4)   # host loop, numpy out

Policies by name: "log" (every object set to its logged state: the expert reference row; log artefacts such as
parked cars outside the mapped road edges count against it exactly as they would against a policy),
"expert-grid" (closed-loop grid action nearest the logged box at t+1), "expert-continuous" (inferred continuous
actions replayed open-loop), "random" (uniform grid actions), "constant" (zero acceleration, zero steering).
The log policy scores, with control mode "all", every vehicle valid at the init step (it needs no control, so the
cap and GPUDrive's expert marks do not apply); every other policy scores the objects the env controls.
The cheap BASELINES share one compiled evaluation (a `lax.switch` on a traced policy index), so the reference row
and the simple baselines cost one compile per scene shape; the experts compile on their own (the grid expert's
search over every grid action triples the compile time of the env alone).
Every policy runs in shared.sim.loop.run, the collect loop the simulator and the fused trainer run: its act
functions are per scene, vmapped with one key per scene split from the step's key (loop.key_chain) and the scene's
`aux`.
Shapes: Trajectories are (B, O, T) with the logged history before init_step and the rollout after it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from shared.scenes import types
from shared.sim import actions as actions_lib
from shared.sim import env, episode, inverse, loop, rollout
from shared.sim import rows as rows_lib

POLICY_NAMES = ("log", "expert-grid", "expert-continuous", "random", "constant")
BASELINES = ("log", "random", "constant")  # cheap to compile: evaluated by one compiled function
MakeAct = Callable[[Any], rollout.ActFn]  # params -> act_fn(state, obs, rng, aux)


@dataclasses.dataclass(frozen=True)
class Policy:
  """A policy as the evaluator runs it.

  Attributes:
    name: label for reports.
    make_act: params -> act function (state, obs, rng, aux) -> actions for one scene; None for the baselines
      that share one compiled evaluation (BASELINES), chosen by `baseline` at run time.
    aux_fn: optional per-scene precomputation (scenario -> pytree) handed to the act function as `aux`.
    baseline: index into BASELINES (with make_act None).
    on_rows: the act function sees the controlled objects' observation rows only, (M, ...) with M from the env
      (shared.sim.rows), and returns their M actions: a per-agent network then runs on M rows, not all O
      object slots (1 instead of 128 for the self-driving car alone in a real scene).
  """

  name: str
  make_act: MakeAct | None = None
  aux_fn: Callable[[types.Scenario], Any] | None = None
  baseline: int = -1
  on_rows: bool = False


@flax.struct.dataclass
class EvalOutput:
  """Attributes: per_agent: EpisodeMetrics (B, O); x, y, yaw: (B, O, T) trajectories (log before init_step)."""

  per_agent: episode.EpisodeMetrics
  x: jax.Array
  y: jax.Array
  yaw: jax.Array


def eval_env_config(cfg: env.EnvConfig) -> env.EnvConfig:
  """Evaluation runs with the failure done signals off (paper 002): a collision or off-road event does not end an
  agent's episode, so every failure of the rest of the episode is counted too. Reaching the goal keeps the
  training environment's meaning (`stop_at_goal`, on by default): the task is to reach the goal, where the episode
  ends (paper 000, whose goal / collision / off-road rates the targets use). Scoring what a policy does after
  its episode has ended would count behaviour it was never trained for: with it off here but on in training,
  most off-road events of a trained policy came 1-10 steps after its goal (measured on held-out synthetic
  scenes). A car that stops at its goal stops up to the goal radius short of its logged end, which lowers its
  progress ratio by at most goal_radius / path length."""
  return dataclasses.replace(cfg, done_on_collision=False, done_on_offroad=False)


def make_policy(name: str, cfg: env.EnvConfig = env.EnvConfig()) -> Policy:
  """A named baseline policy (POLICY_NAMES)."""
  if name in BASELINES:
    return Policy(name, baseline=BASELINES.index(name))
  if name in ("expert-grid", "expert-continuous"):
    return _expert(name, cfg)
  raise ValueError(f"unknown policy {name!r}; expected one of {POLICY_NAMES} or a checkpoint")


@functools.lru_cache(maxsize=None)
def _expert(name: str, cfg: env.EnvConfig) -> Policy:
  """The log-tracking experts, cached per config so repeated evaluations reuse one compiled function."""
  if name == "expert-grid":
    return Policy(name, lambda p: rollout.grid_expert(cfg))
  aux = lambda sc: inverse.infer_expert_actions(sc, cfg.dynamics, cfg.actions, cfg.init_step)
  return Policy(name, lambda p: rollout.continuous_expert, aux_fn=aux)


@functools.lru_cache(maxsize=64)
def from_policy_fn(policy_fn: rollout.PolicyFn, name: str = "checkpoint", on_rows: bool = True) -> Policy:
  """Wraps a greedy per-agent network policy `policy_fn(params, obs, rng) -> actions` (one scene's rows); one
  Policy (so one compiled evaluation) per function. With `on_rows` it sees only the controlled objects' rows."""
  return Policy(name, lambda p: lambda s, obs, key, aux: policy_fn(p, obs, key), on_rows=on_rows)


def _on_rows(act: rollout.ActFn, num_rows: int) -> rollout.ActFn:
  """An act function over M rows -> one over the scene's O objects (zero actions for the others)."""
  def full(s, obs, key, aux):
    rows = rows_lib.acting_rows(s.controlled[None], num_rows)
    out = act(s, jax.tree.map(lambda x: rows.gather(x[None])[0], obs), key, aux)
    return jax.tree.map(lambda x: rows.scatter(x[None])[0], out)
  return full


def _baseline_branches(cfg: env.EnvConfig):
  """Continuous (O, 2) actions of each of BASELINES as functions of (state, key); random grid actions are decoded
  so every branch has the same output type for `lax.switch`."""
  n = actions_lib.num_actions(cfg.actions)
  zeros = lambda s, key: jnp.zeros(s.objects.x.shape + (2,), jnp.float32)
  rand = lambda s, key: actions_lib.decode(jax.random.randint(key, s.objects.x.shape, 0, n), cfg.actions)
  return [zeros, lambda s, key: rand(s, key).astype(jnp.float32), zeros]  # log (nothing controlled), random, const


def evaluated_mask(scenario: types.Scenario, controlled, follows_log, cfg: env.EnvConfig):
  """(O,) bool: the agents scored (follows_log may be traced); see the module docstring."""
  if cfg.control_mode != "all":
    return controlled
  o = scenario.objects
  vehicles = jnp.take(o.valid, cfg.init_step, axis=-1) & (o.object_type == types.TYPE_VEHICLE)
  return jnp.where(follows_log, vehicles, controlled)


def _full_trajectory(log, sim, init_step: int):
  """(B, O, T): the log (B, O, T) up to init_step, then the rollout's (S, B, O) states."""
  return jnp.concatenate([log[..., :init_step + 1], jnp.moveaxis(sim, 0, -1)], axis=-1)


def _evaluate(policy: Policy, params, scenarios, cfg: env.EnvConfig, ep_cfg: episode.EpisodeConfig,
              num_steps: int, rng, baseline) -> EvalOutput:
  k_reset, k_roll = jax.random.split(rng)
  state = env.reset_batch(scenarios, k_reset, cfg)
  if policy.make_act is None:  # the traced baseline index picks the branch: one compile serves all BASELINES
    follows_log = baseline == BASELINES.index("log")
    branches = _baseline_branches(cfg)
    act = lambda s, obs, key, aux: jax.lax.switch(baseline, branches, s, key)
  else:
    follows_log, act = False, policy.make_act(params)
    if policy.on_rows:
      act = _on_rows(act, rows_lib.env_num_rows(cfg, scenarios.objects.x.shape[1]))
  evaluated = jax.vmap(lambda sc, c: evaluated_mask(sc, c, follows_log, cfg))(scenarios, state.controlled)
  state = state.replace(controlled=state.controlled & jnp.logical_not(follows_log))
  aux = None if policy.aux_fn is None else jax.vmap(policy.aux_fn)(scenarios)
  per_scene = jax.vmap(act, in_axes=(0, 0, 0, None if aux is None else 0))
  act_batch = lambda st, obs, key: (per_scene(st, obs, jax.random.split(key, st.t.shape[0]), aux), None)
  record = lambda st, obs, extras, out: (out.metrics, out.objects)
  keys = loop.key_chain(k_roll, num_steps)
  _, _, (metrics, objects) = loop.run(cfg, act_batch, state, loop.observe(cfg, state), keys, record)
  per_agent = jax.vmap(lambda m, ob, ev, sc, c: episode.episode_metrics(m, ob, ev, sc, ep_cfg, c),
                       in_axes=(1, 1, 0, 0, 0))(metrics, objects, evaluated, scenarios, state.controlled)
  o, s = scenarios.objects, objects
  full = lambda log, sim: _full_trajectory(log, sim, cfg.init_step)
  return EvalOutput(per_agent=per_agent, x=full(o.x, s.x), y=full(o.y, s.y), yaw=full(o.yaw, s.yaw))


_BASELINE_KEY = Policy("baselines")


@functools.lru_cache(maxsize=None)
def _compiled(policy: Policy, cfg: env.EnvConfig, ep_cfg: episode.EpisodeConfig, num_steps: int):
  fn = lambda params, scenarios, rng, baseline: _evaluate(policy, params, scenarios, cfg, ep_cfg, num_steps, rng,
                                                          baseline)
  return jax.jit(fn)


def evaluate(policy: Policy | str | rollout.PolicyFn, params, scenarios: types.Scenario, env_cfg: env.EnvConfig,
             rng, num_steps: int | None = None) -> EvalOutput:
  """Greedy closed-loop evaluation of one batch of scenes (leading axis B), done signals off.

  Args:
    policy: a Policy, a name from POLICY_NAMES, or a greedy `policy_fn(params, obs, rng)`.
    params: network parameters (ignored by the named baselines).
    scenarios: a batch of Scenarios (B, O, T).
    env_cfg: the environment; its done signals are switched off here.
    rng: PRNG key (random control subsets, the random policy).
    num_steps: simulated steps (default: to the end of the log).
  """
  if isinstance(policy, str):
    policy = make_policy(policy, env_cfg)
  elif not isinstance(policy, Policy):
    policy = from_policy_fn(policy)
  cfg = eval_env_config(env_cfg)
  T = scenarios.objects.x.shape[-1]
  steps = T - 1 - cfg.init_step if num_steps is None else int(num_steps)
  ep_cfg = episode.EpisodeConfig(init_step=cfg.init_step)
  key = _BASELINE_KEY if policy.make_act is None else policy
  return _compiled(key, cfg, ep_cfg, steps)(params, scenarios, rng, jnp.int32(max(policy.baseline, 0)))


def evaluate_scenes(policy, params, scenarios: Sequence[types.Scenario], env_cfg: env.EnvConfig, rng,
                    batch_size: int = 4, progress: Callable[[int, int], None] | None = None) -> dict:
  """evaluate over a list of unbatched scenes in fixed-size batches (the last one padded by repeating its first
  scene, so one compile serves all); returns numpy {"per_agent": {field: (N, O)}, "x"/"y"/"yaw": (N, O, T)}."""
  n = len(scenarios)
  chunks: list[dict] = []
  for i, start in enumerate(range(0, n, batch_size)):
    part = list(scenarios[start:start + batch_size])
    real = len(part)
    part += [part[0]] * (batch_size - real)
    out = evaluate(policy, params, types.stack(part), env_cfg, jax.random.fold_in(rng, i))
    out = jax.tree.map(lambda a: np.asarray(a)[:real], out)
    chunks.append({"per_agent": episode_fields(out.per_agent), "x": out.x, "y": out.y, "yaw": out.yaw})
    if progress is not None:
      progress(min(start + real, n), n)
  cat = lambda *xs: np.concatenate(xs, axis=0)
  return jax.tree.map(cat, *chunks)


def episode_fields(per_agent: episode.EpisodeMetrics) -> dict[str, np.ndarray]:
  """EpisodeMetrics -> {field: numpy array} keeping shapes."""
  return {f.name: np.asarray(getattr(per_agent, f.name)) for f in dataclasses.fields(per_agent)}


def split_scenes(metas: Sequence[types.SceneMeta], held_out_fraction: float, seed: int) -> tuple[list[int], list[int]]:
  """(train indices, held-out indices): scenes ranked by a seeded hash of their scenario id, the first
  round(fraction * n) held out (at least one when fraction > 0 and n > 1). A scene's rank does not depend on the
  other scenes, so adding scenes moves few across the split, and the split does not depend on file order."""
  if not 0.0 <= held_out_fraction < 1.0:
    raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
  n = len(metas)
  key = lambda i: hashlib.sha256(f"{seed}:{metas[i].scenario_id}:{metas[i].name}".encode()).hexdigest()
  order = sorted(range(n), key=key)
  k = int(round(held_out_fraction * n))
  if held_out_fraction > 0 and n > 1:
    k = min(max(k, 1), n - 1)
  held = sorted(order[:k])
  return sorted(set(range(n)) - set(held)), held


__all__ = ["POLICY_NAMES", "BASELINES", "Policy", "EvalOutput", "eval_env_config", "make_policy", "from_policy_fn",
           "evaluated_mask", "evaluate", "evaluate_scenes", "episode_fields", "split_scenes"]
