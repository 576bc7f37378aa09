"""Acting rows: the policy and the learner work on the M controlled objects of each scene, not on all O.

A scene holds O object slots (padded; real scenes up to ~100, synthetic 32) of which only the controlled ones act
(the self-driving car alone: 1; all vehicles: up to max_controlled). Running the network, and the PPO/BC update,
on every object slot wastes O / M of the work on rows whose mask is zero (128x for a single controlled car in a
128-slot scene). `Rows` maps between the two layouts, once per episode (the controlled set is fixed at reset):

  rows = env_rows(state.controlled, cfg)                     # state.controlled (B, O) bool, cfg an EnvConfig
  obs_m = rows.gather(obs)                                    # leaves (B, O, ...) -> (B, M, ...), zero on empty rows
  grid_o = rows.scatter(grid_m)                               # (B, M, ...) -> (B, O, ...), zero off the rows

Row j of a scene is its j-th controlled object in index order (shared.sim.observations.controlled_rows, the same
order the observations use), so nothing is lost while the controlled count is <= M, which EnvConfig guarantees
(control.select_controlled picks at most max_controlled).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from shared.sim import observations


@flax.struct.dataclass
class Rows:
  """Attributes (B scenes, M rows, O objects):
    index: (B, M) int32, the object of each row (0 on empty rows).
    ok: (B, M) bool, the row holds a controlled object.
    slot: (B, O) int32, the row of each object (0 where it has none).
    slot_ok: (B, O) bool, the object has a row (controlled).
  """

  index: jax.Array
  ok: jax.Array
  slot: jax.Array
  slot_ok: jax.Array

  @property
  def num_rows(self) -> int:
    return int(self.index.shape[-1])

  def gather(self, tree):
    """Leaves (B, O, ...) -> (B, M, ...): each row's object, zero on empty rows."""
    return jax.tree.map(lambda x: _take(x, self.index, self.ok), tree)

  def scatter(self, tree):
    """Leaves (B, M, ...) -> (B, O, ...): each object's row, zero for objects without one."""
    return jax.tree.map(lambda x: _take(x, self.slot, self.slot_ok), tree)


def _take(x: jax.Array, idx: jax.Array, ok: jax.Array) -> jax.Array:
  """x (B, N, ...) at idx (B, K) -> (B, K, ...), zero (False) where ~ok."""
  got = jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
  return jnp.where(ok.reshape(ok.shape + (1,) * (x.ndim - 2)), got, jnp.zeros_like(got))


def acting_rows(controlled: jax.Array, num_rows: int) -> Rows:
  """Rows of a batch's controlled sets, controlled (B, O) bool; num_rows M <= O (static)."""
  index, slot, slot_ok = jax.vmap(lambda c: observations.controlled_rows(c, num_rows))(controlled)
  count = jnp.sum(slot_ok, axis=-1, keepdims=True)
  ok = jnp.arange(index.shape[-1])[None, :] < count
  return Rows(index=index, ok=ok, slot=slot, slot_ok=slot_ok)


def num_rows(control_mode: str, max_controlled: int, num_objects: int) -> int:
  """M for an environment: 1 when only the self-driving car acts, else min(max_controlled, O)."""
  return 1 if control_mode == "sdc" else min(int(max_controlled), int(num_objects))


def env_num_rows(cfg, num_objects: int) -> int:
  """M for an EnvConfig (its control_mode and max_controlled) and O object slots."""
  return num_rows(cfg.control_mode, cfg.max_controlled, num_objects)


def env_rows(controlled: jax.Array, cfg) -> Rows:
  """Rows of controlled (B, O) under an EnvConfig: acting_rows with M = env_num_rows(cfg, O)."""
  return acting_rows(controlled, env_num_rows(cfg, controlled.shape[-1]))


__all__ = ["Rows", "acting_rows", "env_num_rows", "env_rows", "num_rows"]
