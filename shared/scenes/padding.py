"""From a variable-size `RawScene` (what readers and the generator produce) to a fixed-cap `Scenario`.

A scene larger than the caps is cut, never rejected: objects nearest the self-driving car at `init_step` are kept
(the car itself always), and road points nearest the self-driving car's logged path are kept. Cuts are reported in
`SceneMeta` and logged as a warning.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from shared.scenes import types

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RawScene:
  """One scene with its natural sizes, in a global or local metric frame (float64 allowed).

  Attributes:
    name: source name. scenario_id: id string.
    x, y, yaw, vel_x, vel_y: (N, T) float; invalid steps may hold anything (they are zeroed).
    valid: (N, T) bool.  length, width: (N,) metres.  object_type: (N,) int (types.TYPE_*).
    object_id: (N,) int.  is_sdc, controllable: (N,) bool.  goal_x, goal_y: (N,) metres.
    road_x, road_y: (R,) metres; road_map_type, road_element_id: (R,) int. Points of one element are
      consecutive and in polyline order; direction is derived from them.
    tl_lane_id: (L,) int; tl_state: (L, T) int; tl_stop_x, tl_stop_y: (L,); tl_valid: (L, T) bool.
  """

  name: str
  scenario_id: str
  x: np.ndarray
  y: np.ndarray
  yaw: np.ndarray
  vel_x: np.ndarray
  vel_y: np.ndarray
  valid: np.ndarray
  length: np.ndarray
  width: np.ndarray
  object_type: np.ndarray
  object_id: np.ndarray
  is_sdc: np.ndarray
  controllable: np.ndarray
  goal_x: np.ndarray
  goal_y: np.ndarray
  road_x: np.ndarray
  road_y: np.ndarray
  road_map_type: np.ndarray
  road_element_id: np.ndarray
  tl_lane_id: np.ndarray
  tl_state: np.ndarray
  tl_stop_x: np.ndarray
  tl_stop_y: np.ndarray
  tl_valid: np.ndarray


def wrap_angle(a):
  """Wraps radians to [-pi, pi)."""
  return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def wrap_angle_f32(a) -> np.ndarray:
  """Wraps radians to [-pi, pi) and casts to float32 so the cast cannot round a value up onto float32(pi)."""
  out = wrap_angle(a).astype(np.float32)
  return np.where(out >= np.float32(np.pi), np.float32(-np.pi), out)


def road_directions(x: np.ndarray, y: np.ndarray, element_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Unit vector from each point to the next point of the same element; an element's last point repeats the
  previous direction; single-point elements (stop signs) get (0, 0)."""
  n = x.shape[0]
  dx = np.zeros(n)
  dy = np.zeros(n)
  if n < 2:
    return dx, dy
  same_next = element_id[1:] == element_id[:-1]
  fdx = np.where(same_next, x[1:] - x[:-1], 0.0)
  fdy = np.where(same_next, y[1:] - y[:-1], 0.0)
  dx[:-1], dy[:-1] = fdx, fdy
  # Last point of a multi-point element: copy the direction of the segment before it.
  last = np.ones(n, bool)
  last[:-1] = ~same_next
  has_prev = np.zeros(n, bool)
  has_prev[1:] = element_id[1:] == element_id[:-1]
  fix = last & has_prev
  idx = np.nonzero(fix)[0]
  dx[idx], dy[idx] = dx[idx - 1], dy[idx - 1]
  norm = np.hypot(dx, dy)
  ok = norm > 1e-9
  dx = np.where(ok, dx / np.where(ok, norm, 1.0), 0.0)
  dy = np.where(ok, dy / np.where(ok, norm, 1.0), 0.0)
  return dx, dy


def _sdc_index(raw: RawScene) -> int:
  idx = np.nonzero(raw.is_sdc)[0]
  return int(idx[0]) if idx.size else -1


def _reference_xy(raw: RawScene, init_step: int) -> np.ndarray:
  """Where the scene is centred: the self-driving car at init_step, else the mean of valid positions there."""
  t = min(init_step, raw.valid.shape[1] - 1) if raw.valid.size else 0
  sdc = _sdc_index(raw)
  if sdc >= 0 and raw.valid[sdc].any():
    ts = t if raw.valid[sdc, t] else int(np.nonzero(raw.valid[sdc])[0][0])
    return np.array([raw.x[sdc, ts], raw.y[sdc, ts]], np.float64)
  if raw.valid.size and raw.valid[:, t].any():
    m = raw.valid[:, t]
    return np.array([raw.x[m, t].mean(), raw.y[m, t].mean()], np.float64)
  if raw.valid.any():
    return np.array([raw.x[raw.valid].mean(), raw.y[raw.valid].mean()], np.float64)
  if raw.road_x.size:
    return np.array([raw.road_x.mean(), raw.road_y.mean()], np.float64)
  return np.zeros(2, np.float64)


def _select_objects(raw: RawScene, cap: int, ref: np.ndarray, init_step: int) -> np.ndarray:
  """Indices of the objects to keep, SDC first then by distance to `ref` (first valid position if invalid at t)."""
  n = raw.x.shape[0]
  if n <= cap:
    return np.arange(n)
  t = min(init_step, raw.valid.shape[1] - 1)
  first_valid = np.argmax(raw.valid, axis=1)
  tt = np.where(raw.valid[:, t], t, first_valid)
  px = raw.x[np.arange(n), tt]
  py = raw.y[np.arange(n), tt]
  dist = np.hypot(px - ref[0], py - ref[1])
  dist = np.where(raw.valid.any(axis=1), dist, np.inf)
  dist = np.where(raw.is_sdc, -1.0, dist)
  keep = np.sort(np.argsort(dist, kind="stable")[:cap])
  return keep


def _select_road_points(raw: RawScene, cap: int, anchor_xy: np.ndarray) -> np.ndarray:
  """Indices of the road points nearest any anchor point (the SDC's logged path), kept in original order."""
  r = raw.road_x.shape[0]
  if r <= cap:
    return np.arange(r)
  pts = np.stack([raw.road_x, raw.road_y], -1)
  best = np.full(r, np.inf)
  for a in anchor_xy:  # anchors are few (a path subsampled to <= 20 points)
    best = np.minimum(best, np.hypot(pts[:, 0] - a[0], pts[:, 1] - a[1]))
  return np.sort(np.argsort(best, kind="stable")[:cap])


def pad_scene(raw: RawScene, config: types.SceneConfig = types.SceneConfig()) -> tuple[types.Scenario, types.SceneMeta]:
  """Recentres, cuts to the caps and pads a RawScene into a numpy-backed Scenario plus its SceneMeta."""
  O, P, L = config.max_objects, config.max_road_points, config.max_tl_lanes
  T = config.num_timesteps
  if min(O, P, L, T) < 1:
    raise ValueError(f"caps must be >= 1, got {config}")
  n, t_src = raw.x.shape if raw.x.ndim == 2 else (0, T)
  if t_src != T:
    raise ValueError(f"{raw.name}: field 'valid' has {t_src} timesteps, config expects {T}")
  ref = _reference_xy(raw, config.init_step)

  keep_obj = _select_objects(raw, O, ref, config.init_step)
  sdc = _sdc_index(raw)
  if sdc >= 0 and raw.valid[sdc].any():
    path = np.stack([raw.x[sdc][raw.valid[sdc]], raw.y[sdc][raw.valid[sdc]]], -1)
    anchors = path[np.linspace(0, len(path) - 1, min(20, len(path))).astype(int)]
  else:
    anchors = ref[None]
  keep_road = _select_road_points(raw, P, anchors)
  nl = raw.tl_lane_id.shape[0]
  keep_tl = np.arange(min(nl, L))
  if nl > L:
    d = np.hypot(raw.tl_stop_x - ref[0], raw.tl_stop_y - ref[1])
    keep_tl = np.sort(np.argsort(d, kind="stable")[:L])

  meta = types.SceneMeta(
      name=raw.name, scenario_id=raw.scenario_id, origin_xy=(float(ref[0]), float(ref[1])),
      num_objects=int(n), num_road_points=int(raw.road_x.shape[0]), num_tl_lanes=int(nl),
      cut_objects=int(n - keep_obj.size), cut_road_points=int(raw.road_x.shape[0] - keep_road.size),
      cut_tl_lanes=int(nl - keep_tl.size),
  )
  if meta.cut_objects or meta.cut_road_points or meta.cut_tl_lanes:
    log.warning("%s: cut to caps: dropped %d objects, %d road points, %d light lanes", raw.name,
                meta.cut_objects, meta.cut_road_points, meta.cut_tl_lanes)

  def obj(a, fill, dtype, timed):
    shape = (O, T) if timed else (O,)
    out = np.full(shape, fill, dtype)
    out[: keep_obj.size] = np.asarray(a)[keep_obj]
    return out

  valid = obj(raw.valid, False, bool, True)
  # np.where, not a multiply by the mask: invalid steps may hold NaN or inf, and NaN * 0 is NaN.
  masked = lambda a: np.where(valid, obj(a, 0.0, np.float64, True), 0.0)
  exists = np.zeros(O, bool)
  exists[: keep_obj.size] = True
  ever_valid = valid.any(axis=1)
  is_sdc = obj(raw.is_sdc, False, bool, False)
  meta.sdc_index = int(np.nonzero(is_sdc)[0][0]) if is_sdc.any() else -1
  objects = types.ObjectTracks(
      x=masked(raw.x - ref[0]).astype(np.float32), y=masked(raw.y - ref[1]).astype(np.float32),
      yaw=np.where(valid, wrap_angle_f32(masked(raw.yaw)), np.float32(0.0)),
      vel_x=masked(raw.vel_x).astype(np.float32), vel_y=masked(raw.vel_y).astype(np.float32),
      valid=valid,
      length=obj(raw.length, 0.0, np.float32, False), width=obj(raw.width, 0.0, np.float32, False),
      object_type=obj(raw.object_type, types.TYPE_UNSET, np.int32, False),
      object_id=obj(raw.object_id, -1, np.int32, False),
      is_sdc=is_sdc, controllable=obj(raw.controllable, False, bool, False), exists=exists,
      goal_x=np.where(ever_valid, obj(raw.goal_x - ref[0], 0.0, np.float64, False), 0.0).astype(np.float32),
      goal_y=np.where(ever_valid, obj(raw.goal_y - ref[1], 0.0, np.float64, False), 0.0).astype(np.float32),
  )

  rx, ry = raw.road_x[keep_road] - ref[0], raw.road_y[keep_road] - ref[1]
  rel = raw.road_element_id[keep_road]
  # Directions come from the full polyline so a cut never changes a kept point's direction.
  full_dx, full_dy = road_directions(raw.road_x, raw.road_y, raw.road_element_id)
  nr = keep_road.size

  def road(a, fill, dtype):
    out = np.full((P,), fill, dtype)
    out[:nr] = a
    return out

  roads = types.RoadPoints(
      x=road(rx, 0.0, np.float32), y=road(ry, 0.0, np.float32),
      dir_x=road(full_dx[keep_road], 0.0, np.float32), dir_y=road(full_dy[keep_road], 0.0, np.float32),
      map_type=road(raw.road_map_type[keep_road], types.MAP_UNKNOWN, np.int32),
      element_id=road(rel, -1, np.int32), valid=road(np.ones(nr, bool), False, bool),
  )

  nt = keep_tl.size
  tl_state = np.zeros((L, T), np.int32)
  tl_valid = np.zeros((L, T), bool)
  tl_state[:nt] = raw.tl_state[keep_tl]
  tl_valid[:nt] = raw.tl_valid[keep_tl]
  tl_state *= tl_valid
  lane = np.full((L,), -1, np.int32)
  lane[:nt] = raw.tl_lane_id[keep_tl]
  sx = np.zeros((L,), np.float32)
  sy = np.zeros((L,), np.float32)
  sx[:nt] = raw.tl_stop_x[keep_tl] - ref[0]
  sy[:nt] = raw.tl_stop_y[keep_tl] - ref[1]
  lights = types.TrafficLights(lane_id=lane, state=tl_state, stop_x=sx, stop_y=sy, valid=tl_valid)
  return types.Scenario(objects=objects, roads=roads, lights=lights), meta


def empty_raw(name: str, num_timesteps: int) -> RawScene:
  """A RawScene with no objects, roads or lights (a starting point for builders and tests)."""
  z2 = np.zeros((0, num_timesteps))
  z1 = np.zeros((0,))
  return RawScene(
      name=name, scenario_id=name, x=z2, y=z2, yaw=z2, vel_x=z2, vel_y=z2, valid=z2.astype(bool),
      length=z1, width=z1, object_type=z1.astype(int), object_id=z1.astype(int), is_sdc=z1.astype(bool),
      controllable=z1.astype(bool), goal_x=z1, goal_y=z1, road_x=z1, road_y=z1, road_map_type=z1.astype(int),
      road_element_id=z1.astype(int), tl_lane_id=z1.astype(int), tl_state=z2.astype(int), tl_stop_x=z1,
      tl_stop_y=z1, tl_valid=z2.astype(bool),
  )
