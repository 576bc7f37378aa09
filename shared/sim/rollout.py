"""Rollouts by `lax.scan` and the log-tracking experts.

A policy is `policy_fn(params, obs, rng) -> actions` for ONE scene: (O,) int32 grid indices or (O, 2) float32
continuous actions (the dtype decides which step runs). `rollout_batch` vmaps it over the scenes of a batch, so a
network written for (O, ...) inputs serves both.
Experts need the simulator state, not the observation; they are "act functions" `act_fn(state, obs, rng, aux)`,
which `rollout_act` / `rollout_act_batch` take directly (`rollout` wraps a policy into one). `aux` is any per-scene
pytree (e.g. the scene's ExpertActions) carried beside the state and vmapped with it in a batch.

  state, outs = rollout(policy_fn, params, state, num_steps, cfg, rng)   # outs: StepOutput with a (num_steps,) axis
  state, outs = rollout_batch(policy_fn, params, states, num_steps, cfg, rng)   # outs: (num_steps, B, ...)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from shared.sim import env, inverse, loop
from shared.sim.datatypes import SimState
from shared.sim.inverse import ExpertActions

PolicyFn = Callable[[Any, Any, jax.Array], jax.Array]  # (params, obs, rng) -> actions
ActFn = Callable[[SimState, Any, jax.Array, Any], jax.Array]  # (state, obs, rng, aux) -> actions


def rollout_act_batch(act_fn: ActFn, state: SimState, num_steps: int, cfg: env.EnvConfig, rng, aux=None):
  """Runs `num_steps` steps of a batch of scenes (B leading axis) under a per-scene act function, vmapped (with
  aux, if given) with one key per scene split from each step's key; returns (final state, stacked StepOutput
  (num_steps, B, ...)). The steps are shared.sim.loop.run's."""
  per_scene = jax.vmap(act_fn, in_axes=(0, 0, 0, None if aux is None else 0))
  act = lambda s, obs, key: (per_scene(s, obs, jax.random.split(key, s.t.shape[0]), aux), None)
  state, _, outs = loop.run(cfg, act, state, loop.observe(cfg, state), loop.key_chain(rng, num_steps),
                            lambda s, obs, extras, out: out)
  return state, outs


def rollout_act(act_fn: ActFn, state: SimState, num_steps: int, cfg: env.EnvConfig, rng, aux=None):
  """rollout_act_batch for one scene (a batch of one; the act function gets each step's key itself); returns
  (final state, stacked StepOutput (num_steps, ...))."""
  act = lambda s, obs, key: (jax.vmap(lambda s1, o1: act_fn(s1, o1, key, aux))(s, obs), None)
  one = jax.tree.map(lambda x: x[None], state)
  last, _, outs = loop.run(cfg, act, one, loop.observe(cfg, one), loop.key_chain(rng, num_steps),
                           lambda s, obs, extras, out: out)
  return jax.tree.map(lambda x: x[0], last), jax.tree.map(lambda x: x[:, 0], outs)


def rollout(policy_fn: PolicyFn, params, state: SimState, num_steps: int, cfg: env.EnvConfig, rng):
  """Rolls one scene forward `num_steps` steps under `policy_fn(params, obs, rng)`."""
  return rollout_act(lambda s, obs, key, aux: policy_fn(params, obs, key), state, num_steps, cfg, rng)


def rollout_batch(policy_fn: PolicyFn, params, state: SimState, num_steps: int, cfg: env.EnvConfig, rng):
  """rollout over a batch of scenes; outputs have a leading (num_steps, B) shape."""
  return rollout_act_batch(lambda s, obs, key, aux: policy_fn(params, obs, key), state, num_steps, cfg, rng)


# EXPERTS

def grid_expert(cfg: env.EnvConfig) -> ActFn:
  """Closed-loop grid expert: each object takes the grid action landing its box nearest the logged box at t+1
  (interpolated across gaps in the log; after its last logged step it brakes to a stop)."""
  def act(state: SimState, obs, rng, aux=None):
    o = state.scenario.objects
    x, y, yaw, ok = inverse.log_target(o, jnp.minimum(state.t + 1, o.x.shape[-1] - 1))
    ok = ok & (state.t + 1 < o.x.shape[-1])
    return inverse.grid_expert_action(state.objects, o.length, o.width, x, y, yaw, ok, cfg.dynamics, cfg.actions)
  return act


def continuous_expert(state: SimState, obs, rng, expert: ExpertActions):
  """Act function replaying inferred continuous actions open-loop (aux = the scene's ExpertActions): (O, 2) at the
  state's step (gaps in the log hold the actions tracking its interpolation; zeros past the log's end)."""
  n = expert.accel_mps2.shape[-1]
  t = jnp.minimum(state.t, n - 1)
  ok = state.t < n
  a = jnp.take(expert.accel_mps2, t, axis=-1) * ok
  s = jnp.take(expert.steer, t, axis=-1) * ok
  return jnp.stack([a, s], axis=-1)


__all__ = ["PolicyFn", "ActFn", "rollout", "rollout_batch", "rollout_act", "rollout_act_batch", "grid_expert",
           "continuous_expert"]
