"""Bicycle model and action grid: hand-computed steps, turn radius, limits, steering rate, jit == non-jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.sim import actions, dynamics
from shared.sim.datatypes import ObjectState

CFG = dynamics.DynamicsConfig()


def _obj(x=0.0, y=0.0, yaw=0.0, speed=0.0, steer=0.0, n=1) -> ObjectState:
  f = lambda v: jnp.full((n,), v, jnp.float32)
  return ObjectState(x=f(x), y=f(y), yaw=f(yaw), vel_x=f(speed * np.cos(yaw)), vel_y=f(speed * np.sin(yaw)),
                     valid=jnp.ones((n,), bool), accel_mps2=f(0.0), steer_rad=f(steer))


def test_straight_acceleration_hand_computed():
  # v' = 10 + 2 * 0.1 = 10.2 m/s; x' = 0 + 10.2 * 0.1 = 1.02 m; heading unchanged.
  nxt = dynamics.bicycle_step(_obj(speed=10.0), jnp.array([2.0]), jnp.array([0.0]), CFG, jnp.array([4.5]))
  np.testing.assert_allclose([nxt.x[0], nxt.y[0], nxt.yaw[0], nxt.vel_x[0]], [1.02, 0.0, 0.0, 10.2], atol=1e-6)
  np.testing.assert_allclose(nxt.accel_mps2[0], 2.0, atol=1e-4)


def test_heading_north_and_reversing():
  # Facing +y at 5 m/s, braking 3 m/s^2: v' = 4.7, y' = 0.47.
  nxt = dynamics.bicycle_step(_obj(yaw=np.pi / 2, speed=5.0), jnp.array([-3.0]), jnp.array([0.0]), CFG)
  np.testing.assert_allclose([nxt.x[0], nxt.y[0]], [0.0, 0.47], atol=1e-6)
  # Reversing at -2 m/s (velocity points backwards): x' = -0.2, heading stays 0 (no half-turn).
  rev = _obj(speed=0.0).replace(vel_x=jnp.array([-2.0]))
  nxt = dynamics.bicycle_step(rev, jnp.array([0.0]), jnp.array([0.0]), CFG)
  np.testing.assert_allclose([nxt.x[0], nxt.yaw[0], dynamics.signed_speed(nxt)[0]], [-0.2, 0.0, -2.0], atol=1e-6)


def test_constant_steer_turn_radius_is_wheelbase_over_tan_steer():
  # length 4.5 -> wheelbase 2.7 m; steer 0.2 rad -> R = 2.7 / tan(0.2) = 13.3156 m.
  steer, length, v = 0.2, 4.5, 5.0
  radius = 0.6 * length / np.tan(steer)
  obj = _obj(speed=v)
  xs, ys = [], []
  for _ in range(60):
    obj = dynamics.bicycle_step(obj, jnp.array([0.0]), jnp.array([steer]), CFG, jnp.array([length]))
    xs.append(float(obj.x[0])); ys.append(float(obj.y[0]))
  # Yaw rate v tan(steer) / L each step: 60 steps * 0.1 s * 5 / 13.3156 = 2.2530 rad.
  np.testing.assert_allclose(float(obj.yaw[0]), 60 * 0.1 * v / radius, atol=1e-4)
  # Fit the circle through the positions (algebraic least squares) and compare its radius.
  x, y = np.array(xs), np.array(ys)
  a = np.stack([x, y, np.ones_like(x)], 1)
  cx, cy, c = np.linalg.lstsq(a, -(x**2 + y**2), rcond=None)[0]
  fitted = np.sqrt(cx**2 / 4 + cy**2 / 4 - c)
  assert abs(fitted - radius) / radius < 1e-3, (fitted, radius)
  np.testing.assert_allclose(np.hypot(x + cx / 2, y + cy / 2), fitted, rtol=1e-4)  # every point on it


def test_limits_clamp_speed_accel_and_curvature():
  cfg = dynamics.DynamicsConfig(max_speed_mps=10.0, max_accel_mps2=3.0, max_decel_mps2=5.0,
                                max_curvature_per_m=0.1)
  # accel 100 -> 3 m/s^2: v' = 1 + 0.3 = 1.3.
  n = dynamics.bicycle_step(_obj(speed=1.0), jnp.array([100.0]), jnp.array([0.0]), cfg)
  np.testing.assert_allclose(dynamics.signed_speed(n)[0], 1.3, atol=1e-6)
  # braking -100 -> -5: v' = 1 - 0.5 = 0.5.
  n = dynamics.bicycle_step(_obj(speed=1.0), jnp.array([-100.0]), jnp.array([0.0]), cfg)
  np.testing.assert_allclose(dynamics.signed_speed(n)[0], 0.5, atol=1e-6)
  # at 9.9 m/s with +3: capped at 10.
  n = dynamics.bicycle_step(_obj(speed=9.9), jnp.array([3.0]), jnp.array([0.0]), cfg)
  np.testing.assert_allclose(dynamics.signed_speed(n)[0], 10.0, atol=1e-6)
  # steer 0.6 on L=2.7 wants k=0.2537 1/m; capped at 0.1: yaw' = 0.1 * 10 * 0.1 = 0.1 rad.
  n = dynamics.bicycle_step(_obj(speed=10.0), jnp.array([0.0]), jnp.array([0.6]), cfg, jnp.array([4.5]))
  np.testing.assert_allclose(n.yaw[0], 0.1, atol=1e-6)
  np.testing.assert_allclose(n.steer_rad[0], np.arctan(0.1 * 2.7), atol=1e-6)  # the angle actually applied


def test_steering_rate_mode_integrates_and_caps():
  # prev steer 0.1: rate 1.0 rad/s -> 0.2 rad; rate 50 -> capped at 4 rad/s -> 0.5 rad; rate -50 -> -0.3 rad;
  # from 0.65, +4 rad/s would reach 1.05 but the angle cap holds it at 0.7 (below the 0.3 1/m curvature cap:
  # tan(0.7) / 2.7 = 0.312 -> capped to 0.3 -> applied angle atan(0.3 * 2.7) = 0.6808).
  obj = _obj(speed=5.0, steer=0.1, n=4).replace(steer_rad=jnp.array([0.1, 0.1, 0.1, 0.65]))
  n = dynamics.bicycle_step(obj, jnp.zeros(4), jnp.array([1.0, 50.0, -50.0, 4.0]), CFG, jnp.full(4, 4.5),
                            steering_rate=True)
  np.testing.assert_allclose(n.steer_rad, [0.2, 0.5, -0.3, np.arctan(0.3 * 2.7)], atol=1e-6)


def test_jit_equals_eager_on_random_states():
  rng = np.random.default_rng(0)
  n = 257
  obj = ObjectState(x=jnp.asarray(rng.normal(0, 50, n), jnp.float32), y=jnp.asarray(rng.normal(0, 50, n), jnp.float32),
                    yaw=jnp.asarray(rng.uniform(-3, 3, n), jnp.float32),
                    vel_x=jnp.asarray(rng.normal(0, 8, n), jnp.float32),
                    vel_y=jnp.asarray(rng.normal(0, 8, n), jnp.float32), valid=jnp.ones(n, bool),
                    accel_mps2=jnp.zeros(n), steer_rad=jnp.zeros(n))
  a = jnp.asarray(rng.uniform(-6, 6, n), jnp.float32)
  s = jnp.asarray(rng.uniform(-0.8, 0.8, n), jnp.float32)
  length = jnp.asarray(rng.uniform(0, 6, n), jnp.float32)
  eager = dynamics.bicycle_step(obj, a, s, CFG, length)
  jitted = jax.jit(dynamics.bicycle_step, static_argnums=(3,))(obj, a, s, CFG, length)
  for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(np.asarray(e), np.asarray(j), rtol=1e-5, atol=1e-5)


def test_grid_default_and_paper_002():
  cfg = actions.ActionGridConfig()
  grid = np.asarray(actions.build_grid(cfg))
  assert grid.shape == (91, 2) and actions.num_actions(cfg) == 91
  # row = i_accel * 13 + i_steer: row 0 = (-4, -0.6), row 45 = (0, 0), row 90 = (4, 0.6).
  np.testing.assert_allclose(grid[[0, 45, 90]], [[-4, -0.6], [0, 0], [4, 0.6]], atol=1e-6)
  np.testing.assert_allclose(actions.decode(jnp.array([14]), cfg), [[-4 + 8 / 6, -0.5]], atol=1e-6)
  paper = actions.ActionGridConfig(accel=(-4.0, 3.0, 71), steer=(-0.6, 0.6, 13), mode="steering_rate")
  acc = actions.accel_values(paper)
  assert actions.num_actions(paper) == 71 * 13 and acc.size == 71
  np.testing.assert_allclose(acc[[0, 1, 70]], [-4.0, -3.9, 3.0], atol=1e-6)  # step 0.1 m/s^2
  idx = actions.nearest_index(jnp.array([0.04, 2.96]), jnp.array([0.01, -0.6]), paper)
  np.testing.assert_array_equal(idx, [40 * 13 + 6, 70 * 13 + 0])
  with pytest.raises(ValueError, match="mode"):
    actions.ActionGridConfig(mode="throttle")
