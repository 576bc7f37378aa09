"""Which objects the policy drives; every other object follows the log.

Modes (static strings):
  "sdc":    the self-driving car alone (it counts as controllable even if the reader marked it otherwise);
  "all":    every controllable object valid at t (and logged again later), nearest to the self-driving car first,
            up to `max_agents`;
  "random": a seeded random subset of those, up to `max_agents`;
  "moving": as "all", but only objects that move in the log from t on (logged speed above MOVING_SPEED_MPS at some
            valid step; the self-driving car always counts): parked cars stay on their log, where they stand still.
            This is how the evaluation splits agents (shared.sim.episode's "moving" split uses `moving_in_log`).
`scenario.objects.controllable` already excludes GPUDrive's `mark_as_expert` objects, non-vehicles and objects
never logged, so those are never picked. Shapes: one scene, (O,) masks; vmap for a batch.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from shared.scenes.types import Scenario

CONTROL_MODES = ("sdc", "all", "random", "moving")
MOVING_SPEED_MPS = 1.0


def moving_in_log(objects, t, min_speed: float = MOVING_SPEED_MPS) -> jax.Array:
  """(...,) bool: the object's logged speed exceeds `min_speed` at some valid step >= t (objects (..., O, T))."""
  steps = jnp.arange(objects.valid.shape[-1])
  speed = jnp.hypot(objects.vel_x, objects.vel_y)
  return jnp.any((speed > min_speed) & objects.valid & (steps >= t), axis=-1)


def _top_k_mask(score, eligible, k: int):
  """(O,) bool: the k highest-scoring eligible entries (fewer if fewer are eligible)."""
  k = min(int(k), score.shape[-1])
  masked = jnp.where(eligible, score, -jnp.inf)
  _, idx = jax.lax.top_k(masked, k)
  chosen = jnp.zeros(score.shape, bool).at[idx].set(True)
  return chosen & eligible


def select_controlled(scenario: Scenario, mode: str, max_agents: int, rng, t) -> jax.Array:
  """(O,) bool mask of the controlled objects at step t (traced t is fine).

  Args:
    scenario: one Scenario, objects (O, T).
    mode: static, one of CONTROL_MODES.
    max_agents: static cap on the count (>= 1).
    rng: PRNG key, used by "random" only.
    t: the step whose validity counts (the env's init step).
  """
  if mode not in CONTROL_MODES:
    raise ValueError(f"control mode must be one of {CONTROL_MODES}, got {mode!r}")
  if max_agents < 1:
    raise ValueError(f"max_agents must be >= 1, got {max_agents}")
  o = scenario.objects
  chex.assert_rank(o.x, 2)
  valid_t = jnp.take(o.valid, t, axis=-1)
  is_sdc = o.is_sdc & valid_t
  if mode == "sdc":
    return is_sdc
  # An object whose log ends at t has nowhere to go (its goal is where it stands) and would leave at once.
  steps = jnp.arange(o.valid.shape[-1])
  logged_later = jnp.any(o.valid & (steps > t), axis=-1)
  eligible = (o.controllable | is_sdc) & valid_t & logged_later
  if mode == "moving":
    eligible &= moving_in_log(o, t) | is_sdc
  if mode == "random":
    score = jax.random.uniform(rng, valid_t.shape)
  else:
    x, y = jnp.take(o.x, t, axis=-1), jnp.take(o.y, t, axis=-1)
    # Distance to the self-driving car (scene origin when there is none); the car itself ranks first.
    sx = jnp.sum(jnp.where(is_sdc, x, 0.0))
    sy = jnp.sum(jnp.where(is_sdc, y, 0.0))
    score = jnp.where(is_sdc, jnp.inf, -jnp.hypot(x - sx, y - sy))
  return _top_k_mask(score, eligible, max_agents)
