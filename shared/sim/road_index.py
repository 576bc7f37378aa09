"""The road-point search index of one scene: the k nearest road points per object without a top_k over O x P.

Once per scene (`build_road_index`, at reset) road points are sorted by (group, Z-order cell) with one stable sort
and cut into chunks of CHUNK and super-chunks of SUPER chunks with per-group bounding circles; per refresh
(`nearest_road_points`) each object ranks super-chunks by a lower bound on the distance to their points, then the
chunks of its best super-chunks, then the points of its best chunks (SEARCH sets how many per level). lax.top_k is
slow on CPU and its cost grows with the row length, so every level ranks short rows. On the real scenes this
returns exactly the brute-force k nearest (`brute_force_nearest`) for every object tested.
Shapes: O objects, P road points; `shared.sim.geometry` re-exports every public name here.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

from shared.scenes import types

NUM_STOP = 2  # stop-sign slots per object (after the edge slots)
CHUNK = 16  # road points per chunk in the candidate search
SUPER = 16  # chunks per super-chunk (256 points)
GROUP_EDGE, GROUP_STOP, GROUP_OTHER, NUM_GROUPS = 0, 1, 2, 3  # candidate groups of the road index
# (super-chunks, chunks) ranked per group. Measured on the 10 real scenes (every object at t = 10, 20, ..., 90,
# queried half a refresh ahead): these return the brute-force nearest points for every one; edges at (6, 12) miss
# for 179 of 11,520 queries, (8, 16) for none; the other points at (8, 32) miss for 856, (12, 24) for none.
SEARCH = {GROUP_EDGE: (8, 20), GROUP_STOP: (2, 2), GROUP_OTHER: (12, 24)}
EDGE_STRIDE = 2  # edge candidates are every 2nd point; chords of 1 m deviate <= 1.3 cm from a 10 m-radius curb
NO_EDGE_DISTANCE_M = -100.0  # signed distance reported when no road edge is among the candidates (deep on-road)
EDGE_IDS = jnp.asarray(types.MAP_ROAD_EDGE_IDS)


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


def _part1by1(n):
  """Spreads the low 16 bits of uint32 n to the even bit positions (for Morton codes)."""
  n = n & 0x0000FFFF
  n = (n | (n << 8)) & 0x00FF00FF
  n = (n | (n << 4)) & 0x0F0F0F0F
  n = (n | (n << 2)) & 0x33333333
  return (n | (n << 1)) & 0x55555555


def _morton_code(roads: types.RoadPoints):
  """(P,) uint32 Z-order cell code of every road point (a 256 x 256 grid over the valid points; 16384^2 for maps
  over 65,536 points), and the number of bits it uses."""
  p = roads.x.shape[0]
  big = 1e9
  lo_x, hi_x = jnp.min(jnp.where(roads.valid, roads.x, big)), jnp.max(jnp.where(roads.valid, roads.x, -big))
  lo_y, hi_y = jnp.min(jnp.where(roads.valid, roads.y, big)), jnp.max(jnp.where(roads.valid, roads.y, -big))
  span = jnp.maximum(jnp.maximum(hi_x - lo_x, hi_y - lo_y), 1e-3)
  bits = 8 if p <= (1 << 16) else 14
  q = lambda v, lo: jnp.clip((v - lo) / span * ((1 << bits) - 1), 0, (1 << bits) - 1).astype(jnp.uint32)
  return _part1by1(q(roads.x, lo_x)) | (_part1by1(q(roads.y, lo_y)) << 1), 2 * bits


def _bounds(xs, ys, mask, size: int):
  """Per block of `size` consecutive sorted points: centre (C, 2), radius (C,) of its masked points, and whether
  it holds any (C,)."""
  xs, ys, m = (a.reshape(-1, size) for a in (xs, ys, mask))
  big = 1e9
  lo_x, hi_x = jnp.min(jnp.where(m, xs, big), 1), jnp.max(jnp.where(m, xs, -big), 1)
  lo_y, hi_y = jnp.min(jnp.where(m, ys, big), 1), jnp.max(jnp.where(m, ys, -big), 1)
  cx, cy = (lo_x + hi_x) / 2.0, (lo_y + hi_y) / 2.0
  r = jnp.max(jnp.where(m, jnp.hypot(xs - cx[:, None], ys - cy[:, None]), 0.0), 1)
  return jnp.stack([cx, cy], -1), r, jnp.any(m, 1)


@flax.struct.dataclass
class RoadIndex:
  """The scene's road points sorted for the candidate search; depends on the map only (built once at reset).

  Points are sorted by (group, Z-order cell, index): groups GROUP_EDGE (road-edge points every EDGE_STRIDE-th
  index), GROUP_STOP (stop signs), GROUP_OTHER (every other valid point), then the rest (ignored). Sorted points
  are cut into chunks of CHUNK and super-chunks of SUPER chunks; each block keeps, per group, a bounding circle of
  its points of that group. Pp = P padded to a multiple of CHUNK * SUPER, C = Pp / CHUNK, S = C / SUPER, G = 3.

  Attributes:
    xs, ys: (Pp,) float32 sorted coordinates (1e9 on padding).
    perm: (Pp,) int32 original index of each sorted point.
    group: (Pp,) int32 group of each sorted point (NUM_GROUPS = none).
    chunk_centre, chunk_radius, chunk_has: (G, C, 2), (G, C), (G, C) per-group chunk bounds.
    super_centre, super_radius, super_has: (G, S, 2), (G, S), (G, S) per-group super-chunk bounds.
  """

  xs: Any
  ys: Any
  perm: Any
  group: Any
  chunk_centre: Any
  chunk_radius: Any
  chunk_has: Any
  super_centre: Any
  super_radius: Any
  super_has: Any


def build_road_index(roads: types.RoadPoints) -> RoadIndex:
  """The RoadIndex of one scene's map (one stable sort of P keys; call at reset, not per step)."""
  chex.assert_rank(roads.x, 1)
  p = roads.x.shape[0]
  is_edge = jnp.isin(roads.map_type, EDGE_IDS) & roads.valid
  is_stop = (roads.map_type == types.MAP_STOP_SIGN) & roads.valid
  group = jnp.where(is_edge & (jnp.arange(p) % EDGE_STRIDE == 0), GROUP_EDGE,
                    jnp.where(is_stop, GROUP_STOP, jnp.where(roads.valid & ~is_edge, GROUP_OTHER, NUM_GROUPS)))
  code, bits = _morton_code(roads)
  order = jnp.argsort((group.astype(jnp.uint32) << bits) | code, stable=True).astype(jnp.int32)
  pad = (-p) % (CHUNK * SUPER)
  perm = jnp.pad(order, (0, pad))
  real = jnp.arange(p + pad) < p
  xs, ys = jnp.where(real, roads.x[perm], 1e9), jnp.where(real, roads.y[perm], 1e9)
  gs = jnp.where(real, group[perm], NUM_GROUPS).astype(jnp.int32)
  per_group = lambda size: [jnp.stack(v) for v in zip(*[_bounds(xs, ys, gs == g, size) for g in range(NUM_GROUPS)])]
  (cc, cr, ch), (sc, sr, sh) = per_group(CHUNK), per_group(CHUNK * SUPER)
  return RoadIndex(xs=xs, ys=ys, perm=perm, group=gs, chunk_centre=cc, chunk_radius=cr, chunk_has=ch,
                   super_centre=sc, super_radius=sr, super_has=sh)


def _nearest_in_group(index: RoadIndex, g: int, x, y, k: int, query_ok):
  """(O, k) original indices of the k nearest points of group g, nearest first (-1 where fewer exist), by a
  three-level search: the SEARCH[g] best super-chunks by lower bound, their best chunks, then their points.

  Per level only a handful of blocks are ranked (lax.top_k is slow on CPU: its cost grows with the row length);
  the chunks hold one group each (apart from at most one at each group boundary), so few are needed. On every
  real scene the result equals the brute-force k nearest for every object at every refresh of a log replay.
  """
  n_super, n_chunk = SEARCH[g]
  o = x.shape[0]
  lower = lambda c, r: jnp.hypot(x[:, None] - c[..., 0], y[:, None] - c[..., 1]) - r
  ks = min(n_super, index.super_has.shape[1])
  _, sup = jax.lax.top_k(jnp.where(index.super_has[g] & query_ok[:, None],
                                   -lower(index.super_centre[g], index.super_radius[g]), -jnp.inf), ks)  # (O, ks)
  chunks = (sup[:, :, None] * SUPER + jnp.arange(SUPER)).reshape(o, -1)  # (O, ks * SUPER)
  # Blocks are gathered whole (rows of (S, SUPER, ...) and (C, CHUNK) views), not element by element: the same
  # values in the same order, at a fraction of the cost of per-element gathers on CPU.
  blocks = lambda a, size: a.reshape((-1, size) + a.shape[1:])
  per_chunk = lambda a: blocks(a, SUPER)[sup].reshape((o, -1) + a.shape[1:])  # (C, ...) -> (O, ks * SUPER, ...)
  score = jnp.where(per_chunk(index.chunk_has[g]) & query_ok[:, None],
                    -lower(per_chunk(index.chunk_centre[g]), per_chunk(index.chunk_radius[g])), -jnp.inf)
  _, j = jax.lax.top_k(score, min(n_chunk, chunks.shape[1]))
  best = jnp.take_along_axis(chunks, j, 1)  # (O, kc)
  pts = (best[:, :, None] * CHUNK + jnp.arange(CHUNK)).reshape(o, -1)  # (O, kc * CHUNK)
  per_point = lambda a: blocks(a, CHUNK)[best].reshape(o, -1)  # (Pp,) -> (O, kc * CHUNK)
  d2 = (per_point(index.xs) - x[:, None]) ** 2 + (per_point(index.ys) - y[:, None]) ** 2
  score, j = jax.lax.top_k(jnp.where((per_point(index.group) == g) & query_ok[:, None], -d2, -jnp.inf),
                           min(k, pts.shape[1]))
  idx = jnp.where(jnp.isfinite(score), index.perm[jnp.take_along_axis(pts, j, 1)], -1)
  if idx.shape[1] < k:
    idx = jnp.pad(idx, ((0, 0), (0, k - idx.shape[1])), constant_values=-1)
  return idx.astype(jnp.int32)


def edge_slots(k: int) -> int:
  """Default number of road-edge slots among k candidates (44 of 64). Measured on the real logs with refresh every
  10 steps: 32 of 64 slots let 5 of 86 moving vehicles flicker off-road from stale candidates, 44 none."""
  return (11 * k) // 16


def nearest_road_points(roads: types.RoadPoints, x, y, k: int, num_edge: int | None = None,
                        num_stop: int = NUM_STOP, index: RoadIndex | None = None, query_ok=None):
  """Road candidates (O, k) int32 per object, -1 where missing; x, y (O,) query positions; query_ok (O,) bool
  optional: queries to answer (the others get -1 everywhere, and cost little: lax.top_k's CPU cost grows with
  the finite entries of a row).

  Layout: [num_edge nearest road-edge points (every EDGE_STRIDE-th point, see road_edge_signed_distance) |
  num_stop nearest stop signs | the rest nearest other points (lanes, lines, crosswalks, ...)], each group
  nearest first. Road edges get their own quota so off-road is decided even where lane points crowd them out; stop
  signs (single points, 3 m off the lane) get theirs so the stop-sign check always sees them.
  Call at reset and every few steps with the scene's `index` (build_road_index, built at reset; built here when
  None); passing a look-ahead position (x + vx * half the refresh interval) keeps the candidates centred on the
  stretch the object will drive before the next refresh.
  """
  chex.assert_rank([x, y], 1)
  num_edge = edge_slots(k) if num_edge is None else num_edge
  rest = k - num_edge - num_stop
  if rest < 0:
    raise ValueError(f"nearest_road_points: k={k} < num_edge={num_edge} + num_stop={num_stop}")
  index = build_road_index(roads) if index is None else index
  quotas = ((GROUP_EDGE, num_edge), (GROUP_STOP, num_stop), (GROUP_OTHER, rest))
  query_ok = jnp.ones(x.shape, bool) if query_ok is None else query_ok
  return jnp.concatenate([_nearest_in_group(index, g, x, y, n, query_ok) for g, n in quotas if n], 1)


def brute_force_nearest(roads: types.RoadPoints, x, y, k: int):
  """(O, k) nearest valid road points by a full top_k over every point (the reference the chunk search is tested
  against, and the Waymax-style baseline in the benchmark)."""
  d2 = (roads.x[None, :] - x[:, None]) ** 2 + (roads.y[None, :] - y[:, None]) ** 2
  score, idx = jax.lax.top_k(jnp.where(roads.valid[None, :], -d2, -jnp.inf), k)
  return jnp.where(jnp.isfinite(score), idx, -1).astype(jnp.int32)
