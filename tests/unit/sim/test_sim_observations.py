"""Observations of a hand-built two-car scene: exact ego-frame values, masks, sizes, jit vs eager."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.scenes import padding, types
from shared.sim import geometry, observations
from shared.sim import log_path
from shared.sim.datatypes import ObjectState, SimState

T = 5
CFG = observations.ObsConfig(num_agents=2, num_road_points=4, num_route_points=4, route_stride=1)


def build_state(t=1):
  """Ego (logged along the y axis, 5 m per step, goal (0, 20)) observed at (0, 6) heading +y at 2 m/s; the other
  car at (0, 16) heading -x at 3 m/s. Map: a lane along x=3 (direction +y) and a light whose lane starts at its
  stop point (0, 26), green at t=1."""
  raw = padding.empty_raw("two_cars", T)
  raw.x = np.zeros((2, T))
  raw.y = np.array([[0, 5, 10, 15, 20], [16] * T], np.float64)
  raw.yaw = np.array([[math.pi / 2] * T, [math.pi] * T])
  raw.vel_x, raw.vel_y = np.zeros((2, T)), np.zeros((2, T))
  raw.valid = np.ones((2, T), bool)
  raw.length, raw.width = np.array([4.0, 4.0]), np.array([2.0, 2.0])
  raw.object_type, raw.object_id = np.array([1, 1]), np.arange(2)
  raw.is_sdc, raw.controllable = np.array([True, False]), np.array([True, True])
  raw.goal_x, raw.goal_y = raw.x[:, -1].copy(), raw.y[:, -1].copy()
  lane = np.arange(-10, 40.01, 0.5)
  light_lane = np.arange(26, 40.01, 0.5)
  raw.road_x = np.concatenate([np.full(lane.size, 3.0), np.zeros(light_lane.size)])
  raw.road_y = np.concatenate([lane, light_lane])
  raw.road_map_type = np.full(raw.road_x.size, types.MAP_LANE_SURFACE_STREET)
  raw.road_element_id = np.concatenate([np.full(lane.size, 1), np.full(light_lane.size, 2)])
  raw.tl_lane_id, raw.tl_stop_x, raw.tl_stop_y = np.array([2]), np.array([0.0]), np.array([26.0])
  raw.tl_state, raw.tl_valid = np.array([[4, 6, 6, 6, 6]]), np.ones((1, T), bool)
  cfg = types.SceneConfig(max_objects=3, max_road_points=256, max_tl_lanes=2, num_timesteps=T, init_step=0)
  sc, meta = padding.pad_scene(raw, cfg)
  assert meta.origin_xy == (0.0, 0.0)
  sc = jax.tree.map(jnp.asarray, sc)
  f = lambda *v: jnp.asarray(v, jnp.float32)
  objects = ObjectState(x=f(0, 0, 0), y=f(6, 16, 0), yaw=f(math.pi / 2, math.pi, 0), vel_x=f(0, -3, 0),
                        vel_y=f(2, 0, 0), valid=jnp.asarray([True, True, False]), accel_mps2=f(2, 0, 0),
                        steer_rad=f(0.3, 0, 0))
  cand = jax.jit(geometry.nearest_road_points, static_argnums=3)(sc.roads, objects.x, objects.y, 32)  # 8 lane slots
  return SimState(scenario=sc, t=jnp.asarray(t, jnp.int32), objects=objects,
                  controlled=jnp.asarray([True, False, False]), done=jnp.zeros(3, bool),
                  goal_reached=jnp.zeros(3, bool), road_candidates=cand, rng=jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def obs():
  return jax.jit(lambda s: observations.observe(s, CFG))(build_state())


def test_ego_features(obs):
  # speed 2/20, length 4/10, width 2/10; goal (0, 20) is 14 m straight ahead of (0, 6) heading +y: (14/50, 0),
  # bearing 0 -> (cos, sin) = (1, 0); accel 2/4; steer 0.3/0.6.
  np.testing.assert_allclose(np.asarray(obs.ego[0]), [0.1, 0.4, 0.2, 0.28, 0.0, 1.0, 0.0, 0.5, 0.5], atol=1e-6)


def test_other_car_in_the_ego_frame(obs):
  # World offset (0, 10) rotated by -90 deg: 10 m ahead, 0 left -> (0.2, 0). Relative yaw pi/2 -> (cos, sin) =
  # (0, 1). Relative velocity world (-3, -2) -> ego (forward = +y: -2, left = -x: +3) / 20 = (-0.1, 0.15).
  # Sizes 4/10, 2/10. Boxes: ego spans y in [4, 8], the other y in [15, 17]: 7 m apart -> 0.14. Vehicle one-hot.
  expected = [0.2, 0.0, 0.0, 1.0, -0.1, 0.15, 0.4, 0.2, 0.14, 1, 0, 0, 0]
  np.testing.assert_allclose(np.asarray(obs.agents[0, 0]), expected, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(obs.agents_mask[0]), [True, False])  # object 2 is padding
  np.testing.assert_allclose(np.asarray(obs.agents[0, 1]), 0.0)
  # Seen from the other car (forward -x, left -y) the ego's offset (0, -10) is 0 ahead and 10 m left: (0, 0.2).
  np.testing.assert_allclose(np.asarray(obs.agents[1, 0, :2]), [0.0, 0.2], atol=1e-6)


def test_road_points_route_light_and_time(obs):
  # 4 road slots: 2 road edges (none on this map: masked), 2 other points. Nearest (3, 6): 3 m to the right ->
  # (0, -0.06); lane direction +y = ego forward -> (1, 0); lane. Next: (3, 5.5) or (3, 6.5), 0.5 m back or ahead.
  np.testing.assert_array_equal(np.asarray(obs.roads_mask[0]), [False, False, True, True])
  np.testing.assert_allclose(np.asarray(obs.roads[0, 2]), [0.0, -0.06, 1.0, 0.0, 1, 0, 0, 0, 0, 0], atol=1e-6)
  assert abs(float(obs.roads[0, 3, 0])) == pytest.approx(0.01, abs=1e-6)
  # Nearest logged segment starts at t=1 (y=5): route points at t=2, 3, 4 are 4, 9, 14 m ahead; t=5 is one step
  # past the log: on its last direction (+y), one mean logged step (5 m) past its end (0, 20): 19 m ahead.
  np.testing.assert_allclose(np.asarray(obs.route[0]), [[0.08, 0], [0.18, 0], [0.28, 0], [0.38, 0]], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(obs.route_mask[0]), [True, True, True, True])
  # Light: stop point (0, 26) 20 m ahead, green at t=1: present, (0.4, 0), one-hot go.
  np.testing.assert_allclose(np.asarray(obs.light[0]), [1, 0.4, 0.0, 0, 0, 1, 0], atol=1e-6)
  # The other car heads -x: the stop point is beside it, not ahead.
  assert float(obs.light[1, 0]) == 0.0
  np.testing.assert_allclose(np.asarray(obs.remaining_time[:, 0]), 0.75)  # (5 - 1 - 1) / 4


def test_sizes_invalid_objects_and_flatten(obs):
  assert observations.observation_size(CFG) == 9 + 2 * 14 + 4 * 11 + 4 * 3 + 7
  flat = observations.flatten(obs)
  assert flat.shape == (3, observations.observation_size(CFG))
  np.testing.assert_allclose(np.asarray(flat[2]), 0.0)  # padding object: all zero


@pytest.mark.slow  # eager dispatch of every op: ~10 s on a quiet 2-core box
def test_jit_and_eager_agree(obs):
  eager = observations.observe(build_state(), CFG)
  for a, b in zip(jax.tree.leaves(obs), jax.tree.leaves(eager)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=1e-6)


def test_controlled_rows_and_spread():
  rows, slot, ok = observations.controlled_rows(jnp.asarray([False, True, False, True, True]), 2)
  np.testing.assert_array_equal(np.asarray(rows), [1, 3])  # the first two controlled, in index order
  np.testing.assert_array_equal(np.asarray(ok), [False, True, False, True, False])  # the third has no row
  np.testing.assert_array_equal(np.asarray(slot)[np.asarray(ok)], [0, 1])


def test_observe_controlled_fills_controlled_rows_only(obs):
  # Object 0 is controlled: its row equals the all-objects observation; object 1 (valid, not controlled) is zero.
  ctrl = jax.jit(lambda s: observations.observe_controlled(s, 64, CFG))(build_state())
  for name in ("ego", "agents", "agents_mask", "roads", "roads_mask", "route", "route_mask", "light"):
    full, got = np.asarray(getattr(obs, name)), np.asarray(getattr(ctrl, name))
    assert got.shape == full.shape, name
    np.testing.assert_allclose(got[0], full[0], atol=1e-6, err_msg=name)
    assert not got[1:].any() and full[1].any() if name in ("ego", "agents") else not got[1:].any(), name
  np.testing.assert_allclose(np.asarray(ctrl.remaining_time), np.asarray(obs.remaining_time))
  np.testing.assert_allclose(np.asarray(ctrl.ego[0]), [0.1, 0.4, 0.2, 0.28, 0.0, 1.0, 0.0, 0.5, 0.5], atol=1e-6)


def test_route_past_the_log_end_lies_ahead_of_the_ego():
  # The ego's log ends at (0, 20) (5 m per step). Driving on to (0, 41), 21 m past that end, its route points must
  # lie ahead of it on the continuation (straight on here: the lane at x = 3 is too far aside to snap onto), one
  # mean logged step (5 m) apart from its own projection: 5, 10, 15, 20 m ahead. (Before the continuation was
  # indexed, the points were measured from the log's end, behind the ego.)
  state = build_state()
  state = state.replace(objects=state.objects.replace(y=state.objects.y.at[0].set(41.0)),
                        path_end=log_path.log_path_end(state.scenario.objects, state.scenario.roads))
  obs = jax.jit(lambda s: observations.observe(s, CFG))(state)
  np.testing.assert_allclose(np.asarray(obs.route[0]), [[0.1, 0], [0.2, 0], [0.3, 0], [0.4, 0]], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(obs.route_mask[0]), [True, True, True, True])
