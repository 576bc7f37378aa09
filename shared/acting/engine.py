"""The simulator's device side: a batch of scenes held in a SimState, stepped by jitted shared.sim.env functions.

The scene loader also uses it for expert trajectories (`expert`). Two ways to act:
  fused   `collect(params)`: the policy runs inside one jitted shared.sim.loop.run (the `lax.scan` over
          env.step_batch that the fused trainer and shared.evaluation run too).
  service `feat` -> ask the inference service -> `step(actions)`: one jitted env step per round trip.
`expert` runs the same loop with the grid expert acting (labels valid where loop.label_ok). Greedy evaluation is
shared.evaluation's (the evaluator service calls it with `PolicyNet.greedy_policy()`).

The policy is shared.acting.policy_net's PolicyNet (the project's Agent over flat features); params are its
flat "/"-keyed dict (the Params message's arrays).

Shapes (S scenes, O objects, M acting rows per scene, F features, T steps; B = S * M agents, flattened
scene-major). The policy acts on, and records carry, the M rows of each scene's controlled objects only
(shared.sim.rows: 1 for the self-driving car alone, else min(max_controlled, O)), not all O object slots; a
row without a controlled object is zero and never valid.
  features: (B, F) float32 = every Observation leaf of an agent flattened and concatenated, in field order
    (`shared.nets.inputs.unflatten` with the PolicyNet's layout reads them back).
  collect / step records: obs (T, B, F), action, log_prob, value, reward (T, B), done, terminated, valid (T, B)
  bool, where done = the episode ended (terminated or truncated by the log's end), terminated = it ended in an
  absorbing state (no bootstrap), valid = controlled, not yet done, and the log not yet over (the only steps the
  learner may use). After an unroll, `Engine.feat` is s_T, the bootstrap observation of the next value.
  expert records: obs (T, B, F), action (T, B) int32 grid, reward, done, terminated, valid (T, B): valid also needs
  the log at t and t + 1 (the expert's label is defined).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from shared.acting import policy_net
from shared.scenes import types
from shared.sim import actions as actions_lib
from shared.sim import env, loop, rollout
from shared.sim import rows as rows_lib
from shared.wire import arena as arena_lib

Record = dict[str, Any]


def flat_features(obs: Any) -> jax.Array:
  """Observation pytree with leaves (S, N, ...) -> (S * N, F) float32."""
  leaves = jax.tree.leaves(obs)
  s, o = leaves[0].shape[:2]
  return jnp.concatenate([x.reshape(s * o, -1).astype(jnp.float32) for x in leaves], axis=-1)


def row_features(rows: rows_lib.Rows, obs: Any) -> jax.Array:
  """Observation with leaves (S, O, ...) -> the acting rows' flat features (S * M, F)."""
  return flat_features(rows.gather(obs))


def _flat(rows: rows_lib.Rows, x: jax.Array) -> jax.Array:
  """(S, O) per-object values -> (S * M,) per row."""
  return rows.gather(x).reshape(-1)


def _to_objects(rows: rows_lib.Rows, action: jax.Array) -> jax.Array:
  """(S * M,) row actions -> (S, O) per object (zero for objects without a row)."""
  return rows.scatter(action.reshape(rows.index.shape))


def _acting(state, rows: rows_lib.Rows) -> jax.Array:
  """(S * M,) bool: rows whose action this step counts (controlled, not done, log not over)."""
  last = state.scenario.objects.x.shape[-1] - 1
  live = state.controlled & ~state.done & (state.t < last)[:, None]
  return _flat(rows, live)


def _record(feat, acting, action, log_prob, value, out, rows: rows_lib.Rows) -> Record:
  done = _flat(rows, out.done | out.truncated)
  return {"obs": feat, "action": action, "log_prob": log_prob, "value": value,
          "reward": _flat(rows, out.reward) * acting, "done": done, "terminated": _flat(rows, out.done) & acting,
          "valid": acting}


def _reset_and_observe(scenario, rng, cfg: env.EnvConfig):
  state = env.reset_batch(scenario, rng, cfg)
  rows = rows_lib.env_rows(state.controlled, cfg)
  return state, row_features(rows, loop.observe(cfg, state)), rows


def _make_reset(cfg: env.EnvConfig) -> Callable:
  return jax.jit(functools.partial(_reset_and_observe, cfg=cfg))


@functools.lru_cache(maxsize=32)
def _cached(make: Callable, *key) -> Callable:
  """One jitted function per (builder, config, sizes) in a process, so engines with equal configs (replicas in
  tests, the evaluator's repeated episodes) share one compile."""
  return make(*key)


def make_collect(cfg: env.EnvConfig, num_steps: int, greedy: bool, pn: policy_net.PolicyNet) -> Callable:
  """jitted (params, state, feat, rows, rng) -> (state, feat, records with a leading T axis)."""

  @jax.jit
  def collect(params, state, feat, rows, rng):
    def act(state, feat, key):
      action, log_prob, value = pn.select_action(params, feat, key, greedy)
      return _to_objects(rows, action), (action, log_prob, value)

    def record(state, feat, extras, out):
      return _record(feat, _acting(state, rows), *extras, out, rows)

    keys = loop.key_chain(rng, num_steps)
    return loop.run(cfg, act, state, feat, keys, record, functools.partial(row_features, rows))

  return collect


def make_step(cfg: env.EnvConfig) -> Callable:
  """jitted one step with given actions (service mode): (state, feat, rows, action, log_prob, value) ->
  (state, feat, record (B, ...))."""

  @jax.jit
  def step(state, feat, rows, action, log_prob, value):
    acting = _acting(state, rows)
    nxt, out = env.step_batch(state, _to_objects(rows, action), cfg)
    return nxt, row_features(rows, out.obs), _record(feat, acting, action, log_prob, value, out, rows)

  return step


def make_expert(cfg: env.EnvConfig, num_steps: int) -> Callable:
  """jitted closed-loop grid expert (shared.sim.rollout.grid_expert) (state, feat, rows, rng) -> records with a
  leading T axis: obs (T, B, F), action (T, B) int32 (the grid action the expert took), reward, done, terminated,
  valid (T, B) (see the module docstring)."""
  expert_act = rollout.grid_expert(cfg)

  @jax.jit
  def expert(state, feat, rows, rng):
    def act(state, feat, key):
      action = jax.vmap(lambda s: expert_act(s, None, key))(state)
      return action, action

    def record(state, feat, action, out):
      acting = _acting(state, rows)
      rec = _record(feat, acting, _flat(rows, action).astype(jnp.int32), None, None, out, rows)
      rec = {k: v for k, v in rec.items() if v is not None}
      return dict(rec, valid=acting & _flat(rows, jax.vmap(loop.label_ok)(state)))

    keys = loop.key_chain(rng, num_steps)
    return loop.run(cfg, act, state, feat, keys, record, functools.partial(row_features, rows))[2]

  return expert


class Engine:
  """One batch of scenes on device plus the jitted functions that advance it.

  Attributes:
    cfg: the EnvConfig.
    state: batched SimState (None before `load`).
    feat: (B, F) features of the current state's acting rows.
    rows: shared.sim.rows.Rows of the loaded batch (which object each row is).
  """

  def __init__(self, cfg: env.EnvConfig, unroll_length: int, seed: int = 0, greedy: bool = False,
               policy: policy_net.PolicyNet | None = None):
    self.cfg, self.unroll_length, self.greedy = cfg, unroll_length, greedy
    self.policy = policy if policy is not None else policy_net.build("mlp", "small", cfg.obs, cfg.actions, 0,
                                                                     cfg.num_road_candidates)
    self.rng = jax.random.PRNGKey(seed)
    self.num_actions = actions_lib.num_actions(cfg.actions)
    self._collect = _cached(make_collect, cfg, unroll_length, greedy, self.policy)
    self._reset = _cached(_make_reset, cfg)
    self._step = _cached(make_step, cfg)
    self.state = None
    self.feat = None
    self.rows = None

  def load(self, scenario: types.Scenario) -> None:
    """Resets on a new batch of scenes (numpy arrays with a leading S axis)."""
    self.rng, key = jax.random.split(self.rng)
    self.state, self.feat, self.rows = self._reset(jax.tree.map(jnp.asarray, scenario), key)

  @property
  def num_features(self) -> int:
    return int(self.feat.shape[-1])

  def episode_over(self) -> bool:
    last = self.state.scenario.objects.x.shape[-1] - 1
    return bool(int(self.state.t[0]) >= last or not bool(jnp.any(self.state.controlled & ~self.state.done)))

  def collect(self, params) -> dict[str, np.ndarray]:
    """Fused path: `unroll_length` steps with the policy inside the scan. Returns numpy records (T, B, ...)."""
    self.rng, key = jax.random.split(self.rng)
    self.state, self.feat, rec = self._collect(params, self.state, self.feat, self.rows, key)
    return jax.tree.map(np.asarray, rec)

  def expert(self) -> dict[str, np.ndarray]:
    """The logged behaviour as grid actions with observations, from a freshly loaded batch to the log's end."""
    steps = int(self.state.scenario.objects.x.shape[-1] - 1 - int(self.state.t[0]))
    self.rng, key = jax.random.split(self.rng)
    return jax.tree.map(np.asarray, _cached(make_expert, self.cfg, steps)(self.state, self.feat, self.rows, key))

  def acting(self) -> np.ndarray:
    """(B,) bool: the rows whose action the next step uses."""
    return np.asarray(_acting(self.state, self.rows))

  def step(self, action: np.ndarray, log_prob: np.ndarray, value: np.ndarray) -> dict[str, np.ndarray]:
    """Service path: one step with actions from the inference service; returns that step's record (B, ...)."""
    self.state, self.feat, rec = self._step(self.state, self.feat, self.rows, jnp.asarray(action, jnp.int32),
                                            jnp.asarray(log_prob, jnp.float32), jnp.asarray(value, jnp.float32))
    return jax.tree.map(np.asarray, rec)


def stack_records(records: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Per-step records (B, ...) -> (T, B, ...), stacked into one wire arena (shared.wire.arena): the copy np.stack
  would make anyway, after which the whole Trajectory goes out as one zero-copy frame."""
  return dict(arena_lib.Arena.stack(records).arrays)
