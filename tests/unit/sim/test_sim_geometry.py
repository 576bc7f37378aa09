"""Geometry: boxes, separating-axis gaps, exact box distances, road-edge signed distance, road candidates, log-path
projection. Hand-computed numbers, plus the candidate search and off-road sign checked against brute force and the
Waymax's reference rates on the real scenes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.scenes import gpudrive, padding, types
from shared.sim import geometry
from shared.sim import log_path


def _gap(a, b):
  """SAT gap of two boxes given as (x, y, yaw, length, width) tuples."""
  arr = [jnp.asarray([a[i], b[i]], jnp.float32) for i in range(5)]
  return float(geometry.pairwise_sat_gap(*arr)[0, 1])


def _dist(a, b):
  ca = geometry.box_corners(*[jnp.float32(v) for v in a])
  cb = geometry.box_corners(*[jnp.float32(v) for v in b])
  return float(geometry.box_distance(ca, cb, jnp.asarray(_gap(a, b) < 0)))


def test_box_corners_rotated_90_degrees():
  # Box at (1, 2), 4 x 2, heading +y: front-left = centre + 2*(0,1) + 1*(-1,0) = (0, 4), counter-clockwise after.
  c = np.asarray(geometry.box_corners(jnp.float32(1), jnp.float32(2), jnp.float32(math.pi / 2), jnp.float32(4),
                                      jnp.float32(2)))
  np.testing.assert_allclose(c, [[0, 4], [0, 0], [2, 0], [2, 4]], atol=1e-6)


def test_boxes_just_miss_and_overlap_face_to_face():
  a = (0.0, 0.0, 0.0, 4.0, 2.0)
  # 4.5 - 2 - 2 = 0.5 m between the facing sides.
  assert _gap(a, (4.5, 0.0, 0.0, 4.0, 2.0)) == pytest.approx(0.5, abs=1e-6)
  assert _dist(a, (4.5, 0.0, 0.0, 4.0, 2.0)) == pytest.approx(0.5, abs=1e-6)
  # 3.9 - 4 = -0.1: 10 cm of overlap, distance 0.
  assert _gap(a, (3.9, 0.0, 0.0, 4.0, 2.0)) == pytest.approx(-0.1, abs=1e-6)
  assert _dist(a, (3.9, 0.0, 0.0, 4.0, 2.0)) == 0.0


def test_rotated_box_vertex_to_face_and_corner_to_corner():
  a = (0.0, 0.0, 0.0, 4.0, 2.0)
  # A 2x2 square at 45 deg reaches sqrt(2) from its centre along x: centre at 2 + sqrt(2) + 0.3 leaves 0.3 m.
  b = (2.0 + math.sqrt(2.0) + 0.3, 0.0, math.pi / 4, 2.0, 2.0)
  assert _gap(a, b) == pytest.approx(0.3, abs=1e-5)
  assert _dist(a, b) == pytest.approx(0.3, abs=1e-5)
  # Two 2x2 squares at (0,0) and (3,3): nearest corners (1,1)-(2,2), distance sqrt(2); the SAT gap is only a lower
  # bound there (1 on both axes).
  s1, s2 = (0.0, 0.0, 0.0, 2.0, 2.0), (3.0, 3.0, 0.0, 2.0, 2.0)
  assert _gap(s1, s2) == pytest.approx(1.0, abs=1e-6)
  assert _dist(s1, s2) == pytest.approx(math.sqrt(2.0), abs=1e-6)
  # A 45-deg square whose vertex pokes 0.2 m into the long box: overlap.
  assert _gap(a, (2.0 + math.sqrt(2.0) - 0.2, 0.0, math.pi / 4, 2.0, 2.0)) < 0


def test_jit_matches_eager_for_boxes():
  boxes = [jnp.asarray(v, jnp.float32) for v in ([0, 4.5, 3.0], [0, 0, 3.0], [0, 0.3, math.pi / 4], [4, 4, 2],
                                                 [2, 2, 2])]
  eager = geometry.pairwise_sat_gap(*boxes)
  np.testing.assert_allclose(np.asarray(jax.jit(geometry.pairwise_sat_gap)(*boxes)), np.asarray(eager), atol=1e-6)
  c = geometry.box_corners(*boxes)
  f = lambda c, ov: geometry.box_distance(c[:, None], c[None, :], ov)
  np.testing.assert_allclose(np.asarray(jax.jit(f)(c, eager < 0)), np.asarray(f(c, eager < 0)), atol=1e-6)


def _straight_edge_roads(n=41, reverse=False):
  """A road edge along the x axis from -10 to 10 every 0.5 m (direction +x: road on the left, y > 0)."""
  x = np.linspace(-10, 10, n)
  if reverse:
    x = x[::-1]
  y = np.zeros(n)
  eid = np.zeros(n, np.int64)
  dx, dy = padding.road_directions(x, y, eid)
  f = lambda a, d=np.float32: jnp.asarray(a, d)
  return types.RoadPoints(x=f(x), y=f(y), dir_x=f(dx), dir_y=f(dy), map_type=f(np.full(n, 15), np.int32),
                          element_id=f(eid, np.int32), valid=jnp.ones(n, bool))


@jax.jit
def _edge_distance(roads, x, y, corners):
  cand = geometry.nearest_road_points(roads, x, y, 16, num_edge=12, num_stop=2)
  return geometry.road_edge_signed_distance(roads, cand[:, :12], corners)


def test_box_crossing_a_road_edge_has_exact_signed_distance():
  roads = _straight_edge_roads()
  x, y = jnp.asarray([0.0, 0.0, 0.3], jnp.float32), jnp.asarray([1.5, 0.5, -3.0], jnp.float32)
  corners = geometry.box_corners(x, y, jnp.zeros(3), jnp.full(3, 4.0), jnp.full(3, 2.0))
  sd = np.asarray(_edge_distance(roads, x, y, corners))
  # Corners of the car at y=1.5 sit at y=2.5 and 0.5: inside by 0.5 at worst. The car at y=0.5 straddles the edge:
  # its right corners are 0.5 m outside. The car at y=-3 is fully outside: corners 2 and 4 m out.
  np.testing.assert_allclose(sd.max(1), [-0.5, 0.5, 4.0], atol=1e-5)
  np.testing.assert_allclose(np.sort(sd[2]), [2.0, 2.0, 4.0, 4.0], atol=1e-5)
  # Reversing the polyline flips the side.
  rev = _straight_edge_roads(reverse=True)
  sd_r = np.asarray(_edge_distance(rev, x, y, corners))
  np.testing.assert_allclose(sd_r.min(1), [-sd.max(1)[0], -0.5, -4.0], atol=1e-5)


def test_no_edge_candidates_reports_deep_on_road():
  roads = _straight_edge_roads()
  cand = -jnp.ones((1, 4), jnp.int32)
  sd = geometry.road_edge_signed_distance(roads, cand, jnp.zeros((1, 4, 2)))
  np.testing.assert_allclose(np.asarray(sd), geometry.NO_EDGE_DISTANCE_M)


def test_project_on_log_path_straight_line():
  # Logged path along x at 1 m per step, valid steps 0..9; step 4 missing (a gap does not add arc length).
  t = np.arange(10, dtype=np.float32)
  valid = np.ones(10, bool)
  valid[4] = False
  objects = types.ObjectTracks(
      x=jnp.asarray(t[None]), y=jnp.zeros((1, 10)), yaw=jnp.zeros((1, 10)), vel_x=jnp.ones((1, 10)),
      vel_y=jnp.zeros((1, 10)), valid=jnp.asarray(valid[None]), length=jnp.ones(1), width=jnp.ones(1),
      object_type=jnp.ones(1, jnp.int32), object_id=jnp.zeros(1, jnp.int32), is_sdc=jnp.ones(1, bool),
      controllable=jnp.ones(1, bool), exists=jnp.ones(1, bool), goal_x=jnp.full(1, 9.0), goal_y=jnp.zeros(1))
  d, arc, step = log_path.project_on_log_path(objects, jnp.asarray([2.3]), jnp.asarray([0.4]))
  assert float(d[0]) == pytest.approx(0.4, abs=1e-6) and float(arc[0]) == pytest.approx(2.3, abs=1e-6)
  assert int(step[0]) == 2
  # Past the gap: segments 3->4 and 4->5 are missing, so arc length at x=6.5 is 3 (0..3) + 1.5 (5..6.5) = 4.5.
  d, arc, step = log_path.project_on_log_path(objects, jnp.asarray([6.5]), jnp.asarray([-1.0]))
  assert float(d[0]) == pytest.approx(1.0, abs=1e-6) and float(arc[0]) == pytest.approx(4.5, abs=1e-6)


def _tracks(x, y, valid):
  x, y, valid = (np.asarray(a)[None] for a in (x, y, valid))
  n = x.shape[1]
  return types.ObjectTracks(
      x=jnp.asarray(x, jnp.float32), y=jnp.asarray(y, jnp.float32), yaw=jnp.zeros((1, n)), vel_x=jnp.zeros((1, n)),
      vel_y=jnp.zeros((1, n)), valid=jnp.asarray(valid), length=jnp.ones(1), width=jnp.ones(1),
      object_type=jnp.ones(1, jnp.int32), object_id=jnp.zeros(1, jnp.int32), is_sdc=jnp.ones(1, bool),
      controllable=jnp.ones(1, bool), exists=jnp.ones(1, bool), goal_x=jnp.zeros(1), goal_y=jnp.zeros(1))


def test_log_path_continues_past_its_end_along_its_last_moving_segment():
  # Moves along +y at 1 m per step for steps 0..5, then stands still at (0, 5) for steps 6..9 (zero-length
  # segments); step 10 invalid. The route goes on along +y from (0, 5).
  y = np.array([0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 0], np.float32)
  valid = np.arange(11) < 10
  tr = _tracks(np.zeros(11), y, valid)
  d, arc, step = log_path.project_on_log_path(tr, jnp.asarray([0.7]), jnp.asarray([9.0]))
  assert float(d[0]) == pytest.approx(0.7, abs=1e-6) and float(arc[0]) == pytest.approx(9.0, abs=1e-5)
  assert int(step[0]) == 11  # T + 0: the continuation's first segment, from the end (0, 5) straight on
  # Behind the start there is no extension: the distance is to the first point.
  d, arc, _ = log_path.project_on_log_path(tr, jnp.asarray([0.0]), jnp.asarray([-3.0]))
  assert float(d[0]) == pytest.approx(3.0, abs=1e-6) and float(arc[0]) == pytest.approx(0.0, abs=1e-6)
  end = log_path.log_path_end(tr)
  assert int(end.last[0]) == 4 and int(end.last_valid[0]) == 9
  assert (float(end.x[0]), float(end.y[0]), float(end.dir_x[0]), float(end.dir_y[0])) == (0.0, 5.0, 0.0, 1.0)
  assert float(end.step_m[0]) == pytest.approx(5 / 9)  # 5 m over the 9 segments between valid steps
  # A path that never moves has no direction to go on in: distance to its point.
  parked = _tracks(np.full(11, 2.0), np.zeros(11), valid)
  d, _, _ = log_path.project_on_log_path(parked, jnp.asarray([6.0]), jnp.asarray([0.0]))
  assert float(d[0]) == pytest.approx(4.0, abs=1e-6) and int(log_path.log_path_end(parked).last[0]) == -1


def _lane_roads():
  """Lane centre lines (0.5 m apart, as WOMD's): element 1 along +y at x = 0.8 from (0.8, 0) to (0.8, 20); element
  2 a quarter circle of radius 10 turning right from (0.8, 20) to (10.8, 30); element 3 along +x from (10.8, 30) to
  (40.8, 30); element 4 an oncoming lane (-y) at x = -0.3, nearer to the log than element 1; a road edge at x = 3."""
  s = np.arange(0, 20.01, 0.5)
  a = np.arange(0, np.pi / 2 + 1e-6, 0.05)
  e3 = np.arange(0.5, 30.01, 0.5)
  xs = [np.full(s.size, 0.8), 10.8 - 10 * np.cos(a), 10.8 + e3, np.full(s.size, -0.3), np.full(s.size, 3.0)]
  ys = [s, 20 + 10 * np.sin(a), np.full(e3.size, 30.0), s[::-1] + 5, s]
  dirs = [(np.zeros(s.size), np.ones(s.size)), (np.sin(a), np.cos(a)), (np.ones(e3.size), np.zeros(e3.size)),
          (np.zeros(s.size), -np.ones(s.size)), (np.zeros(s.size), np.ones(s.size))]
  kinds = [types.MAP_LANE_SURFACE_STREET] * 4 + [types.MAP_ROAD_EDGE_BOUNDARY]
  cat = lambda parts: jnp.asarray(np.concatenate(parts), jnp.float32)
  n = sum(x.size for x in xs)
  return types.RoadPoints(
      x=cat(xs), y=cat(ys), dir_x=cat([d[0] for d in dirs]), dir_y=cat([d[1] for d in dirs]),
      map_type=jnp.asarray(np.concatenate([np.full(x.size, k) for x, k in zip(xs, kinds)]), jnp.int32),
      element_id=jnp.asarray(np.concatenate([np.full(x.size, i + 1) for i, x in enumerate(xs)]), jnp.int32),
      valid=jnp.ones(n, bool))


def test_log_path_continues_along_the_lanes_past_its_end():
  # The log drives along +y from (0.6, 0) to (0.6, 5) in steps 0..5, then its log ends. Past the end the route
  # follows the lanes that carry on (elements 1, 2, 3: straight, a right turn, then +x), not the oncoming lane
  # (element 4, nearer to the log but heading the other way) and not straight on.
  valid = np.arange(11) < 6
  tr = _tracks(np.full(11, 0.6), np.minimum(np.arange(11), 5.0), valid)
  end = log_path.log_path_end(tr, _lane_roads())
  ext = np.stack([np.asarray(end.ext_x[0]), np.asarray(end.ext_y[0])], -1)
  assert np.all(ext[:3, 0] == pytest.approx(0.8, abs=1e-5))  # on element 1, not the oncoming lane at -0.3
  # A car that took the turn and drives along +x at y = 30.4 is 0.4 m from its route, which goes on along the
  # lanes: arc length 5 (log) + ~15 (element 1) + ~15.7 (the quarter circle) + ~14.2 along element 3.
  d, arc, step = log_path.project_on_log_path(tr, jnp.asarray([25.0]), jnp.asarray([30.4]), end)
  assert float(d[0]) == pytest.approx(0.4, abs=0.05) and int(step[0]) >= 11
  assert float(arc[0]) == pytest.approx(5 + 15 + 5 * np.pi + 14.2, abs=0.5)
  # The straight continuation (no roads given) would put that car 20 m off its route.
  d_straight, _, _ = log_path.project_on_log_path(tr, jnp.asarray([25.0]), jnp.asarray([30.4]))
  assert float(d_straight[0]) > 20.0
  # Past the last lane (element 3 ends at x = 40.8) the route goes straight on along +x.
  d, _, _ = log_path.project_on_log_path(tr, jnp.asarray([80.0]), jnp.asarray([30.0]), end)
  assert float(d[0]) == pytest.approx(0.0, abs=1e-3)
  np.testing.assert_allclose([float(end.ext_dir_x[0]), float(end.ext_dir_y[0])], [1.0, 0.0], atol=1e-5)
  # Points along the continuation: 10 m in is on element 1 (x = 0.8), 40 m in is on element 3 (y = 30).
  cx, cy = log_path.continuation_at(end, jnp.asarray([[10.0, 40.0]]))
  assert float(cx[0, 0]) == pytest.approx(0.8, abs=0.05) and float(cy[0, 1]) == pytest.approx(30.0, abs=0.05)


def test_end_direction_ignores_a_stopping_cars_last_jitter():
  # A car drives +x, then creeps 1 cm sideways as it stops: the direction driven is still +x.
  x = np.array([0, 1, 2, 3, 4, 5, 5.0, 5.0, 5.0, 5.0, 5.0])
  y = np.array([0, 0, 0, 0, 0, 0, 0.01, 0.01, 0.01, 0.01, 0.01])
  end = log_path.log_path_end(_tracks(x, y, np.ones(11, bool)))
  assert int(end.last[0]) == 5  # the 1 cm segment 5 -> 6 is the last one of positive length
  assert float(end.dir_x[0]) == pytest.approx(1.0, abs=1e-3) and abs(float(end.dir_y[0])) < 0.01


@pytest.fixture(scope="module")
def real_scene(real_scene_files):
  sc, meta = gpudrive.read_scene(str(real_scene_files[2]), types.SceneConfig(max_objects=64, max_road_points=12000))
  return jax.tree.map(jnp.asarray, sc), meta


def test_chunk_search_matches_brute_force_on_a_real_map(real_scene):
  sc, _ = real_scene
  o, roads = sc.objects, sc.roads
  x, y, v = o.x[:, 10], o.y[:, 10], np.asarray(o.valid[:, 10])
  other = roads.valid & ~jnp.isin(roads.map_type, geometry.EDGE_IDS) & (roads.map_type != types.MAP_STOP_SIGN)
  first_other = geometry.edge_slots(64) + geometry.NUM_STOP
  fast = np.asarray(geometry.nearest_road_points(roads, x, y, 64))[:, first_other:]
  ref = np.asarray(geometry.brute_force_nearest(roads.replace(valid=other), x, y, 64 - first_other))
  rx, ry, qx, qy = np.asarray(roads.x), np.asarray(roads.y), np.asarray(x)[:, None], np.asarray(y)[:, None]
  d = lambda idx: np.hypot(rx[idx] - qx, ry[idx] - qy)
  # Same distances (ties between equidistant points may swap indices).
  np.testing.assert_allclose(np.sort(d(fast)[v], 1), np.sort(d(ref)[v], 1), atol=1e-4)


def test_offroad_sign_matches_brute_force_on_a_real_map(real_scene):
  sc, _ = real_scene
  o, roads = sc.objects, sc.roads
  for t in (10, 50, 90):
    cand = geometry.nearest_road_points(roads, o.x[:, t], o.y[:, t], 64)
    corners = geometry.box_corners(o.x[:, t], o.y[:, t], o.yaw[:, t], o.length, o.width)
    ours = np.asarray(geometry.road_edge_signed_distance(roads, cand[:, :geometry.edge_slots(64)], corners))
    ref = np.asarray(geometry.brute_force_edge_distance(roads, corners))
    v = np.asarray(o.valid[:, t])
    # Off-road decisions agree for every valid object; distances agree to the point spacing (segment vs point).
    np.testing.assert_array_equal((ours.max(1) > 0)[v], (ref.max(1) > 0)[v])
    assert np.abs(ours - ref)[v].max() < 0.26


def _sat_gap_by_projection(x, y, yaw, length, width):
  """Reference SAT gap (O, O) in numpy: project both boxes' corners on the 4 edge normals (float64)."""
  c = np.stack([np.asarray(geometry.box_corners(*[jnp.float32(v[i]) for v in (x, y, yaw, length, width)]),
                           np.float64) for i in range(len(x))])
  gap = np.full((len(x), len(x)), -np.inf)
  for i in range(len(x)):
    for j in range(len(x)):
      for k in (i, j):
        for ax in (np.array([np.cos(yaw[k]), np.sin(yaw[k])]), np.array([-np.sin(yaw[k]), np.cos(yaw[k])])):
          pi, pj = c[i] @ ax, c[j] @ ax
          gap[i, j] = max(gap[i, j], max(pi.min() - pj.max(), pj.min() - pi.max()))
  return gap


def test_closed_form_sat_gap_matches_corner_projection():
  rng = np.random.default_rng(0)
  n = 12
  boxes = [rng.uniform(-5, 5, n), rng.uniform(-5, 5, n), rng.uniform(-np.pi, np.pi, n), rng.uniform(0.5, 6, n),
           rng.uniform(0.5, 3, n)]
  ref = _sat_gap_by_projection(*boxes)
  got = np.asarray(geometry.pairwise_sat_gap(*[jnp.asarray(b, jnp.float32) for b in boxes]), np.float64)
  off = ~np.eye(n, dtype=bool)
  np.testing.assert_allclose(got[off], ref[off], atol=1e-4)
  assert ((got < 0) == (ref < 0))[off].all() and (ref[off] < 0).sum() >= 4  # some overlap, some not
  np.testing.assert_array_equal(got, got.T)  # symmetric by construction
  # Rows of a subset against all boxes equal the same rows of the full matrix.
  rows = np.array([3, 7])
  sub = geometry.sat_gap(tuple(jnp.asarray(b[rows], jnp.float32) for b in boxes),
                         tuple(jnp.asarray(b, jnp.float32) for b in boxes))
  np.testing.assert_array_equal(np.asarray(sub), got[rows])


def test_road_index_search_matches_brute_force_for_every_group(real_scene):
  sc, _ = real_scene
  o, roads = sc.objects, sc.roads
  index = jax.jit(geometry.build_road_index)(roads)
  p = roads.x.shape[0]
  is_edge = jnp.isin(roads.map_type, geometry.EDGE_IDS) & roads.valid
  groups = {"edge": (0, 44, is_edge & (jnp.arange(p) % geometry.EDGE_STRIDE == 0)),
            "stop": (44, 46, (roads.map_type == types.MAP_STOP_SIGN) & roads.valid),
            "other": (46, 64, roads.valid & ~is_edge & (roads.map_type != types.MAP_STOP_SIGN))}
  rx, ry = np.asarray(roads.x), np.asarray(roads.y)
  search = jax.jit(lambda x, y: geometry.nearest_road_points(roads, x, y, 64, index=index))
  for t in (10, 60):
    x, y, v = o.x[:, t], o.y[:, t], np.asarray(o.valid[:, t])
    fast = np.asarray(search(x, y))
    assert (np.asarray(index.perm)[:p].min() == 0) and len(set(np.asarray(index.perm)[:p])) == p  # a permutation
    for name, (a, b, mask) in groups.items():
      ref = np.asarray(geometry.brute_force_nearest(roads.replace(valid=mask), x, y, b - a))
      d = lambda idx: np.where(idx >= 0, np.hypot(rx[idx] - np.asarray(x)[:, None], ry[idx] - np.asarray(y)[:, None]),
                               np.inf)
      # Nearest first, and the same distances as brute force (ties between equidistant points may swap indices).
      got = d(fast[:, a:b])[v]
      assert (np.diff(np.where(np.isfinite(got), got, 1e9), axis=1) >= -1e-6).all(), name
      np.testing.assert_allclose(got, d(ref)[v], atol=1e-4, err_msg=name)
      np.testing.assert_array_equal(fast[:, a:b][v] >= 0, ref[v] >= 0)


def test_packed_argmin_matches_argmin_on_distinct_values():
  # Distinct non-negative values (apart in more than the packed low bits), +inf entries and an all-inf row.
  rng = np.random.default_rng(0)
  vals = rng.permutation(np.arange(1, 89, dtype=np.float32))[None].repeat(64, 0) * rng.uniform(0.5, 9, (64, 1))
  vals = np.where(rng.uniform(size=vals.shape) < 0.3, np.inf, vals).astype(np.float32)
  vals[3] = np.inf
  vals[5, 7] = 0.0  # exact zero (and -0.0 below) are the smallest
  vals[6, 9] = -0.0
  got = np.asarray(geometry.packed_argmin_nonneg(jnp.asarray(vals)))
  np.testing.assert_array_equal(got, np.argmin(vals, -1))
  assert got[3] == 0 and got[5] == 7 and got[6] == 9
