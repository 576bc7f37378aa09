"""Kinematic bicycle model, stepped for every object at once.

State per object: centre (x, y), yaw, signed speed v = velocity projected on the heading (negative when
reversing). One step of length dt with acceleration a and steering angle delta (wheelbase L = fraction * length):

  v'   = clip(v + a dt, -max_reverse, max_speed)
  k    = clip(tan(delta) / L, -max_curvature, max_curvature)       # curvature, 1/m
  yaw' = yaw + k v' dt
  x'   = x + v' cos(yaw') dt,   y' = y + v' sin(yaw') dt

Speed and heading are updated first and the car then moves along the new heading (semi-implicit Euler). That
choice makes the model exactly invertible from one displacement: the heading after a step is the direction of that
step's motion, so inverse dynamics (inverse.py) can land every next logged position without the heading error of
the previous step feeding back. At constant speed and steering the positions lie on a circle of radius
v dt / (2 sin(k v dt / 2)), which is L / tan(delta) to within 0.01% at urban speeds.

Shapes: every array is (O,) (any leading batch axes broadcast); angles in radians, SI units.
"""

from __future__ import annotations

import dataclasses

import chex
import jax.numpy as jnp

from shared.sim.datatypes import ObjectState

DEFAULT_LENGTH_M = 4.5


@dataclasses.dataclass(frozen=True)
class DynamicsConfig:
  """Integration step and physical limits of the bicycle model.

  Attributes:
    dt: step length in seconds (WOMD logs: 0.1).
    wheelbase_fraction: wheelbase as a fraction of the box length (a sedan: 2.7 m of 4.5 m).
    max_speed_mps: forward speed cap.
    max_reverse_speed_mps: reverse speed cap (a positive number).
    max_accel_mps2: largest forward acceleration.
    max_decel_mps2: largest braking deceleration (a positive number).
    max_steer_rad: steering angle cap (also caps the angle reached in steering-rate mode).
    max_steer_rate_rps: steering rate cap in steering-rate mode (4 rad/s lets inverse dynamics follow the logs:
      replay ADE 0.02 m, against 0.17 m at 2 rad/s where log noise at walking pace makes the steering saturate).
    max_curvature_per_m: curvature cap (1 / smallest turn radius).
  """

  dt: float = 0.1
  wheelbase_fraction: float = 0.6
  max_speed_mps: float = 40.0
  max_reverse_speed_mps: float = 10.0
  max_accel_mps2: float = 8.0
  max_decel_mps2: float = 10.0
  max_steer_rad: float = 0.7
  max_steer_rate_rps: float = 4.0
  max_curvature_per_m: float = 0.3


def wheelbase(length, cfg: DynamicsConfig):
  """(O,) wheelbase in metres; zero-length padding gets the default car so nothing divides by zero."""
  length = jnp.where(length > 0.5, length, DEFAULT_LENGTH_M)
  return cfg.wheelbase_fraction * length


def signed_speed(obj: ObjectState):
  """(O,) velocity projected on the heading, m/s (negative when reversing)."""
  return obj.vel_x * jnp.cos(obj.yaw) + obj.vel_y * jnp.sin(obj.yaw)


def wrap(a):
  """Wraps radians to [-pi, pi)."""
  return (a + jnp.pi) % (2 * jnp.pi) - jnp.pi


def steer_angle(prev_steer, steer_or_rate, cfg: DynamicsConfig, steering_rate: bool):
  """The steering angle an action sets: the action itself, or the previous angle moved by rate * dt."""
  if steering_rate:
    rate = jnp.clip(steer_or_rate, -cfg.max_steer_rate_rps, cfg.max_steer_rate_rps)
    steer_or_rate = prev_steer + rate * cfg.dt
  return jnp.clip(steer_or_rate, -cfg.max_steer_rad, cfg.max_steer_rad)


def bicycle_step(obj: ObjectState, accel, steer, cfg: DynamicsConfig, length=None,
                 steering_rate: bool = False) -> ObjectState:
  """Advances every object one step; see the module docstring for the equations.

  Args:
    obj: ObjectState with (O,) arrays.
    accel: (O,) m/s^2, clipped to [-max_decel, max_accel].
    steer: (O,) steering angle in rad, or steering rate in rad/s when `steering_rate`.
    cfg: limits and dt.
    length: (O,) box lengths in metres (wheelbase = fraction * length); None means a 4.5 m car.
    steering_rate: static; whether `steer` is a rate.
  Returns:
    The next ObjectState; `accel_mps2` and `steer_rad` hold what was applied after the limits.
  """
  chex.assert_equal_shape([obj.x, accel, steer])
  if length is None:
    length = jnp.full_like(obj.x, DEFAULT_LENGTH_M)
  dt = cfg.dt
  v = signed_speed(obj)
  a = jnp.clip(accel, -cfg.max_decel_mps2, cfg.max_accel_mps2)
  v_next = jnp.clip(v + a * dt, -cfg.max_reverse_speed_mps, cfg.max_speed_mps)
  delta = steer_angle(obj.steer_rad, steer, cfg, steering_rate)
  wb = wheelbase(length, cfg)
  kappa = jnp.clip(jnp.tan(delta) / wb, -cfg.max_curvature_per_m, cfg.max_curvature_per_m)
  yaw_next = wrap(obj.yaw + kappa * v_next * dt)
  c, s = jnp.cos(yaw_next), jnp.sin(yaw_next)
  return obj.replace(
      x=obj.x + v_next * c * dt, y=obj.y + v_next * s * dt, yaw=yaw_next,
      vel_x=v_next * c, vel_y=v_next * s,
      accel_mps2=(v_next - v) / dt, steer_rad=jnp.arctan(kappa * wb),
  )


def object_state_from_log(scenario, t) -> ObjectState:
  """ObjectState of every object as logged at step t (a traced int is fine); accel and steer start at zero."""
  o = scenario.objects
  at = lambda a: jnp.take(a, t, axis=-1)
  x = at(o.x)
  zero = jnp.zeros_like(x)
  return ObjectState(x=x, y=at(o.y), yaw=at(o.yaw), vel_x=at(o.vel_x), vel_y=at(o.vel_y), valid=at(o.valid),
                     accel_mps2=zero, steer_rad=zero)
