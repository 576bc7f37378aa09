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
