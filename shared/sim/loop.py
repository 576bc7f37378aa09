"""The one collect loop: a jit-able `lax.scan` over env.step_batch with an act function and a per-step record.

Every rollout runs it: the fused trainer (shared.algos.fused.collect), the simulator (shared.acting.engine: fused-mode
collect, expert labelling for the scene loader), shared.evaluation's greedy episodes and shared.sim.rollout:

  obs = observe(cfg, state)                                      # the env's Observation of a batch, (S, O, ...)
  keys = key_chain(rng, num_steps)                               # or jax.random.split(rng, num_steps)
  state, obs, records = run(cfg, act, state, obs, keys, record)  # records: (num_steps, ...)
  state, feat, records = run(cfg, act, state, view(obs), keys, record, view)

Step k: `action, extras = act(state, obs, keys[k])` with action (S, O) per object, int32 grid indices or (S, O, 2)
float32 continuous (the dtype picks env.step_batch or env.step_batch_continuous); the env steps;
`record(state, obs, extras, out)` (state and obs before the step, out its env.StepOutput) is that step's record.
What the loop carries as `obs` is `view(out.obs)` (e.g. the acting rows' features); without a view it is the env's
Observation itself, handed back to the step as `prev_obs` so the step writes the new rows into the carried buffer in
place (same values either way). Anything per episode (the acting rows, params, a scene's aux data) the act, record
and view functions close over.
The step keys are the caller's: the simulator's engine, shared.evaluation and rollout use `key_chain` (`rng, key =
split(rng)` at every step), the fused trainer `jax.random.split(rng, num_steps)`; each keeps its random stream.

`label_ok(state)` is the one test of an expert label (shared.sim.rollout.grid_expert's action is a demonstration):
the log holds the object at t and at t + 1, and t + 1 is inside the log.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from shared.sim import env, inverse
from shared.sim.datatypes import SimState

ActFn = Callable[[SimState, Any, jax.Array], tuple[jax.Array, Any]]  # (state, obs, key) -> (action (S, O), extras)
RecordFn = Callable[[SimState, Any, Any, env.StepOutput], Any]  # (state, obs, extras, out) -> step record
ViewFn = Callable[[Any], Any]  # the env's Observation (S, O, ...) -> what the loop carries and act sees


def observe(cfg: env.EnvConfig, state: SimState) -> Any:
  """The env's Observation of a batch of states (leaves (S, O, ...)), as a step returns it."""
  return jax.vmap(lambda s: env.observe(s, cfg))(state)


def key_chain(rng: jax.Array, num_steps: int) -> jax.Array:
  """(num_steps, ...) step keys of the chain `rng, key = jax.random.split(rng)`, one split per step."""
  def body(rng, _):
    rng, key = jax.random.split(rng)
    return rng, key
  return jax.lax.scan(body, rng, None, length=num_steps)[1]


def run(cfg: env.EnvConfig, act: ActFn, state: SimState, obs: Any, keys: jax.Array, record: RecordFn,
        view: ViewFn | None = None) -> tuple[SimState, Any, Any]:
  """One step per key of `keys` (num_steps, ...) for a batch of scenes; returns (final state, final obs, records
  with a leading num_steps axis). obs: `view` of the env's Observation of `state` (the Observation without a view).
  """

  def body(carry, key):
    state, obs = carry
    action, extras = act(state, obs, key)
    step = env.step_batch_continuous if env.is_continuous(action) else env.step_batch
    nxt, out = step(state, action, cfg, obs if view is None else None)
    rec = record(state, obs, extras, out)
    return (nxt, out.obs if view is None else view(out.obs)), rec

  (state, obs), records = jax.lax.scan(body, (state, obs), keys)
  return state, obs, records


def label_ok(state: SimState) -> jax.Array:
  """(O,) bool for one scene's state (vmap for a batch): the log holds the object at t and t + 1 (t + 1 inside the
  log, gaps interpolated as by inverse.log_target), so the grid expert's action for it is a demonstration."""
  o = state.scenario.objects
  last = o.x.shape[-1] - 1
  ok = inverse.log_target(o, jnp.minimum(state.t + 1, last))[3] & (state.t < last)
  return ok & jnp.take(o.valid, state.t, axis=-1)


__all__ = ["ActFn", "RecordFn", "ViewFn", "key_chain", "label_ok", "observe", "run"]
