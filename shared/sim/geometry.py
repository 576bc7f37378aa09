"""Geometry for one scene: oriented boxes, box-box gaps and distances, point-segment distances, road candidates.

Shapes: O objects, P road points, K road candidates per object. Boxes are (x, y, yaw, length, width) with the centre
at (x, y). All functions are jit/vmap friendly; a batch of scenes adds a leading axis through `jax.vmap`.

Cost model. A scene has up to ~40k road points; per step we only touch each object's K candidates
(`nearest_road_points`, called at reset and every few steps), through a `CandidateCache` of their attributes and
road-edge chords gathered at the refresh. The candidate search itself (a per-scene Z-order index built at
reset, three-level ranking per refresh) is `shared/sim/road_index.py`, re-exported here.

Off-road sign convention (checked on the real scenes, see tests/unit/sim/test_sim_geometry.py): WOMD road-edge
polylines have the drivable road on their LEFT. A point to the right of its nearest road-edge segment is off-road;
`road_edge_signed_distance` is positive there (Waymax's convention: offroad iff distance > 0). With candidates
refreshed every step, off-road decisions equal a brute-force search over every edge point for every valid vehicle
at every step of the 10 real logs; on log replay 40.6% of vehicles valid at t=10 are ever off-road (95 of 234,
almost all parked; moving vehicles 1 of 86 = 1.2%), Waymax's own figures on the same logs.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

from shared.scenes import types
from shared.sim.road_index import (  # noqa: F401  (re-exported: geometry is the public face of the search)
    CHUNK, EDGE_IDS, EDGE_STRIDE, GROUP_EDGE, GROUP_OTHER, GROUP_STOP, NUM_GROUPS, NUM_STOP, SEARCH, SUPER,
    RoadIndex, argmin_last, brute_force_nearest, build_road_index, edge_slots, nearest_road_points, smallest_k)

NO_EDGE_DISTANCE_M = -100.0  # signed distance reported when no road edge is among the candidates (deep on-road)


def box_corners(x, y, yaw, length, width, trig=None):
  """Corners (..., 4, 2) of oriented boxes, counter-clockwise from front-left; inputs (...,); trig: (cos, sin) of
  yaw when the caller has them."""
  c, s = (jnp.cos(yaw), jnp.sin(yaw)) if trig is None else trig
  hl, hw = length / 2.0, width / 2.0
  # Local corner offsets in box frame: front-left, rear-left, rear-right, front-right (counter-clockwise).
  lx = jnp.stack([hl, -hl, -hl, hl], -1)
  ly = jnp.stack([hw, hw, -hw, -hw], -1)
  cx = x[..., None] + c[..., None] * lx - s[..., None] * ly
  cy = y[..., None] + s[..., None] * lx + c[..., None] * ly
  return jnp.stack([cx, cy], -1)


def sat_gap(boxes_a, boxes_b, trig_a=None, trig_b=None):
  """Separating-axis gap (M, N) between every box of a (M,) and every box of b (N,); boxes are tuples
  (x, y, yaw, length, width) of (M,) / (N,) arrays; trig_a, trig_b: (cos, sin) of their yaws when the caller has
  them (the env computes them once per step, outside its branches: XLA on CPU would otherwise evaluate cos and sin
  once per pair inside the fused (M, N) loop).

  gap = max over the 4 box axes of (|centre separation projected| - projected half extents of both boxes). A pair
  overlaps iff gap <= 0 (boxes are convex, so no separating axis among their edge normals means intersection).
  When positive it is a lower bound on the Euclidean box distance (exact for face-to-face configurations). Written
  in closed form with |cos| and |sin| of the relative yaw so XLA fuses it into one elementwise loop (3x faster on
  CPU than projecting stacked axes); symmetric: sat_gap(a, b) == sat_gap(b, a).T.
  """
  trig_a = (jnp.cos(boxes_a[2]), jnp.sin(boxes_a[2])) if trig_a is None else trig_a
  trig_b = (jnp.cos(boxes_b[2]), jnp.sin(boxes_b[2])) if trig_b is None else trig_b
  xa, ya, _, la, wa = (v[:, None] for v in boxes_a)
  xb, yb, _, lb, wb = (v[None, :] for v in boxes_b)
  ca, sa = (v[:, None] for v in trig_a)
  cb, sb = (v[None, :] for v in trig_b)
  cr = jnp.abs(ca * cb + sa * sb)  # |cos(yaw_b - yaw_a)|
  sr = jnp.abs(ca * sb - sa * cb)  # |sin(yaw_b - yaw_a)|
  hla, hwa, hlb, hwb = la / 2.0, wa / 2.0, lb / 2.0, wb / 2.0
  dx, dy = xb - xa, yb - ya
  g0 = jnp.abs(dx * ca + dy * sa) - hla - (hlb * cr + hwb * sr)  # a's long axis
  g1 = jnp.abs(dy * ca - dx * sa) - hwa - (hlb * sr + hwb * cr)  # a's lateral axis
  g2 = jnp.abs(dx * cb + dy * sb) - hlb - (hla * cr + hwa * sr)  # b's long axis
  g3 = jnp.abs(dy * cb - dx * sb) - hwb - (hla * sr + hwa * cr)  # b's lateral axis
  return jnp.maximum(jnp.maximum(g0, g1), jnp.maximum(g2, g3))


def pairwise_sat_gap(x, y, yaw, length, width):
  """Separating-axis gap (O, O) between every pair of boxes; inputs (O,). See `sat_gap`."""
  chex.assert_rank([x, y, yaw, length, width], 1)
  boxes = (x, y, yaw, length, width)
  return sat_gap(boxes, boxes)


def point_segment_distance(px, py, ax, ay, bx, by, t_max=1.0):
  """Distance from points to segments a->b, plus the segment parameter t in [0, t_max]; broadcasting (...,).
  t_max (broadcast too) above 1 extends a segment past b (inf: a ray)."""
  dx, dy = bx - ax, by - ay
  len2 = dx * dx + dy * dy
  t = jnp.clip(((px - ax) * dx + (py - ay) * dy) / jnp.maximum(len2, 1e-12), 0.0, t_max)
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


@flax.struct.dataclass
class CandidateCache:
  """What steps read about each object's road candidates, gathered once per refresh: steps then read (O, K)
  arrays instead of gathering from the P-long map (gathers are the slow part of a CPU step).

  Attributes:
    x, y, dir_x, dir_y: (O, K) float32 position and direction of each candidate (0 where missing).
    map_type, element_id: (O, K) int32.
    ok: (O, K) bool, the candidate exists and is a valid road point.
    seg_ax, seg_ay, seg_bx, seg_by: (O, 2 K_edge) float32 road-edge chords around the K_edge edge candidates
      (see road_edge_signed_distance); seg_ok (O, 2 K_edge) bool.
    stop_dir_x, stop_dir_y, stop_found: (O, L) float32, float32, bool: per traffic light, the direction of the
      candidate on the light's lane nearest its stop point (stop_lane_directions), or None when the cache was
      gathered without the lights (metrics then derive them per step).
  """

  x: Any
  y: Any
  dir_x: Any
  dir_y: Any
  map_type: Any
  element_id: Any
  ok: Any
  seg_ax: Any
  seg_ay: Any
  seg_bx: Any
  seg_by: Any
  seg_ok: Any
  stop_dir_x: Any = None
  stop_dir_y: Any = None
  stop_found: Any = None


def stop_lane_directions(cache: CandidateCache, lights: types.TrafficLights):
  """(found, dir_x, dir_y), each (O, L): whether each object has a candidate on light l's lane, and the direction
  of the one nearest the light's stop point (0 where none). Depends on the candidates and the static stop points
  only, so the env gathers it with the cache at each refresh instead of per step (an (O, L, K) search)."""
  sx, sy = lights.stop_x[None, :, None], lights.stop_y[None, :, None]
  match = cache.ok[:, None, :] & (cache.element_id[:, None, :] == lights.lane_id[None, :, None])
  d = jnp.where(match, jnp.hypot(cache.x[:, None, :] - sx, cache.y[:, None, :] - sy), jnp.inf)  # (O, L, K)
  j = argmin_last(d)[..., None]
  at_j = lambda a: jnp.take_along_axis(jnp.broadcast_to(a[:, None, :], d.shape), j, -1)[..., 0]  # (O, L)
  found = jnp.any(match, -1)
  return found, jnp.where(found, at_j(cache.dir_x), 0.0), jnp.where(found, at_j(cache.dir_y), 0.0)


def candidate_cache(roads: types.RoadPoints, candidates, num_edge: int,
                    lights: types.TrafficLights | None = None) -> CandidateCache:
  """The CandidateCache of candidates (O, K) whose first num_edge columns are the road-edge slots; with `lights`
  (the scene's), also their stop-lane directions (stop_lane_directions)."""
  chex.assert_rank(candidates, 2)
  c = jnp.maximum(candidates, 0)
  starts, ends, seg_ok = _edge_segments(roads, candidates[:, :num_edge])
  cache = CandidateCache(x=roads.x[c], y=roads.y[c], dir_x=roads.dir_x[c], dir_y=roads.dir_y[c],
                         map_type=roads.map_type[c], element_id=roads.element_id[c],
                         ok=(candidates >= 0) & roads.valid[c], seg_ax=roads.x[starts], seg_ay=roads.y[starts],
                         seg_bx=roads.x[ends], seg_by=roads.y[ends], seg_ok=seg_ok)
  if lights is None:
    return cache
  found, dx, dy = stop_lane_directions(cache, lights)
  return cache.replace(stop_dir_x=dx, stop_dir_y=dy, stop_found=found)


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
  return cached_edge_signed_distance(candidate_cache(roads, candidates, candidates.shape[1]), points)


def materialised(a):
  """a itself (float), computed into its own buffer: a max-reduction over (a, -inf) is a fusion that XLA on CPU
  does not fuse into its consumers, so they read a instead of recomputing it per element (XLA drops optimization
  barriers)."""
  return jnp.max(jnp.stack([a, jnp.full_like(a, -jnp.inf)], -1), -1)


def packed_argmin_nonneg(values):
  """argmin (int32) over the last axis of values >= 0 (or +inf) as one int32 min-reduction of the float bits with
  the index in the low ceil(log2(n)) mantissa bits: entries equal in the other bits tie to the lower index (all-inf
  rows give 0, like argmin_last). The sign bit is dropped (-0.0 and rounding below 0 count as their magnitude).
  One reduction over `values` instead of argmin_last's two (XLA on CPU materialises values read twice)."""
  n = values.shape[-1]
  bits = max(1, (n - 1).bit_length())
  low = (1 << bits) - 1
  key = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32) & 0x7FFFFFFF
  packed = (key & ~low) | jnp.arange(n, dtype=jnp.int32)
  return jnp.min(packed, -1) & low


def _chord_offsets(px, py, ax, ay, bx, by):
  """(distance, perpendicular offset) of points to chords a->b, broadcasting; offset > 0: left of the chord."""
  d, _ = point_segment_distance(px, py, ax, ay, bx, by)
  seg_len = jnp.maximum(jnp.hypot(bx - ax, by - ay), 1e-6)
  return d, ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / seg_len


def cached_edge_signed_distance(cache: CandidateCache, points):
  """road_edge_signed_distance from a CandidateCache's edge chords; points (O, N, 2) -> (O, N)."""
  chex.assert_rank(points, 3)
  ok = cache.seg_ok
  px, py = points[..., 0], points[..., 1]  # (O, N) against (O, 2K) chords
  d, perp = _chord_offsets(px[..., None], py[..., None], *(a[:, None, :] for a in (
      cache.seg_ax, cache.seg_ay, cache.seg_bx, cache.seg_by)))
  # argmin of the key by one int32 min-reduction (packed_argmin_nonneg: the key is >= 0, as |perp| <= d; ties
  # within a relative 2^-16 pick the lower index); argmin_last's two reductions made XLA on CPU materialise the
  # (O, N, 2K) keys and read them twice.
  j = packed_argmin_nonneg(jnp.where(ok[:, None, :], d - 1e-3 * jnp.abs(perp), jnp.inf))
  # The nearest chord's distance and offset are recomputed from its end points, not read from (O, N, 2K) arrays:
  # XLA on CPU would materialise those, or redo the whole (O, N, 2K) computation for each reader.
  take = lambda a: jnp.take_along_axis(a, j, -1)  # (O, 2K) -> (O, N)
  d_j, perp_j = _chord_offsets(px, py, take(cache.seg_ax), take(cache.seg_ay), take(cache.seg_bx),
                               take(cache.seg_by))
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


def cached_candidate_reach(cache: CandidateCache, x, y):
  """Distance (O,) from each object to its nearest cached road candidate of any kind (inf if it has none).

  Large values mean the candidates were picked somewhere else (an object that was not valid at the last refresh
  reports its padded position): metrics should not trust candidate-based answers for it until the next refresh.
  """
  d = jnp.hypot(cache.x - x[:, None], cache.y - y[:, None])
  return jnp.min(jnp.where(cache.ok, d, jnp.inf), 1)


def _log_segments(objects: types.ObjectTracks):
  """(ax, ay, bx, by, seg, both) (O, T) each: segment t -> t+1 of each logged path where steps t and t+1 are both
  valid; a valid step whose successor is invalid (or the last step) is a zero-length segment at itself."""
  v = objects.valid
  both = jnp.pad(v[:, :-1] & v[:, 1:], ((0, 0), (0, 1)))  # (O, T): segment t -> t+1 exists
  nx = jnp.pad(objects.x[:, 1:], ((0, 0), (0, 1)))
  ny = jnp.pad(objects.y[:, 1:], ((0, 0), (0, 1)))
  ax, ay = objects.x, objects.y
  bx, by = jnp.where(both, nx, ax), jnp.where(both, ny, ay)
  return ax, ay, bx, by, jnp.hypot(bx - ax, by - ay), both


def _last_moving(seg):
  """(O,) int32 index of the last segment of positive length of each path (seg (O, T)); -1 where none."""
  return jnp.max(jnp.where(seg > 1e-6, jnp.arange(seg.shape[1]), -1), 1).astype(jnp.int32)


# Lane continuation past a logged path's end (log_path_end with roads): hops along lane centre lines.
LANE_TYPES = (types.MAP_LANE_UNDEFINED, types.MAP_LANE_FREEWAY, types.MAP_LANE_SURFACE_STREET)  # not bike lanes
CONT_HOPS = 3  # lane elements followed (each hop: snap onto a lane, then follow that element to its end)
CONT_POINTS = 8  # points per hop
CONT_STRIDE = 16  # lane points between them (WOMD lane points are 0.5 m apart: 8 m chords, <= 0.8 m off a
# 10 m-radius turn; a hop covers <= 64 m)
CONT_SNAP_M = 2.5  # a lane point within this distance of the query (ahead of the end) can be snapped to
CONT_COS = 0.8  # ... if its direction is within about 37 degrees of the direction driven
CONT_AHEAD_M = 1.0  # queries sit this far ahead of the point reached, along the direction driven
DIR_BACK_M = 1.0  # the end direction is taken over the last >= 1 m of path (a stopping car's last cm jitter)


@flax.struct.dataclass
class PathEnd:
  """Where each object's logged path goes on past its end (see `log_path_end`); static per scene.

  Attributes:
    last: (O,) int32 index of the path's last segment of positive length (t -> t+1); -1 for a path that never moves.
    last_valid: (O,) int32 last valid logged step; -1 for an object never valid.
    x, y: (O,) the end of segment `last`, where the continuation starts.
    dir_x, dir_y: (O,) the direction driven at the end: unit vector over the path's last >= DIR_BACK_M metres.
    step_m: (O,) the path's mean length per logged step (spacing of route points past the end).
    ext_x, ext_y: (O, K) the continuation's points after (x, y), K = CONT_HOPS * CONT_POINTS: along lane centre
      lines where lanes carry on from the end, else (and after the last of them) straight on; repeated points are
      zero-length segments.
    ext_dir_x, ext_dir_y: (O,) unit direction of the ray that goes on from the last point.
  """

  last: Any
  last_valid: Any
  x: Any
  y: Any
  dir_x: Any
  dir_y: Any
  step_m: Any
  ext_x: Any
  ext_y: Any
  ext_dir_x: Any
  ext_dir_y: Any


def _end_direction(objects: types.ObjectTracks, ex, ey, last, fallback):
  """(O,) unit direction from the latest valid logged point at least DIR_BACK_M from (ex, ey) up to the last
  moving step to the end point; `fallback` (dx, dy) where no such point exists (a path shorter than DIR_BACK_M)."""
  n = jnp.arange(objects.x.shape[1])
  far = objects.valid & (n <= last[:, None]) & (
      jnp.hypot(objects.x - ex[:, None], objects.y - ey[:, None]) >= DIR_BACK_M)
  k = jnp.maximum(jnp.max(jnp.where(far, n, -1), 1), 0)
  take = lambda a: jnp.take_along_axis(a, k[:, None], 1)[:, 0]
  dx, dy = ex - take(objects.x), ey - take(objects.y)
  norm = jnp.hypot(dx, dy)
  ok = jnp.any(far, 1) & (norm > 1e-6)
  return (jnp.where(ok, dx / jnp.maximum(norm, 1e-6), fallback[0]),
          jnp.where(ok, dy / jnp.maximum(norm, 1e-6), fallback[1]))


def _straight(x, y, dx, dy, n: int):
  """(x, y) (O, n): n points straight on from (x, y) along (dx, dy), one chord (CONT_STRIDE lane points) apart."""
  s = jnp.arange(1, n + 1) * (CONT_STRIDE * 0.5)
  return x[:, None] + dx[:, None] * s, y[:, None] + dy[:, None] * s


def _lane_continuation(roads: types.RoadPoints, x, y, dx, dy, moving):
  """(ext_x, ext_y (O, K), dir_x, dir_y (O,)): the continuation from (x, y) driving along (dx, dy), by CONT_HOPS
  hops. A hop snaps onto the lane point nearest to CONT_AHEAD_M ahead (within CONT_SNAP_M, heading within
  acos(CONT_COS) of the direction driven) and follows that lane element by CONT_STRIDE points, up to its last point;
  the next hop starts there. Where no lane point qualifies the path goes straight on. Each hop costs one pass over
  the scene's road points per object (O x P), once per scene at reset."""
  P = roads.x.shape[0]
  idx = jnp.arange(P)
  lane = roads.valid & jnp.isin(roads.map_type, jnp.asarray(LANE_TYPES))
  # Each point's element's last index (elements are contiguous runs of element_id): a reverse running minimum of
  # the indices where a run ends.
  run_end = jnp.append(roads.element_id[1:] != roads.element_id[:-1], True) | jnp.append(
      roads.valid[1:] != roads.valid[:-1], True)
  elem_last = jax.lax.cummin(jnp.where(run_end, idx, P - 1), reverse=True)
  step = CONT_STRIDE * jnp.arange(1, CONT_POINTS + 1)
  pts_x, pts_y = [], []
  ok = moving
  for _ in range(CONT_HOPS):
    qx, qy = x + CONT_AHEAD_M * dx, y + CONT_AHEAD_M * dy
    d = jnp.hypot(roads.x[None, :] - qx[:, None], roads.y[None, :] - qy[:, None])  # (O, P)
    aligned = roads.dir_x[None, :] * dx[:, None] + roads.dir_y[None, :] * dy[:, None] >= CONT_COS
    d = jnp.where(lane[None, :] & aligned & (d <= CONT_SNAP_M), d, jnp.inf)
    i0 = argmin_last(d)
    found = ok & jnp.isfinite(jnp.min(d, 1))
    j = jnp.minimum(i0[:, None] + step[None, :], elem_last[i0][:, None])  # (O, Q) lane points along the element
    sx, sy = _straight(x, y, dx, dy, CONT_POINTS)
    hx, hy = jnp.where(found[:, None], roads.x[j], sx), jnp.where(found[:, None], roads.y[j], sy)
    pts_x.append(hx)
    pts_y.append(hy)
    last_j = j[:, -1]
    dx = jnp.where(found, roads.dir_x[last_j], dx)
    dy = jnp.where(found, roads.dir_y[last_j], dy)
    x, y = hx[:, -1], hy[:, -1]
    ok = found  # once straight, stay straight (a lane found later would be a jump, not a continuation)
  return jnp.concatenate(pts_x, 1), jnp.concatenate(pts_y, 1), dx, dy


def log_path_end(objects: types.ObjectTracks, roads: types.RoadPoints | None = None) -> PathEnd:
  """The continuation of each logged path (O, T) past its end (paper 002's route goes on past the log): along the
  lanes that carry on from where the log ends when `roads` are given (`_lane_continuation`), else straight on in
  the direction driven at the end. Depends on the scene only: env.reset computes it once (SimState.path_end)."""
  ax, ay, bx, by, seg, both = _log_segments(objects)
  n = jnp.arange(seg.shape[1])
  last = _last_moving(seg)
  take = lambda a: jnp.take_along_axis(a, jnp.maximum(last, 0)[:, None], 1)[:, 0]
  length = jnp.maximum(take(seg), 1e-6)
  ex, ey = take(bx), take(by)
  dx, dy = _end_direction(objects, ex, ey, last, ((take(bx) - take(ax)) / length, (take(by) - take(ay)) / length))
  moving = last >= 0
  if roads is None:
    ext_x, ext_y = _straight(ex, ey, dx, dy, CONT_HOPS * CONT_POINTS)
    edx, edy = dx, dy
  else:
    ext_x, ext_y, edx, edy = _lane_continuation(roads, ex, ey, dx, dy, moving)
  return PathEnd(last=last, last_valid=jnp.max(jnp.where(objects.valid, n, -1), 1).astype(jnp.int32),
                 x=ex, y=ey, dir_x=dx, dir_y=dy, step_m=jnp.sum(seg, 1) / jnp.maximum(jnp.sum(both, 1), 1),
                 ext_x=ext_x, ext_y=ext_y, ext_dir_x=edx, ext_dir_y=edy)


def continuation_segments(end: PathEnd):
  """(ax, ay, bx, by (O, K+1), arc0 (O, K+1)) of the continuation: (x, y) -> ext_0 -> ... -> ext_{K-1}, then a
  unit segment along the final direction (a ray for projections); arc0: arc length from (x, y) to each start."""
  ax = jnp.concatenate([end.x[:, None], end.ext_x], 1)
  ay = jnp.concatenate([end.y[:, None], end.ext_y], 1)
  bx = jnp.concatenate([end.ext_x, (end.ext_x[:, -1] + end.ext_dir_x)[:, None]], 1)
  by = jnp.concatenate([end.ext_y, (end.ext_y[:, -1] + end.ext_dir_y)[:, None]], 1)
  seg = jnp.hypot(bx - ax, by - ay)
  return ax, ay, bx, by, jnp.cumsum(seg, 1) - seg


def continuation_at(end: PathEnd, beyond):
  """Points (x, y) (O, N) at arc lengths `beyond` (O, N) >= 0 along each continuation from (x, y)."""
  ax, ay, bx, by, arc0 = continuation_segments(end)
  K1 = ax.shape[1]
  k = jnp.clip(jnp.sum(arc0[:, None, :] <= beyond[..., None], -1) - 1, 0, K1 - 1)  # (O, N) segment of each
  take = lambda a: jnp.take_along_axis(a, k, 1)
  sx, sy, ex, ey = take(ax), take(ay), take(bx), take(by)
  length = jnp.hypot(ex - sx, ey - sy)
  u = (beyond - take(arc0)) / jnp.maximum(length, 1e-6)
  u = jnp.where(k == K1 - 1, u, jnp.minimum(u, 1.0))
  return sx + u * (ex - sx), sy + u * (ey - sy)


def log_arc_length_at(objects: types.ObjectTracks, t):
  """(..., O) arc length of each object's logged path from its first valid step to its logged position at step t
  (the same arc length as project_on_log_path's; past the log's last valid step, the whole path); t: a step or
  steps (...,), sharing one computation of the path's segments."""
  seg = _log_segments(objects)[4]
  before = jnp.arange(seg.shape[1]) < jnp.asarray(t)[..., None]  # (..., T)
  return jnp.sum(jnp.where(before[..., None, :], seg, 0.0), -1)


def project_on_log_path(objects: types.ObjectTracks, x, y, end: PathEnd | None = None):
  """Projects positions (O,) on each object's route: its own logged path (O, T), then the path's continuation past
  its end (`log_path_end`: along the lanes that carry on from there, else straight on, and a ray after that). The
  logged path is its segments t -> t+1 between consecutive valid steps; a valid step whose successor is invalid (or
  the last step) is a zero-length segment, so isolated points still count. A car that drives on beyond where its
  log ends, along the road, is on its route and making progress (paper 002's route continues past the log).

  Returns (distance_m, arc_length_m, step) each (O,): the distance to the nearest point of the route, the route's
  arc length from the path's first valid step to that point, and the index of that segment: t for the logged
  segment t -> t+1, T + k for the continuation's segment k (`continuation_segments`). Objects with no valid step
  get distance inf, paths that never move have no continuation. end: `log_path_end(objects, roads)` when the
  caller has it (SimState.path_end), else the straight continuation is computed.
  """
  chex.assert_rank([objects.x, x], [2, 1])
  ax, ay, bx, by, seg, _ = _log_segments(objects)
  T = seg.shape[1]
  end = log_path_end(objects) if end is None else end
  cax, cay, cbx, cby, carc0 = continuation_segments(end)
  K1 = cax.shape[1]
  ray = jnp.where(jnp.arange(K1) == K1 - 1, jnp.inf, 1.0)
  d, t = point_segment_distance(x[:, None], y[:, None], ax, ay, bx, by)
  cd, ct = point_segment_distance(x[:, None], y[:, None], cax, cay, cbx, cby, ray)
  d = jnp.concatenate([jnp.where(objects.valid, d, jnp.inf), jnp.where((end.last >= 0)[:, None], cd, jnp.inf)], 1)
  j = argmin_last(d)
  log_len = jnp.sum(seg, 1)
  n = jnp.arange(T)
  # Arc length at segment j's start as a masked sum, not a cumsum over every step (a reduce-window, slow on CPU).
  arc_log = jnp.sum(jnp.where(n < j[:, None], seg, 0.0), 1)
  take = lambda a, i: jnp.take_along_axis(a, i[:, None], 1)[:, 0]
  jl, jc = jnp.minimum(j, T - 1), jnp.clip(j - T, 0, K1 - 1)
  clen = jnp.hypot(cbx - cax, cby - cay)
  on_log = j < T
  arc = jnp.where(on_log, arc_log + take(t, jl) * take(seg, jl),
                  log_len + take(carc0, jc) + take(ct, jc) * take(clen, jc))
  return take(d, j), arc, j.astype(jnp.int32)
