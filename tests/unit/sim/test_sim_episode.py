"""Episode metrics on hand-built rollouts with known answers (one scene, 10 simulated steps from t=10).

The log: every object drives along +x at 10 m/s (1 m per step) from x=0 at t=0, so at t=10 it is at x=10 and the
logged path over the window t=10..20 is the straight segment x=10..20 (10 m). Object 4 is parked at the origin.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.scenes import native, types
from shared.sim import episode, metrics
from shared.sim.datatypes import ObjectState

T, INIT, O = 21, 10, 6
S = T - INIT - 1  # 10 simulated steps; output s is logged step 11 + s
CFG = episode.EpisodeConfig(init_step=INIT)


def _scene() -> types.Scenario:
  sc = native.empty_scenario(types.SceneConfig(max_objects=O, max_road_points=8, max_tl_lanes=1, num_timesteps=T))
  t = np.arange(T, dtype=np.float32)
  x = np.tile(t, (O, 1))
  x[4] = 0.0
  vx = np.full((O, T), 10.0, np.float32)
  vx[4] = 0.0
  valid = np.ones((O, T), bool)
  valid[5] = False  # padding
  obj = sc.objects.replace(x=x, y=np.zeros((O, T), np.float32), vel_x=vx, vel_y=np.zeros((O, T), np.float32),
                           valid=valid)
  return sc.replace(objects=obj)


def _flags(**steps) -> np.ndarray:
  """(S, O) bool with True at the given {object: [steps]}."""
  f = np.zeros((S, O), bool)
  for o, ss in steps.items():
    f[ss, int(o[1:])] = True
  return f


def _run(sim_x, metrics_kw, evaluated=(1, 1, 1, 1, 1, 0)):
  sc = _scene()
  zeros = np.zeros((S, O), np.float32)
  valid = np.ones((S, O), bool)
  objects = ObjectState(x=sim_x.astype(np.float32), y=zeros, yaw=zeros, vel_x=zeros, vel_y=zeros, valid=valid,
                        accel_mps2=zeros, steer_rad=zeros)
  # Every StepMetrics field zero (floats) or False (flags), then the hand-set flags.
  kw = {f.name: np.zeros((S, O), np.float32) for f in dataclasses.fields(metrics.StepMetrics)}
  kw.update({f: np.zeros((S, O), bool) for f in episode.STEP_FLAGS}, valid=valid)
  kw.update(metrics_kw)
  fn = jax.jit(lambda m, ob, ev, s: episode.episode_metrics(m, ob, ev, s, CFG))
  return fn(metrics.StepMetrics(**kw), objects, np.array(evaluated, bool), sc)


@pytest.fixture(scope="module")
def result():
  log_x = np.tile(np.arange(INIT + 1, T, dtype=np.float32)[:, None], (1, O))  # (S, O) logged x at t=11..20
  sim_x = log_x.copy()
  sim_x[:, 1] = np.minimum(log_x[:, 1], 15.0)  # object 1 stops half way (x=15 of 10..20)
  sim_x[:, 2] = log_x[:, 2] + 2.0  # object 2 ends at x=22: 12 m along a 10 m path
  sim_x[:, 4] = 0.0
  m = {
      "overlap": _flags(o3=[4, 5]),  # object 3 crashes at step k=4
      "offroad": _flags(o4=[3, 4, 5]),  # object 4 (parked) off-road for 3 steps
      "goal_reached": _flags(o0=[9], o3=[7], o5=[0]),  # 0 reaches its goal at the end, 3 after its crash
      "red_light_run": _flags(o2=[2]),
      "stop_line_violation": _flags(o1=[6]),
      "offroute": _flags(o5=[1]),  # object 5 is not evaluated: nothing counts
  }
  return jax.tree.map(np.asarray, _run(sim_x, m))


def test_crash_at_step_k(result):
  assert result.collision.tolist() == [0, 0, 0, 1, 0, 0]
  assert result.first_crash_step.tolist() == [S, S, S, 4, 3, S]
  # Object 3 reached its goal at step 7, after crashing at 4: the terminating episode would have returned -1.
  assert result.episodic_reward.tolist() == [1.0, 0.0, 0.0, -1.0, -1.0, 0.0]
  assert result.failure.tolist() == [0, 0, 0, 1, 1, 0]


def test_offroad_three_steps_and_violations(result):
  assert result.offroad.tolist() == [0, 0, 0, 0, 1, 0]
  assert result.offroad_steps.tolist() == [0, 0, 0, 0, 3, 0]
  assert result.red_light_run.tolist() == [0, 0, 1, 0, 0, 0]
  assert result.stop_line_violation.tolist() == [0, 1, 0, 0, 0, 0]
  assert result.offroute.tolist() == [0] * 6  # object 5's off-route is masked: not evaluated
  assert result.goal_reached.tolist() == [1, 0, 0, 1, 0, 0]
  assert result.goal_step.tolist() == [9, S, S, 7, S, S]  # object 5 reached its goal but is not evaluated


def test_progress_ratio(result):
  np.testing.assert_allclose(result.path_m[:4], 10.0, atol=1e-5)
  # exact replay 10/10; stopped at x=15: 5/10; overshoot to x=22: 12/10 along the extended last segment.
  np.testing.assert_allclose(result.progress_ratio[:4], [1.0, 0.5, 1.2, 1.0], atol=1e-5)
  assert result.progress_valid.tolist() == [1, 1, 1, 1, 0, 0]  # parked car: no path, no ratio
  assert result.moving.tolist() == [1, 1, 1, 1, 0, 0]


def test_ade_fde(result):
  # Object 1 lags the log by 0,0,0,0,0,1,2,3,4,5 m: ADE 15/10 = 1.5, FDE 5. Object 2 is 2 m ahead throughout.
  np.testing.assert_allclose(result.ade_m[:3], [0.0, 1.5, 2.0], atol=1e-5)
  np.testing.assert_allclose(result.fde_m[:3], [0.0, 5.0, 2.0], atol=1e-5)


_progress = jax.jit(episode.path_progress)


def test_path_progress_skips_log_gaps_and_curves():
  # An L-shaped path (10 m east, then 10 m north) with a gap at its corner; a point 3 m up the second leg.
  px = np.array([[0.0, 5.0, 0.0, 10.0, 10.0, 10.0]], np.float32)
  py = np.array([[0.0, 0.0, 0.0, 0.0, 5.0, 10.0]], np.float32)
  valid = np.array([[True, True, False, True, True, True]])
  fx, fy = jax.jit(episode._forward_fill)(px, py, valid)
  np.testing.assert_allclose(np.asarray(fx), [[0, 5, 5, 10, 10, 10]])
  prog, path = _progress(fx, fy, jnp.array([10.4]), jnp.array([3.0]))
  np.testing.assert_allclose([float(prog[0]), float(path[0])], [13.0, 20.0], atol=1e-5)


def test_path_progress_ties_go_to_the_furthest_pass():
  # A stopping car's log jitters back over itself: 0 -> 5 -> 4.5 -> 6 along x (path 5 + 0.5 + 1.5 = 7 m).
  # x=4.8 lies on all three segments (arc 4.8, 5.2, 5.8): the furthest wins, so a replay's end scores the full path.
  px = jnp.array([[0.0, 5.0, 4.5, 6.0]])
  prog, path = _progress(px, jnp.zeros_like(px), jnp.array([4.8]), jnp.array([0.0]))
  np.testing.assert_allclose([float(prog[0]), float(path[0])], [5.8, 7.0], atol=1e-5)
  prog, _ = _progress(px, jnp.zeros_like(px), jnp.array([6.0]), jnp.array([0.0]))
  assert float(prog[0]) == pytest.approx(7.0)


def test_summarize_counts_split_moving_and_parked(result):
  s = episode.summarize(result)
  assert s["all"]["agents"] == 5 and s["moving"]["agents"] == 4 and s["parked"]["agents"] == 1
  assert s["all"]["failure"] == {"rate": 2 / 5, "count": 2, "total": 5}
  assert s["moving"]["collision"] == {"rate": 1 / 4, "count": 1, "total": 4}
  assert s["parked"]["offroad"] == {"rate": 1.0, "count": 1, "total": 1}
  assert s["all"]["goal_reached"]["count"] == 2
  # Progress over the 4 moving agents: mean (1 + 0.5 + 1.2 + 1) / 4 = 0.925; pooled (10+5+12+10) / 40 = 0.925.
  assert s["moving"]["progress_ratio"]["mean"] == pytest.approx(0.925, abs=1e-6)
  assert s["moving"]["progress_ratio"]["pooled"] == pytest.approx(0.925, abs=1e-6)
  assert s["parked"]["progress_ratio"]["mean"] is None
  assert s["all"]["episodic_reward"]["mean"] == pytest.approx((1 - 1 - 1) / 5)
  only_first = episode.summarize(result, np.array([1, 0, 0, 0, 0, 1], bool))  # mask further; padding stays out
  assert only_first["all"]["agents"] == 1


def test_wilson_interval_reference_values():
  # 2 failures of 32: 95% Wilson [0.0173, 0.2015]; 0 of 10: [0, z^2 / (n + z^2)] = [0, 0.2775]; all of n mirrors 0.
  lo, hi = episode.wilson_interval(2, 32)
  np.testing.assert_allclose([lo, hi], [0.0173, 0.2015], atol=2e-4)
  np.testing.assert_allclose(episode.wilson_interval(0, 10), [0.0, 1.96**2 / (10 + 1.96**2)], atol=1e-9)
  np.testing.assert_allclose(episode.wilson_interval(10, 10), [1 - 1.96**2 / (10 + 1.96**2), 1.0], atol=1e-9)
  assert episode.wilson_interval(0, 0) is None


def test_failure_attribution_partner_rear_end_and_after_goal():
  """Object 0 (controlled) is run into from behind by object 1 (replayed, 2 m/s faster) at step 5; controlled
  objects 2 and 3 (3 ahead of 2) collide at step 2; object 4 reaches its goal at step 3 and leaves its route at
  step 6."""
  sc = _scene()
  sc = sc.replace(objects=sc.objects.replace(length=np.full(O, 4.5, np.float32), width=np.full(O, 2.0, np.float32)))
  s = np.arange(S, dtype=np.float32)[:, None]
  x = np.concatenate([10 + s, 7 + s, 10 + s, 13 + s, 10 + s, 500 + s], 1)  # (S, O)
  y = np.tile(np.array([0.0, 0.0, 20.0, 20.0, 40.0, 80.0], np.float32), (S, 1))
  zeros = np.zeros((S, O), np.float32)
  valid = np.ones((S, O), bool)
  valid[:, 5] = False
  vx = np.tile(np.array([10.0, 12.0, 10.0, 10.0, 10.0, 10.0], np.float32), (S, 1))  # 1 closes in on 0
  objects = ObjectState(x=x, y=y, yaw=zeros, vel_x=vx, vel_y=zeros, valid=valid, accel_mps2=zeros, steer_rad=zeros)
  kw = {f.name: np.zeros((S, O), np.float32) for f in dataclasses.fields(metrics.StepMetrics)}
  kw.update({f: np.zeros((S, O), bool) for f in episode.STEP_FLAGS}, valid=valid)
  kw.update(overlap=_flags(o0=[5, 6], o1=[5, 6], o2=[2, 3], o3=[2, 3]), goal_reached=_flags(o4=[3]),
            offroute=_flags(o4=[6, 7]))
  controlled = np.array([1, 0, 1, 1, 1, 0], bool)
  fn = jax.jit(lambda m, ob, ev, sc_, c: episode.episode_metrics(m, ob, ev, sc_, CFG, c))
  r = jax.tree.map(np.asarray, fn(metrics.StepMetrics(**kw), objects, controlled, sc, controlled))
  assert r.first_collision_step.tolist() == [5, S, 2, 2, S, S]  # object 1 is not scored (replayed)
  assert r.collision_partner.tolist() == [1, -1, 3, 2, -1, -1]
  assert r.collision_with_controlled.tolist() == [0, 0, 1, 1, 0, 0]
  assert r.rear_ended_by_log.tolist() == [1, 0, 0, 0, 0, 0]  # 3 is hit from behind too, but by a controlled car
  assert r.failed_after_goal.tolist() == [0, 0, 0, 0, 1, 0]
  rows = episode.summarize(r)["all"]
  assert rows["rear_ended_by_log"] == {"rate": 0.25, "count": 1, "total": 4}
  assert rows["collision_with_controlled"]["count"] == 2 and rows["failed_after_goal"]["count"] == 1
  # a record from before the attribution existed still summarizes, without those rates
  old = {k: v for k, v in episode.as_dict(r).items() if k not in episode.ATTRIBUTION_METRICS}
  assert "rear_ended_by_log" not in episode.summarize(old)["all"]


def test_rear_end_needs_the_replayed_car_to_close_in():
  """The same overlap of object 0 with replayed object 1 behind it, but 1 slower (the agent cut in or backed into
  it): a collision, not a rear-end by the log."""
  sc = _scene()
  sc = sc.replace(objects=sc.objects.replace(length=np.full(O, 4.5, np.float32), width=np.full(O, 2.0, np.float32)))
  s = np.arange(S, dtype=np.float32)[:, None]
  x = np.concatenate([10 + s, 7 + s, 100 + s, 200 + s, 300 + s, 500 + s], 1)
  zeros = np.zeros((S, O), np.float32)
  valid = np.ones((S, O), bool)
  vx = np.tile(np.array([10.0, 8.0, 10.0, 10.0, 10.0, 10.0], np.float32), (S, 1))
  objects = ObjectState(x=x, y=zeros, yaw=zeros, vel_x=vx, vel_y=zeros, valid=valid, accel_mps2=zeros,
                        steer_rad=zeros)
  kw = {f.name: np.zeros((S, O), np.float32) for f in dataclasses.fields(metrics.StepMetrics)}
  kw.update({f: np.zeros((S, O), bool) for f in episode.STEP_FLAGS}, valid=valid, overlap=_flags(o0=[5], o1=[5]))
  controlled = np.array([1, 0, 0, 0, 0, 0], bool)
  r = jax.tree.map(np.asarray, jax.jit(lambda m, ob, ev, sc_, c: episode.episode_metrics(m, ob, ev, sc_, CFG, c))(
      metrics.StepMetrics(**kw), objects, controlled, sc, controlled))
  assert r.collision.tolist()[0] and r.collision_partner.tolist()[0] == 1
  assert not r.rear_ended_by_log[0] and not r.collision_with_controlled[0]
