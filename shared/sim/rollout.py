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

from shared.sim import env, inverse
from shared.sim.datatypes import SimState
from shared.sim.inverse import ExpertActions

PolicyFn = Callable[[Any, Any, jax.Array], jax.Array]  # (params, obs, rng) -> actions
ActFn = Callable[[SimState, Any, jax.Array, Any], jax.Array]  # (state, obs, rng, aux) -> actions


# The scans below carry the last observation, which the env returned for the carried state: the step scatters the
# new observation rows into it (prev_obs of env.step_batch_continuous), in place, instead of into a fresh buffer.
def _step_one(state, actions, cfg, obs=None):
  return (env.step_continuous if env.is_continuous(actions) else env.step)(state, actions, cfg, obs)


def _step_many(state, actions, cfg, obs=None):
  return (env.step_batch_continuous if env.is_continuous(actions) else env.step_batch)(state, actions, cfg, obs)


def rollout_act(act_fn: ActFn, state: SimState, num_steps: int, cfg: env.EnvConfig, rng, aux=None):
  """Runs `num_steps` steps of one scene under an act function; returns (final state, stacked StepOutput)."""
  def body(carry, _):
    s, obs, key = carry
    key, sub = jax.random.split(key)
    s, out = _step_one(s, act_fn(s, obs, sub, aux), cfg, obs)
    return (s, out.obs, key), out

  (state, _, _), outs = jax.lax.scan(body, (state, env.observe(state, cfg), rng), None, length=num_steps)
  return state, outs


def rollout_act_batch(act_fn: ActFn, state: SimState, num_steps: int, cfg: env.EnvConfig, rng, aux=None):
  """rollout_act over a batch (B leading axis); act_fn is per scene and is vmapped (with aux, if given)."""
  batch = state.t.shape[0]

  def body(carry, _):
    s, obs, key = carry
    key, sub = jax.random.split(key)
    keys = jax.random.split(sub, batch)
    acts = jax.vmap(act_fn, in_axes=(0, 0, 0, None if aux is None else 0))(s, obs, keys, aux)
    s, out = _step_many(s, acts, cfg, obs)
    return (s, out.obs, key), out

  obs0 = jax.vmap(lambda s: env.observe(s, cfg))(state)
  (state, _, _), outs = jax.lax.scan(body, (state, obs0, rng), None, length=num_steps)
  return state, outs


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
