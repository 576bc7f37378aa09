"""The logged path of each object as a route: arc length, projection of a point onto it, and where it goes past the
log's end (PathEnd: the lanes that carry on from there, or straight on without roads).

Shapes: O objects, T log steps. Everything is jit/vmap friendly, like `shared.sim.geometry`, which it builds on.
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp

from shared.scenes import types
from shared.sim.geometry import point_segment_distance
from shared.sim.road_index import argmin_last


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
