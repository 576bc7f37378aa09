"""Rewards: the linear combination on hand-set metrics (exact sums), newly-reached goals, progress deltas."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.scenes import padding, types
from shared.sim import metrics, rewards
from shared.sim.datatypes import ObjectState, SimState

T = 3


def _state(x, goal_reached=(False, False)):
  """Two cars logged along the x axis (0, 5, 10); current x positions given; goal_reached latch given."""
  raw = padding.empty_raw("r", T)
  raw.x = np.array([[0, 5, 10], [0, 5, 10]], np.float64)
  raw.y = np.array([[0, 0, 0], [4, 4, 4]], np.float64)
  raw.yaw, raw.vel_x, raw.vel_y = np.zeros((2, T)), np.zeros((2, T)), np.zeros((2, T))
  raw.valid = np.ones((2, T), bool)
  raw.length, raw.width = np.array([4.0, 4.0]), np.array([2.0, 2.0])
  raw.object_type, raw.object_id = np.array([1, 1]), np.arange(2)
  raw.is_sdc, raw.controllable = np.array([True, False]), np.array([True, True])
  raw.goal_x, raw.goal_y = raw.x[:, -1].copy(), raw.y[:, -1].copy()
  sc, _ = padding.pad_scene(raw, types.SceneConfig(max_objects=2, max_road_points=8, max_tl_lanes=1,
                                                   num_timesteps=T, init_step=0))
  sc = jax.tree.map(jnp.asarray, sc)
  f = lambda v: jnp.asarray(v, jnp.float32)
  obj = ObjectState(x=f(x), y=f([0.0, 4.0]), yaw=f([0, 0]), vel_x=f([0, 0]), vel_y=f([0, 0]),
                    valid=jnp.ones(2, bool), accel_mps2=f([0, 0]), steer_rad=f([0, 0]))
  return SimState(scenario=sc, t=jnp.asarray(1, jnp.int32), objects=obj, controlled=jnp.ones(2, bool),
                  done=jnp.zeros(2, bool), goal_reached=jnp.asarray(goal_reached),
                  road_candidates=jnp.zeros((2, 4), jnp.int32), rng=jax.random.PRNGKey(0))


def _metrics(**kw):
  z = lambda: jnp.zeros(2)
  b = lambda: jnp.zeros(2, bool)
  fields = dict(valid=jnp.ones(2, bool), overlap=b(), min_box_distance_m=z(), offroad=b(), road_edge_distance_m=z(),
                offroute=b(), route_distance_m=z(), goal_reached=b(), progress_m=z(), red_light_run=b(),
                stop_line_violation=b(), speed_mps=z(), accel_mps2=z(), jerk_mps3=z(), lat_accel_mps2=z())
  fields.update({k: jnp.asarray(v) for k, v in kw.items()})
  return metrics.StepMetrics(**fields)


def test_default_is_paper_000_goal_and_crash():
  prev = _state([5.0, 5.0], goal_reached=(False, True))
  m = _metrics(goal_reached=[True, True], overlap=[True, False], offroad=[True, False])
  r = rewards.compute_reward(m, prev, prev, rewards.RewardConfig())
  # Car 0: +1 goal (first time) -1 collision -1 off-road = -1. Car 1: goal already reached before: 0.
  np.testing.assert_allclose(np.asarray(r), [-1.0, 0.0])


def test_dense_terms_sum_linearly():
  cfg = rewards.RewardConfig(goal=0.0, collision=0.0, offroad=0.0, offroute=-2.0, red_light=-3.0, stop_sign=-4.0,
                             progress=0.1, speeding=-0.1, speed_limit_mps=20.0, comfort_accel=-0.01,
                             comfort_lat=-0.02, comfort_jerk=-0.001)
  prev = _state([5.0, 5.0])
  # Car 0 moved 5 -> 7.3 along its path: progress 2.3 m -> +0.23; 25 m/s is 5 over the limit -> -0.5;
  # accel 3 -> -0.09; lateral 2 -> -0.08; jerk 10 -> -0.1; off-route -2. Total -2.54.
  # Car 1: red light -3 and stop sign -4, no progress (stayed at 5): -7.
  m = _metrics(progress_m=[7.3, 5.0], speed_mps=[25.0, 10.0], accel_mps2=[3.0, 0.0], lat_accel_mps2=[2.0, 0.0],
               jerk_mps3=[10.0, 0.0], offroute=[True, False], red_light_run=[False, True],
               stop_line_violation=[False, True])
  r = rewards.compute_reward(m, prev, prev, cfg)
  np.testing.assert_allclose(np.asarray(r), [-2.54, -7.0], atol=1e-5)


def test_progress_is_clipped_and_invalid_objects_get_zero():
  cfg = rewards.RewardConfig(goal=0.0, collision=0.0, offroad=0.0, progress=1.0, progress_clip_m=5.0)
  prev = _state([0.0, 5.0])
  # A nearest-point jump of 9.5 m counts as 5; car 1 is not valid: 0 whatever its metrics say.
  m = _metrics(progress_m=[9.5, 10.0], valid=[True, False], overlap=[False, True])
  np.testing.assert_allclose(np.asarray(rewards.compute_reward(m, prev, prev, cfg)), [5.0, 0.0])


def test_paper_002_preset_penalises_done_events():
  cfg = rewards.RewardConfig.paper_002()
  assert cfg.goal == 0.0 and cfg.progress > 0.0
  assert min(cfg.collision, cfg.offroute, cfg.red_light, cfg.stop_sign) <= -1.0
  prev = _state([5.0, 5.0])
  r = rewards.compute_reward(_metrics(overlap=[True, False], progress_m=[5.0, 5.0]), prev, prev, cfg)
  assert float(r[0]) == pytest.approx(cfg.collision) and float(r[1]) == 0.0


def test_progress_counts_only_up_to_the_lead_over_the_log():
  # Logged paths x = 0, 5, 10 at t = 0, 1, 2: the log's own arc length is 5 m at t = 1 and 10 m at t = 2.
  cfg = rewards.RewardConfig(goal=0.0, collision=0.0, offroad=0.0, progress=1.0, progress_clip_m=100.0,
                             progress_lead_m=1.0)
  prev = _state([5.0, 7.0])  # t = 1; car 1 is already 2 m ahead of the log (cap 5 + 1 = 6)
  state = prev.replace(t=jnp.asarray(2, jnp.int32))  # cap 10 + 1 = 11
  m = _metrics(progress_m=[12.0, 12.0])
  # Car 0: min(12, 11) - min(5, 6) = 6; car 1: min(12, 11) - min(7, 6) = 5.
  np.testing.assert_allclose(np.asarray(rewards.compute_reward(m, prev, state, cfg)), [6.0, 5.0], atol=1e-5)
  m = _metrics(progress_m=[9.0, 9.0])  # behind the cap: the whole progress counts
  np.testing.assert_allclose(np.asarray(rewards.compute_reward(m, prev, state, cfg)), [4.0, 3.0], atol=1e-5)
  uncapped = dataclasses.replace(cfg, progress_lead_m=None)
  np.testing.assert_allclose(np.asarray(rewards.compute_reward(_metrics(progress_m=[12.0, 12.0]), prev, state,
                                                               uncapped)), [7.0, 5.0], atol=1e-5)


def test_log_arc_length_at_skips_gaps_and_stops_at_the_end():
  from shared.sim import geometry
  from shared.sim import log_path

  log = _state([0.0, 0.0]).scenario.objects
  np.testing.assert_allclose(np.asarray(log_path.log_arc_length_at(log, 0)), [0.0, 0.0])
  np.testing.assert_allclose(np.asarray(log_path.log_arc_length_at(log, 2)), [10.0, 10.0])
  np.testing.assert_allclose(np.asarray(log_path.log_arc_length_at(log, 7)), [10.0, 10.0])  # past the log's end
  gap = log.replace(valid=log.valid.at[0, 1].set(False))  # car 0 has no step 1: no segment spans the gap
  np.testing.assert_allclose(np.asarray(log_path.log_arc_length_at(gap, 2)), [0.0, 10.0])
