"""Inverse dynamics: exact recovery on a model-generated track, gap masks, and open-loop replay of the 10 real scenes.

Reference to beat on the real scenes (Waymax's bicycle inverse dynamics, open loop): moving vehicles
ADE 2.9 m and 47% ending within 2 m; all vehicles 1.18 m and 79%. Ours measured 0.0027 m (all 165 vehicles valid
over t=10..90, error averaged over the 80 simulated steps) and 0.0056 m (67 moving), 100% within 2 m; the
thresholds below leave ~4x headroom. Steering-rate mode (paper 002's 71 x 13 grid): 0.019 m / 0.045 m.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from shared.scenes import gpudrive, padding, types
from shared.sim import actions, dynamics, inverse

DYN = dynamics.DynamicsConfig()
GRID = actions.ActionGridConfig()
SMALL = types.SceneConfig(max_objects=4, max_road_points=8, max_tl_lanes=1)
REAL = types.SceneConfig(max_objects=100, max_road_points=64, max_tl_lanes=1)  # roads are not used here


def _model_track(accel: float, steer: float, T: int = 91):
  """A 4.5 m car driven by constant (accel, steer) from 5 m/s: the log the model would write (numpy re-derivation of
  the dynamics.py equations: speed and heading first, then move along the new heading)."""
  x = y = yaw = 0.0
  v = 5.0
  rows = []
  for _ in range(T):
    rows.append([x, y, yaw, v * np.cos(yaw), v * np.sin(yaw)])
    v += accel * 0.1
    yaw += np.tan(steer) / (0.6 * 4.5) * v * 0.1
    x, y = x + v * np.cos(yaw) * 0.1, y + v * np.sin(yaw) * 0.1
  return np.array(rows)


def _scene_from_track(track: np.ndarray, valid: np.ndarray) -> types.Scenario:
  raw = padding.empty_raw("track", track.shape[0])
  raw.x, raw.y, raw.yaw, raw.vel_x, raw.vel_y = (track[None, :, i] for i in range(5))
  raw.valid = valid[None]
  raw.length, raw.width = np.array([4.5]), np.array([2.0])
  raw.object_type, raw.object_id = np.array([types.TYPE_VEHICLE]), np.array([7])
  raw.is_sdc, raw.controllable = np.array([True]), np.array([True])
  raw.goal_x, raw.goal_y = track[-1:, 0], track[-1:, 1]
  return padding.pad_scene(raw, SMALL)[0]


@pytest.fixture(scope="module")
def infer_small():
  return jax.jit(lambda s: inverse.infer_expert_actions(s, DYN, GRID))


def test_recovers_the_generating_actions_and_masks_gaps(infer_small):
  track = _model_track(accel=0.5, steer=0.1)
  valid = np.ones(91, bool)
  valid[40] = False  # a one-step hole in the log
  ea = infer_small(_scene_from_track(track, valid))
  ok = np.asarray(ea.valid[0])
  # Transitions 39->40 and 40->41 touch the hole; padding objects have no valid transition.
  assert not ok[39] and not ok[40] and ok.sum() == 88 and not np.asarray(ea.valid[1:]).any()
  # Through the hole the model tracks the straight chord between 39 and 41, so step 41 corrects a little; every
  # other valid step recovers the generating actions.
  exact = ok.copy()
  exact[41] = False
  np.testing.assert_allclose(np.asarray(ea.accel_mps2[0])[exact], 0.5, atol=2e-3)
  np.testing.assert_allclose(np.asarray(ea.steer[0])[exact], 0.1, atol=1e-3)
  # The hole is tracked, not coasted: over steps 39..41 the actions average to the generating ones
  # (measured: accel 0.744, 0.000, 0.756; steer 0.149, 0.000, 0.149).
  np.testing.assert_allclose(np.asarray(ea.accel_mps2[0, 39:42]).mean(), 0.5, atol=0.01)
  np.testing.assert_allclose(np.asarray(ea.steer[0, 39:42]).mean(), 0.1, atol=0.002)
  # Grid expert: accels -4 + 4/3 i, steers -0.6 + 0.1 j; (0.5, 0.1) lies between rows 3*13+7 = 46 and 4*13+7 = 59.
  assert set(np.unique(np.asarray(ea.grid_index[0])[ok])) <= {46, 59}


def test_reversing_is_negative_speed_not_a_half_turn(infer_small):
  # A car backing up along -x at 1.5 m/s while its yaw (and logged heading) stays 0.
  t = np.arange(91) * 0.1
  track = np.stack([-1.5 * t, np.zeros(91), np.zeros(91), np.full(91, -1.5), np.zeros(91)], 1)
  ea = infer_small(_scene_from_track(track, np.ones(91, bool)))
  np.testing.assert_allclose(np.asarray(ea.accel_mps2[0, :90]), 0.0, atol=1e-3)
  np.testing.assert_allclose(np.asarray(ea.steer[0, :90]), 0.0, atol=1e-5)


@pytest.fixture(scope="module")
def real_batch(real_scene_files):
  scenes = [gpudrive.read_scene(str(f), REAL)[0] for f in real_scene_files]
  assert len(scenes) == 10
  return types.stack(scenes)


def _replay_errors(batch, grid_cfg):
  infer = jax.vmap(lambda s: inverse.infer_expert_actions(s, DYN, grid_cfg))
  replay = jax.vmap(lambda s, e: inverse.replay_open_loop(s, e, DYN, grid_cfg))
  xs, ys = jax.jit(lambda b: replay(b, infer(b)))(batch)
  o = batch.objects
  # Simulated steps t = 11..90 (column 0 is the logged start).
  err = np.hypot(np.asarray(xs) - o.x[:, :, 10:], np.asarray(ys) - o.y[:, :, 10:])[..., 1:]  # (B, O, 80)
  keep = o.valid[:, :, 10:].all(-1) & (o.object_type == types.TYPE_VEHICLE)
  moving = ((np.hypot(o.vel_x, o.vel_y) > 1.0) & o.valid).any(-1)
  return err, keep, moving


def test_real_scenes_open_loop_replay_matches_the_log(real_batch):
  err, keep, moving = _replay_errors(real_batch, GRID)
  assert keep.sum() == 165 and (keep & moving).sum() == 67
  ade_all = err[keep].mean()
  ade_moving = err[keep & moving].mean()
  within = (err[keep][:, -1] < 2.0).mean()
  print(f"continuous replay: ADE all {ade_all:.4f} m, moving {ade_moving:.4f} m, within 2 m {within:.1%}")
  assert ade_all < 0.01 and ade_moving < 0.02 and within == 1.0  # task bound: 0.5 m; Waymax: 1.18 / 2.9 m
  assert err[keep].max() < 0.5  # no single vehicle drifts either


@pytest.mark.slow
def test_real_scenes_steering_rate_mode(real_batch):
  rate = actions.ActionGridConfig(accel=(-4.0, 3.0, 71), mode="steering_rate")
  err, keep, moving = _replay_errors(real_batch, rate)
  ade_all, ade_moving = err[keep].mean(), err[keep & moving].mean()
  print(f"steering-rate replay: ADE all {ade_all:.4f} m, moving {ade_moving:.4f} m")
  assert ade_all < 0.05 and ade_moving < 0.1  # measured 0.019 / 0.045 m (rate cap 4 rad/s)
