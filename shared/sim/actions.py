"""The discrete action grid: every (acceleration, steering) pair a policy may pick.

A grid action is an index into the (A, 2) table returned by `build_grid`; column 0 is the longitudinal
acceleration in m/s^2, column 1 the steering angle in radians (mode "steering") or the steering rate in rad/s
(mode "steering_rate", paper 002's choice). Row order is acceleration-major: index = i_accel * num_steer + i_steer.

Examples:
  ActionGridConfig()                                   # GPUDrive-like 7 x 13 = 91 actions
  ActionGridConfig(accel=(-4.0, 3.0, 71), mode="steering_rate", steer=(-0.6, 0.6, 13))   # paper 002
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

STEER_MODES = ("steering", "steering_rate")


@dataclasses.dataclass(frozen=True)
class ActionGridConfig:
  """Which accelerations and steerings the discrete actions decode to.

  Attributes:
    accel: (min, max, num) accelerations in m/s^2, evenly spaced (num=1 gives min).
    steer: (min, max, num) steering angles in rad (mode "steering") or steering rates in rad/s ("steering_rate").
    mode: "steering" (the action sets the angle) or "steering_rate" (the action changes the angle).
  """

  accel: tuple[float, float, int] = (-4.0, 4.0, 7)
  steer: tuple[float, float, int] = (-0.6, 0.6, 13)
  mode: str = "steering"

  def __post_init__(self):
    if self.mode not in STEER_MODES:
      raise ValueError(f"ActionGridConfig.mode must be one of {STEER_MODES}, got {self.mode!r}")
    for name in ("accel", "steer"):
      lo, hi, n = getattr(self, name)
      if int(n) < 1 or hi < lo:
        raise ValueError(f"ActionGridConfig.{name}: need num >= 1 and max >= min, got {(lo, hi, n)}")


def _values(spec: tuple[float, float, int]) -> np.ndarray:
  lo, hi, n = spec
  return np.linspace(lo, hi, int(n), dtype=np.float64) if int(n) > 1 else np.array([lo], np.float64)


def accel_values(cfg: ActionGridConfig) -> np.ndarray:
  """(num_accel,) float32 accelerations in m/s^2."""
  return _values(cfg.accel).astype(np.float32)


def steer_values(cfg: ActionGridConfig) -> np.ndarray:
  """(num_steer,) float32 steering angles (rad) or rates (rad/s)."""
  return _values(cfg.steer).astype(np.float32)


def num_actions(cfg: ActionGridConfig) -> int:
  """A, the number of discrete actions."""
  return int(cfg.accel[2]) * int(cfg.steer[2])


def build_grid_np(cfg: ActionGridConfig) -> np.ndarray:
  """(A, 2) float32 numpy table of (accel_mps2, steer); host-side twin of `build_grid`."""
  a, s = np.meshgrid(accel_values(cfg), steer_values(cfg), indexing="ij")
  return np.stack([a.ravel(), s.ravel()], axis=-1).astype(np.float32)


def build_grid(cfg: ActionGridConfig) -> jnp.ndarray:
  """(A, 2) float32 table of (accel_mps2, steer); row = i_accel * num_steer + i_steer."""
  return jnp.asarray(build_grid_np(cfg))


def decode(indices, cfg: ActionGridConfig) -> jnp.ndarray:
  """(..., ) int32 grid indices -> (..., 2) float32 (accel_mps2, steer)."""
  return build_grid(cfg)[jnp.clip(indices, 0, num_actions(cfg) - 1)]


def nearest_index(accel, steer, cfg: ActionGridConfig) -> jnp.ndarray:
  """(...,) continuous actions -> (...,) int32 index of the nearest grid value in each axis separately."""
  av, sv = jnp.asarray(accel_values(cfg)), jnp.asarray(steer_values(cfg))
  ia = jnp.argmin(jnp.abs(accel[..., None] - av), axis=-1)
  isx = jnp.argmin(jnp.abs(steer[..., None] - sv), axis=-1)
  return (ia * sv.shape[0] + isx).astype(jnp.int32)
