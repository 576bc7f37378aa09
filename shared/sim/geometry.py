"""Geometry for one scene: oriented boxes, box-box gaps and distances, point-segment distances, road candidates.

Shapes: O objects, P road points, K road candidates per object. Boxes are (x, y, yaw, length, width) with the centre
at (x, y). All functions are jit/vmap friendly; a batch of scenes adds a leading axis through `jax.vmap`.

Cost model. A scene has up to ~40k road points; per step we only touch each object's K candidates
(`nearest_road_points`, called at reset and every few steps). The candidate search itself is two-level so it does
not pay a top_k over O x P either: road points are sorted along a Z-order curve (one uint32 sort per scene),
grouped into chunks of `CHUNK` consecutive sorted points (spatially compact), each object ranks chunks by a lower
bound on the distance to any of their points, and only the points of its k best chunks are ranked exactly. On the
real scenes this returns exactly the brute-force k nearest for every object tested.

Off-road sign convention (checked on the real scenes, see tests/unit/sim/test_sim_geometry.py): WOMD road-edge
polylines have the drivable road on their LEFT. A point to the right of its nearest road-edge segment is off-road;
`road_edge_signed_distance` is positive there (Waymax's convention: offroad iff distance > 0). With candidates
refreshed every step, off-road decisions equal a brute-force search over every edge point for every valid vehicle
at every step of the 10 real logs; on log replay 40.6% of vehicles valid at t=10 are ever off-road (95 of 234,
almost all parked; moving vehicles 1 of 86 = 1.2%), Waymax's own figures on the same logs.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from shared.scenes import types

NUM_STOP = 2  # stop-sign slots per object (after the edge slots)
CHUNK = 16  # road points per chunk in the two-level candidate search
EDGE_STRIDE = 2  # edge candidates are every 2nd point; chords of 1 m deviate <= 1.3 cm from a 10 m-radius curb
NO_EDGE_DISTANCE_M = -100.0  # signed distance reported when no road edge is among the candidates (deep on-road)
EDGE_IDS = jnp.asarray(types.MAP_ROAD_EDGE_IDS)


def box_corners(x, y, yaw, length, width):
  """Corners (..., 4, 2) of oriented boxes, counter-clockwise from front-left; inputs (...,)."""
  c, s = jnp.cos(yaw), jnp.sin(yaw)
  hl, hw = length / 2.0, width / 2.0
  # Local corner offsets in box frame: front-left, rear-left, rear-right, front-right (counter-clockwise).
  lx = jnp.stack([hl, -hl, -hl, hl], -1)
  ly = jnp.stack([hw, hw, -hw, -hw], -1)
  cx = x[..., None] + c[..., None] * lx - s[..., None] * ly
  cy = y[..., None] + s[..., None] * lx + c[..., None] * ly
  return jnp.stack([cx, cy], -1)


def pairwise_sat_gap(x, y, yaw, length, width):
  """Separating-axis gap (O, O) between every pair of boxes; inputs (O,).

  gap = max over the 4 box axes of (|centre separation projected| - projected half extents of both boxes). A pair
  overlaps iff gap <= 0 (boxes are convex, so no separating axis among their edge normals means intersection).
  When positive it is a lower bound on the Euclidean box distance (exact for face-to-face configurations).
  """
  chex.assert_rank([x, y, yaw, length, width], 1)
  c, s = jnp.cos(yaw), jnp.sin(yaw)
  axes = jnp.stack([jnp.stack([c, s], -1), jnp.stack([-s, c], -1)], 1)  # (O, 2 axes, 2)
  hl, hw = length / 2.0, width / 2.0
  d = jnp.stack([x[None, :] - x[:, None], y[None, :] - y[:, None]], -1)  # (O_i, O_j, 2)

  def extent(ax):  # ax (..., 2): half-extent of every box j projected on ax -> (..., O_j)
    a0, a1 = ax[..., None, 0], ax[..., None, 1]
    return hl * jnp.abs(a0 * c + a1 * s) + hw * jnp.abs(-a0 * s + a1 * c)

  # Axes of box i (projected with extents of box j) and axes of box j (extents of box i): 4 axes per pair.
  ax_i = axes[:, None, :, :]  # (O_i, 1, 2, 2)
  sep_i = jnp.abs(jnp.sum(d[:, :, None, :] * ax_i, -1))  # (O_i, O_j, 2)
  ext_i = jnp.stack([hl, hw], -1)[:, None, :]  # own half extents along own axes
  ext_j_on_i = jnp.moveaxis(extent(axes), -1, 1)  # (O_i, O_j, 2)
  gap_i = sep_i - ext_i - ext_j_on_i
  gap_j = jnp.swapaxes(gap_i, 0, 1)  # the same quantity for the axes of box j
  return jnp.maximum(jnp.max(gap_i, -1), jnp.max(gap_j, -1))


def argmin_last(values):
  """argmin over the last axis (int32), as two plain min-reductions: XLA's CPU argmin (a variadic reduce) is about
  2.5x slower. Ties and all-inf rows give the first index, like jnp.argmin."""
  n = values.shape[-1]
  m = jnp.min(values, -1, keepdims=True)
  return jnp.min(jnp.where(values == m, jnp.arange(n, dtype=jnp.int32), n), -1).clip(0, n - 1)


def smallest_k(values, k: int):
  """(indices (..., k) int32, finite mask (..., k)) of the k smallest entries along the last axis, by k passes of
  argmin: for the small k used per step this is much cheaper on CPU than lax.top_k."""
  idx, ok = [], []
  for _ in range(k):
    j = argmin_last(values)
    v = jnp.take_along_axis(values, j[..., None], -1)[..., 0]
    idx.append(j)
    ok.append(jnp.isfinite(v))
    values = jnp.where(jnp.arange(values.shape[-1]) == j[..., None], jnp.inf, values)
  return jnp.stack(idx, -1).astype(jnp.int32), jnp.stack(ok, -1)


def point_segment_distance(px, py, ax, ay, bx, by):
  """Distance from points to segments a->b, plus the segment parameter t in [0, 1]; broadcasting (...,)."""
  dx, dy = bx - ax, by - ay
  len2 = dx * dx + dy * dy
  t = jnp.clip(((px - ax) * dx + (py - ay) * dy) / jnp.maximum(len2, 1e-12), 0.0, 1.0)
  qx, qy = ax + t * dx, ay + t * dy
  return jnp.hypot(px - qx, py - qy), t


def box_distance(corners_a, corners_b, overlap):
  """Exact Euclidean distance between boxes given their corners (..., 4, 2); 0 where `overlap` (...,) is true.

  For disjoint convex polygons the closest pair of points always involves a vertex of one polygon, so the distance
  is the minimum over the 4 x 4 corner-to-edge distances in both directions.
  """
  def one_way(c, e):  # corners c (..., 4, 2) against the 4 edges of polygon e
    a, b = e, jnp.roll(e, -1, axis=-2)
    d, _ = point_segment_distance(c[..., :, None, 0], c[..., :, None, 1], a[..., None, :, 0], a[..., None, :, 1],
                                  b[..., None, :, 0], b[..., None, :, 1])
    return jnp.min(d, axis=(-2, -1))

  d = jnp.minimum(one_way(corners_a, corners_b), one_way(corners_b, corners_a))
  return jnp.where(overlap, 0.0, d)


def _part1by1(n):
  """Spreads the low 16 bits of uint32 n to the even bit positions (for Morton codes)."""
  n = n & 0x0000FFFF
  n = (n | (n << 8)) & 0x00FF00FF
  n = (n | (n << 4)) & 0x0F0F0F0F
  n = (n | (n << 2)) & 0x33333333
  return (n | (n << 1)) & 0x55555555


def _morton_order(roads: types.RoadPoints):
  """Permutation (P,) sorting road points along a Z-order curve (a 256 x 256 grid over the map), invalid points
  last, so that chunks of CHUNK consecutive sorted points are spatially compact even where polylines jump.

  Sorts one uint32 array of (cell code << 16 | index): a single-operand sort, about 5x faster on CPU than argsort
  (and stable by index within a cell, which keeps polyline order). Maps over 65,536 points fall back to argsort.
  """
  p = roads.x.shape[0]
  big = 1e9
  lo_x, hi_x = jnp.min(jnp.where(roads.valid, roads.x, big)), jnp.max(jnp.where(roads.valid, roads.x, -big))
  lo_y, hi_y = jnp.min(jnp.where(roads.valid, roads.y, big)), jnp.max(jnp.where(roads.valid, roads.y, -big))
  span = jnp.maximum(jnp.maximum(hi_x - lo_x, hi_y - lo_y), 1e-3)
  bits = 8 if p <= (1 << 16) else 16
  q = lambda v, lo: jnp.clip((v - lo) / span * ((1 << bits) - 1), 0, (1 << bits) - 1).astype(jnp.uint32)
  code = _part1by1(q(roads.x, lo_x)) | (_part1by1(q(roads.y, lo_y)) << 1)
  code = jnp.where(roads.valid, code, jnp.uint32((1 << (2 * bits)) - 1))
  if bits == 8:
    key = jnp.sort((code << 16) | jnp.arange(p, dtype=jnp.uint32))
    return (key & 0xFFFF).astype(jnp.int32)
  return jnp.argsort(code)


def _chunk_bounds(xs, ys, group_mask):
  """Per chunk of CHUNK sorted points: centre (C, 2), radius (C,), whether it holds a group point (C,)."""
  xs, ys, m = (a.reshape(-1, CHUNK) for a in (xs, ys, group_mask))
  big = 1e9
  lo_x, hi_x = jnp.min(jnp.where(m, xs, big), 1), jnp.max(jnp.where(m, xs, -big), 1)
  lo_y, hi_y = jnp.min(jnp.where(m, ys, big), 1), jnp.max(jnp.where(m, ys, -big), 1)
  cx, cy = (lo_x + hi_x) / 2.0, (lo_y + hi_y) / 2.0
  r = jnp.max(jnp.where(m, jnp.hypot(xs - cx[:, None], ys - cy[:, None]), 0.0), 1)
  return jnp.stack([cx, cy], -1), r, jnp.any(m, 1)


def _nearest_in_group(xs, ys, perm, x, y, group_mask, k: int):
  """(O, k) original indices of the k nearest points of a group (-1 where fewer exist), by the two-level chunk
  search over Morton-sorted points xs, ys (P padded to a multiple of CHUNK), perm mapping back."""
  centre, radius, has = _chunk_bounds(xs, ys, group_mask)
  num_chunks = centre.shape[0]
  kc = min(num_chunks, max(2, k))  # k chunks of CHUNK points: exact on every real scene we checked
  lower = jnp.hypot(x[:, None] - centre[None, :, 0], y[:, None] - centre[None, :, 1]) - radius[None, :]
  _, chunk_idx = jax.lax.top_k(jnp.where(has[None, :], -lower, -jnp.inf), kc)  # (O, kc)
  pts = (chunk_idx[:, :, None] * CHUNK + jnp.arange(CHUNK)).reshape(x.shape[0], -1)  # (O, kc * CHUNK)
  d2 = (xs[pts] - x[:, None]) ** 2 + (ys[pts] - y[:, None]) ** 2
  score, j = jax.lax.top_k(jnp.where(group_mask[pts], -d2, -jnp.inf), min(k, pts.shape[1]))
  idx = jnp.where(jnp.isfinite(score), perm[jnp.take_along_axis(pts, j, 1)], -1)
  if idx.shape[1] < k:
    idx = jnp.pad(idx, ((0, 0), (0, k - idx.shape[1])), constant_values=-1)
  return idx.astype(jnp.int32)


def edge_slots(k: int) -> int:
  """Default number of road-edge slots among k candidates (44 of 64). Measured on the real logs with refresh every
  10 steps: 32 of 64 slots let 5 of 86 moving vehicles flicker off-road from stale candidates, 44 none."""
  return (11 * k) // 16


def nearest_road_points(roads: types.RoadPoints, x, y, k: int, num_edge: int | None = None,
                        num_stop: int = NUM_STOP):
  """Road candidates (O, k) int32 per object, -1 where missing; x, y (O,) query positions.

  Layout: [num_edge nearest road-edge points (every EDGE_STRIDE-th point, see road_edge_signed_distance) |
  num_stop nearest stop signs | the rest nearest other points (lanes, lines, crosswalks, ...)]. Road edges get
  their own quota so off-road is decided even where lane points crowd them out; stop signs (single points, 3 m off the lane) get theirs so the stop-sign check always sees them.
  Call at reset and every few steps; passing a look-ahead position (x + vx * half the refresh interval) keeps the
  candidates centred on the stretch the object will drive before the next refresh.
  """
  chex.assert_rank([x, y], 1)
  num_edge = edge_slots(k) if num_edge is None else num_edge
  rest = k - num_edge - num_stop
  if rest < 0:
    raise ValueError(f"nearest_road_points: k={k} < num_edge={num_edge} + num_stop={num_stop}")
  is_edge = jnp.isin(roads.map_type, EDGE_IDS) & roads.valid
  stride_ok = jnp.arange(roads.x.shape[0]) % EDGE_STRIDE == 0
  is_stop = (roads.map_type == types.MAP_STOP_SIGN) & roads.valid
  groups = [(num_edge, is_edge & stride_ok), (num_stop, is_stop), (rest, roads.valid & ~is_edge & ~is_stop)]
  p = roads.x.shape[0]
  pad = (-p) % CHUNK
  perm = jnp.pad(_morton_order(roads), (0, pad), constant_values=0)
  sort = lambda a, fill: jnp.where(jnp.arange(p + pad) < p, a[perm], fill)
  xs, ys = sort(roads.x, 1e9), sort(roads.y, 1e9)
  parts = [_nearest_in_group(xs, ys, perm, x, y, sort(mask, False), n) for n, mask in groups if n]
  return jnp.concatenate(parts, 1)


def brute_force_nearest(roads: types.RoadPoints, x, y, k: int):
  """(O, k) nearest valid road points by a full top_k over every point (the reference the chunk search is tested
  against, and the Waymax-style baseline in the benchmark)."""
  d2 = (roads.x[None, :] - x[:, None]) ** 2 + (roads.y[None, :] - y[:, None]) ** 2
  score, idx = jax.lax.top_k(jnp.where(roads.valid[None, :], -d2, -jnp.inf), k)
  return jnp.where(jnp.isfinite(score), idx, -1).astype(jnp.int32)


def _edge_segments(roads: types.RoadPoints, candidates):
  """Segment end indices (O, 2K) around each edge candidate: a chord of EDGE_STRIDE points backwards and forwards
  along its polyline (shorter at the polyline's ends), with a validity mask."""
  p = roads.x.shape[0]
  is_edge = jnp.isin(roads.map_type, EDGE_IDS) & roads.valid
  c = jnp.clip(candidates, 0, p - 1)
  eid = roads.element_id

  def along(step):  # the point `step` away on the same polyline, else the one between, else none
    far = jnp.clip(c + step, 0, p - 1)
    near = jnp.clip(c + step // EDGE_STRIDE, 0, p - 1)
    far_ok = (eid[far] == eid[c]) & is_edge[far] & (c + step >= 0) & (c + step < p)
    near_ok = (eid[near] == eid[c]) & is_edge[near] & (near != c)
    return jnp.where(far_ok, far, near), far_ok | near_ok

  back, back_ok = along(-EDGE_STRIDE)
  fwd, fwd_ok = along(EDGE_STRIDE)
  base = (candidates >= 0) & is_edge[c]
  starts = jnp.concatenate([back, c], 1)
  ends = jnp.concatenate([c, fwd], 1)
  return starts, ends, jnp.concatenate([base & back_ok, base & fwd_ok], 1)


def road_edge_signed_distance(roads: types.RoadPoints, candidates, points):
  """Signed distance (O, N) from query points (O, N, 2) to the nearest road-edge segment among each object's
  edge candidates (O, K); positive = off-road (right of the edge's direction), negative = on-road side.

  Each candidate contributes the chords to the points EDGE_STRIDE before and after it on its polyline, so with
  candidates every EDGE_STRIDE points (see `nearest_road_points`) the candidate set covers a continuous stretch of
  edge. Where the nearest feature is a shared vertex (a tie between two segments) the segment with the larger
  perpendicular offset decides the side: that is the one whose half-plane test is valid for the point. Objects with
  no edge among their candidates get NO_EDGE_DISTANCE_M.
  """
  chex.assert_rank([candidates, points], [2, 3])
  starts, ends, ok = _edge_segments(roads, candidates)
  ax, ay, bx, by = (a[:, None, :] for a in (roads.x[starts], roads.y[starts], roads.x[ends], roads.y[ends]))
  px, py = points[..., 0:1], points[..., 1:2]  # (O, N, 1) against (O, 1, 2K)
  d, _ = point_segment_distance(px, py, ax, ay, bx, by)
  seg_len = jnp.maximum(jnp.hypot(bx - ax, by - ay), 1e-6)
  perp = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / seg_len  # > 0: left of the edge = road side
  key = jnp.where(ok[:, None, :], d - 1e-3 * jnp.abs(perp), jnp.inf)
  j = argmin_last(key)[..., None]
  d_j = jnp.take_along_axis(d, j, -1)[..., 0]
  perp_j = jnp.take_along_axis(perp, j, -1)[..., 0]
  found = jnp.any(ok, -1)[:, None]
  return jnp.where(found, jnp.where(perp_j >= 0.0, -d_j, d_j), NO_EDGE_DISTANCE_M)


def brute_force_edge_distance(roads: types.RoadPoints, points):
  """Waymax-style reference: signed distance (O, N) to the nearest road-edge POINT over all P points, sign from
  that point's direction. O x N x P work per call: the baseline our candidate sets are benchmarked against."""
  is_edge = jnp.isin(roads.map_type, EDGE_IDS) & roads.valid
  dx = points[..., 0:1] - roads.x
  dy = points[..., 1:2] - roads.y
  d2 = jnp.where(is_edge, dx * dx + dy * dy, jnp.inf)
  j = jnp.argmin(d2, -1)
  cross = roads.dir_x[j] * jnp.take_along_axis(dy, j[..., None], -1)[..., 0] - roads.dir_y[j] * jnp.take_along_axis(
      dx, j[..., None], -1)[..., 0]
  dist = jnp.sqrt(jnp.take_along_axis(d2, j[..., None], -1)[..., 0])
  return jnp.where(cross >= 0.0, -dist, dist)


def candidate_reach(roads: types.RoadPoints, candidates, x, y):
  """Distance (O,) from each object to its nearest road candidate of any kind (inf if it has none).

  Large values mean the candidates were picked somewhere else (an object that was not valid at the last refresh
  reports its padded position): metrics should not trust candidate-based answers for it until the next refresh.
  """
  chex.assert_rank([candidates, x], [2, 1])
  c = jnp.maximum(candidates, 0)
  d = jnp.hypot(roads.x[c] - x[:, None], roads.y[c] - y[:, None])
  return jnp.min(jnp.where((candidates >= 0) & roads.valid[c], d, jnp.inf), 1)


def project_on_log_path(objects: types.ObjectTracks, x, y):
  """Projects positions (O,) on each object's own logged path (O, T): segments t -> t+1 between consecutive valid
  steps; a valid step whose successor is invalid (or the last step) is a zero-length segment, so isolated points
  still count.

  Returns (distance_m, arc_length_m, step) each (O,): the distance to the nearest point of the path, the path's arc
  length from its first valid step to that point, and the index t of that segment's start. Objects with no valid
  step get distance inf.
  """
  chex.assert_rank([objects.x, x], [2, 1])
  v = objects.valid
  both = jnp.pad(v[:, :-1] & v[:, 1:], ((0, 0), (0, 1)))  # (O, T): segment t -> t+1 exists
  nx = jnp.pad(objects.x[:, 1:], ((0, 0), (0, 1)))
  ny = jnp.pad(objects.y[:, 1:], ((0, 0), (0, 1)))
  ax, ay = objects.x, objects.y
  bx, by = jnp.where(both, nx, ax), jnp.where(both, ny, ay)
  seg = jnp.hypot(bx - ax, by - ay)
  arc0 = jnp.cumsum(seg, 1) - seg  # arc length at each segment start
  d, t = point_segment_distance(x[:, None], y[:, None], ax, ay, bx, by)
  d = jnp.where(v, d, jnp.inf)
  j = argmin_last(d)
  take = lambda a: jnp.take_along_axis(a, j[:, None], 1)[:, 0]
  return take(d), take(arc0) + take(t) * take(seg), j.astype(jnp.int32)

