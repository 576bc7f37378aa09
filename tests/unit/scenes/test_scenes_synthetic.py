"""Synthetic scenes: reproducible, collision-free, on road, lawful at lights, kinematically plausible.

The checks here are written independently of the generator: box overlap by projecting corners (the generator
uses projection radii), on-road by Waymax's nearest road-edge POINT rule (the generator uses edge segments),
red lights from the padded arrays and the lane directions in the road points.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from shared.scenes import synthetic, types

NUM_SEEDS = 30
SCENE_CONFIG = types.SceneConfig(max_objects=48, max_road_points=6000, max_tl_lanes=16)


@pytest.fixture(scope="module")
def scenes():
  return synthetic.generate_many(NUM_SEEDS, seed=0, scene_config=SCENE_CONFIG)


def _corners(x, y, yaw, length, width):
  """(..., 4, 2) box corners; length/width broadcast against x."""
  c, s = np.cos(yaw), np.sin(yaw)
  out = []
  for sl, sw in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
    dx, dy = 0.5 * sl * length, 0.5 * sw * width
    out.append(np.stack([x + c * dx - s * dy, y + s * dx + c * dy], -1))
  return np.stack(out, -2)


def _overlap(ca, cb):
  """Corner-projection SAT for box pairs: ca, cb (..., 4, 2) -> (...,) True where the boxes overlap."""
  sep = np.zeros(ca.shape[:-2], bool)
  for box in (ca, cb):
    for k in range(2):
      edge = box[..., k + 1, :] - box[..., k, :]
      axis = np.stack([-edge[..., 1], edge[..., 0]], -1)[..., None, :]
      pa, pb = (ca * axis).sum(-1), (cb * axis).sum(-1)
      sep |= (pa.max(-1) < pb.min(-1)) | (pb.max(-1) < pa.min(-1))
  return ~sep


def test_overlap_helper_on_hand_made_boxes():
  # Two 4 x 2 boxes 3.9 m apart along x overlap by 0.1 m; 4.1 m apart they do not; rotated 90 deg the second
  # one is 2 m long in x, so 3.1 m apart they are clear (2 + 1 = 3 < 3.1).
  a = _corners(np.array(0.0), np.array(0.0), np.array(0.0), 4.0, 2.0)
  for dx, yaw, expect in ((3.9, 0.0, True), (4.1, 0.0, False), (3.1, np.pi / 2, False), (2.9, np.pi / 2, True)):
    b = _corners(np.array(dx), np.array(0.0), np.array(yaw), 4.0, 2.0)
    assert bool(_overlap(a, b)) is expect, (dx, yaw)


def test_same_seed_same_arrays_different_seed_different_scene():
  a, ma = synthetic.generate(7, scene_config=SCENE_CONFIG)
  b, mb = synthetic.generate(7, scene_config=SCENE_CONFIG)
  for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert la.dtype == lb.dtype and np.array_equal(la, lb)
  assert ma == mb
  c, mc = synthetic.generate(8, scene_config=SCENE_CONFIG)
  assert mc.scenario_id != ma.scenario_id
  assert not np.array_equal(a.objects.x, c.objects.x)


def test_generate_many_is_generate_of_consecutive_seeds(scenes):
  sc, meta = synthetic.generate(3, scene_config=SCENE_CONFIG)
  assert meta == scenes[3][1]
  assert np.array_equal(sc.objects.y, scenes[3][0].objects.y)


def test_every_layout_appears(scenes):
  kinds = {m.scenario_id.split("-")[-1] for _, m in scenes}
  assert kinds == set(synthetic.LAYOUTS)


def test_no_two_vehicle_boxes_overlap(scenes):
  pairs = 0
  for sc, meta in scenes:
    o = sc.objects
    c = _corners(o.x, o.y, o.yaw, o.length[:, None], o.width[:, None])  # (O, T, 4, 2)
    both = o.valid[:, None] & o.valid[None, :] & np.triu(np.ones((len(o.x),) * 2, bool), 1)[..., None]
    i, j, t = np.nonzero(both)
    hit = _overlap(c[i, t], c[j, t])
    pairs += len(i)
    assert not hit.any(), f"{meta.scenario_id}: vehicles {i[hit][0]} and {j[hit][0]} overlap at t={t[hit][0]}"
  assert pairs > 30_000  # ~1,000+ pairs-steps per scene were really compared


def _edge_signed_distance(roads, pts):
  """Waymax's rule: nearest road-edge point, sign from its direction (and its predecessor's), > 0 off road."""
  edge = roads.valid & np.isin(roads.map_type, types.MAP_ROAD_EDGE_IDS)
  ex, ey, dx, dy, eid = (a[edge] for a in (roads.x, roads.y, roads.dir_x, roads.dir_y, roads.element_id))
  rx, ry = pts[:, 0:1] - ex, pts[:, 1:2] - ey
  k = np.argmin(rx * rx + ry * ry, axis=1)
  prior = np.maximum(k - 1, 0)
  px, py = rx[np.arange(len(k)), k], ry[np.arange(len(k)), k]
  cross = px * dy[k] - py * dx[k]
  cross_prior = px * dy[prior] - py * dx[prior]
  use_prior = (eid[prior] == eid[k]) & (cross_prior < cross)
  return np.hypot(px, py) * np.sign(np.where(use_prior, cross_prior, cross))


def test_every_box_corner_is_on_road(scenes):
  worst = []
  for sc, meta in scenes:
    o = sc.objects
    c = _corners(o.x, o.y, o.yaw, o.length[:, None], o.width[:, None])[o.valid].reshape(-1, 2)
    d = _edge_signed_distance(sc.roads, c)
    worst.append(d.max())
    assert d.max() <= 0.0, f"{meta.scenario_id}: a corner is {d.max():.2f} m off road"
  assert max(worst) < -0.05  # some slack left in every scene


def test_vehicles_follow_lane_centres(scenes):
  # Box centres sit on a lane polyline (sampled every 1 m, so within 0.5 m of a lane point plus float error).
  for sc, meta in scenes:
    o, r = sc.objects, sc.roads
    lane = r.valid & np.isin(r.map_type, types.MAP_LANE_IDS)
    p = np.stack([o.x[o.valid], o.y[o.valid]], -1)
    d = np.sqrt(((p[:, None, 0] - r.x[lane]) ** 2 + (p[:, None, 1] - r.y[lane]) ** 2).min(1))
    assert d.max() < 0.55, meta.scenario_id


def test_vehicles_move_and_kinematics_are_plausible(scenes):
  dt = types.WOMD_DT_S
  for sc, meta in scenes:
    o = sc.objects
    speed = np.hypot(o.vel_x, o.vel_y)
    assert speed[o.valid].mean() > 2.0, meta.scenario_id
    pair = o.valid[:, 1:] & o.valid[:, :-1]
    accel = np.diff(speed, axis=1) / dt
    assert np.abs(accel[pair]).max() <= 6.0 + 1e-3, meta.scenario_id
    yaw_rate = (np.diff(o.yaw, axis=1) + np.pi) % (2 * np.pi) - np.pi
    assert np.abs(yaw_rate[pair]).max() / dt < 1.0, meta.scenario_id  # measured max 0.71 rad/s over 40 seeds
    moving = o.valid & (speed > 1.0)
    heading = np.arctan2(o.vel_y, o.vel_x)
    err = np.abs((heading - o.yaw + np.pi) % (2 * np.pi) - np.pi)
    assert err[moving].max() < 1e-3, meta.scenario_id
    # Displacement over a step matches the mean of the two logged speeds (trapezoidal integration, curved paths).
    step = np.hypot(np.diff(o.x, axis=1), np.diff(o.y, axis=1)) / dt
    mean_v = 0.5 * (speed[:, 1:] + speed[:, :-1])
    assert np.abs(step - mean_v)[pair].max() < 0.2, meta.scenario_id


def _light_lane_frame(sc, li):
  """Stop point and unit direction of the lane a light controls (direction at the lane's last point)."""
  r, lt = sc.roads, sc.lights
  pts = np.nonzero(r.valid & (r.element_id == lt.lane_id[li]))[0]
  last = pts[-1]
  return np.array([lt.stop_x[li], lt.stop_y[li]]), np.array([r.dir_x[last], r.dir_y[last]])


def test_cars_stop_at_red_lights_and_never_run_them(scenes):
  stops_seen, lit_scenes = 0, 0
  for sc, meta in scenes:
    lt, o = sc.lights, sc.objects
    lanes = np.nonzero(lt.valid.any(1))[0]
    lit_scenes += bool(len(lanes))
    speed = np.hypot(o.vel_x, o.vel_y)
    for li in lanes:
      stop, d = _light_lane_frame(sc, li)
      rel_x, rel_y = o.x - stop[0], o.y - stop[1]
      lon = rel_x * d[0] + rel_y * d[1]  # along the lane, 0 at the stop line
      lat = -rel_x * d[1] + rel_y * d[0]
      aligned = (np.cos(o.yaw) * d[0] + np.sin(o.yaw) * d[1]) > 0.9
      on_lane = o.valid & aligned & (np.abs(lat) < 1.0)
      front = lon + 0.5 * o.length[:, None]
      red = lt.state[li] == types.TL_STATE_IDS["stop"]
      crossed = on_lane[:, 1:] & on_lane[:, :-1] & (front[:, :-1] < 0.0) & (front[:, 1:] >= 0.0) & red[None, 1:]
      assert not crossed.any(), f"{meta.scenario_id}: a car runs red light {li}"
      stopped = on_lane & red[None, :] & (speed < 0.3) & (front < 0.0) & (front > -3.0)
      stops_seen += int(stopped.any(1).sum())
  assert lit_scenes >= 5
  assert stops_seen >= 3  # cars wait with their front within 3 m of the stop line while the light is red


def test_objects_sdc_goals_and_late_entries(scenes):
  late = left = 0
  for sc, meta in scenes:
    o = sc.objects
    n = int(o.exists.sum())
    assert 4 <= n <= SCENE_CONFIG.max_objects and meta.cut_objects == 0
    assert o.is_sdc.sum() == 1 and o.valid[meta.sdc_index, types.WOMD_INIT_STEP]
    assert (o.controllable == o.exists).all() and (o.object_type[:n] == types.TYPE_VEHICLE).all()
    assert ((o.length[:n] >= 4.0) & (o.length[:n] <= 9.0) & (o.width[:n] >= 1.8) & (o.width[:n] <= 2.5)).all()
    last = o.x.shape[1] - 1 - np.argmax(o.valid[:n, ::-1], axis=1)
    assert np.allclose(o.goal_x[:n], o.x[np.arange(n), last]) and np.allclose(o.goal_y[:n], o.y[np.arange(n), last])
    first = np.argmax(o.valid[:n], axis=1)
    late += int((first > 0).sum())
    left += int((last < o.x.shape[1] - 1).sum())
    # Validity is one contiguous run per vehicle: it enters once and leaves once.
    assert (np.diff(o.valid[:n].astype(int), axis=1) != 0).sum(1).max() <= 2
  assert late >= 10 and left >= 10


def test_road_points_types_and_spacing(scenes):
  for sc, meta in scenes:
    r = sc.roads
    kind = meta.scenario_id.split("-")[-1]
    present = set(np.unique(r.map_type[r.valid]).tolist())
    assert {types.MAP_LANE_SURFACE_STREET, 12, types.MAP_ROAD_EDGE_BOUNDARY} <= present, kind
    assert (types.MAP_CROSSWALK in present) == (kind == "four_way")
    assert (types.MAP_STOP_SIGN in present) == (kind == "t_junction")
    assert bool(sc.lights.valid.any()) == (kind == "four_way")
    same = r.valid[1:] & r.valid[:-1] & (r.element_id[1:] == r.element_id[:-1]) & np.isin(r.map_type[1:], (2, 6, 12, 15))
    gaps = np.hypot(np.diff(r.x), np.diff(r.y))[same]
    assert gaps.max() <= 1.01 and gaps.min() >= 0.2, kind


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="seed"):
    synthetic.generate_raw(-1)
  with pytest.raises(ValueError, match="num_timesteps"):
    synthetic.generate(0, scene_config=dataclasses.replace(SCENE_CONFIG, num_timesteps=80))


def test_cli_generate_writes_shards_that_load_back_identical(tmp_path):
  import argparse

  from services.cli import scenes_synth
  from shared.scenes import native

  parser = argparse.ArgumentParser()
  scenes_synth.register(parser.add_subparsers())
  argv = ["generate", "--num", "3", "--seed", "11", "--out", str(tmp_path), "--shard-size", "2",
          "--max-objects", str(SCENE_CONFIG.max_objects), "--max-road-points", str(SCENE_CONFIG.max_road_points)]
  args = parser.parse_args(argv)
  assert args.func(args) == 0
  shards = sorted(tmp_path.glob(f"*{native.SHARD_SUFFIX}"))
  assert [p.name for p in shards] == ["scenes-00000.dlshard.npz", "scenes-00001.dlshard.npz"]
  loaded = []
  for p in shards:
    batch, metas, config = native.read_shard(p)
    assert config == SCENE_CONFIG
    loaded += list(zip(types.unstack(batch), metas))
  assert len(loaded) == 3
  for k, (sc, meta) in enumerate(loaded):
    ref, ref_meta = synthetic.generate(11 + k, scene_config=SCENE_CONFIG)
    assert meta == ref_meta
    for a, b in zip(jax.tree.leaves(sc), jax.tree.leaves(ref)):
      assert np.array_equal(a, b)
  args = parser.parse_args(argv)
  assert args.func(args) == 1  # refuses to mix with shards already there unless --overwrite


def test_cars_stop_a_second_at_stop_signs_before_going(scenes):
  # A stop sign stands 1 m outside the kerb, level with the stop line, on the right of the approaching cars.
  checked = 0
  for sc, meta in scenes:
    r, o = sc.roads, sc.objects
    signs = np.nonzero(r.valid & (r.map_type == types.MAP_STOP_SIGN))[0]
    speed = np.hypot(o.vel_x, o.vel_y)
    for k in signs:
      hx, hy = np.cos(o.yaw), np.sin(o.yaw)
      rx, ry = r.x[k] - o.x, r.y[k] - o.y
      ahead = rx * hx + ry * hy - 0.5 * o.length[:, None]  # stop line minus the car's front, along its heading
      lat = rx * -hy + ry * hx  # > 0: sign on the left
      approach = o.valid & (lat < 0) & (lat > -7.5)
      cross = approach[:, 1:] & approach[:, :-1] & (ahead[:, :-1] > 0) & (ahead[:, 1:] <= 0)
      for i, t in zip(*np.nonzero(cross)):
        first = np.argmax(o.valid[i])
        if t - first < 15:
          continue  # it may have served its stop before the log started
        waited = o.valid[i, :t + 1] & (speed[i, :t + 1] < 0.3) & (ahead[i, :t + 1] < 3.0)
        assert waited.sum() >= 10, f"{meta.scenario_id}: vehicle {i} rolls through stop sign {k} at t={t}"
        checked += 1
  assert checked >= 3
