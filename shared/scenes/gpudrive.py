"""Reader for GPUDrive's JSON scene format (Waymo Open Motion Dataset scenes converted by GPUDrive).

Invalid values (-10000) become masked entries, headings are wrapped, map element types are kept, traffic lights are
kept where present. Anything malformed raises `SceneError` naming the file and the field.
"""

from __future__ import annotations

import json
import os

import numpy as np

from shared.scenes import padding, types

ERR_VAL = -1e4
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class SceneError(ValueError):
  """A scene file that cannot be read; the message names the file and the field."""

  def __init__(self, path: str, field: str, why: str):
    super().__init__(f"{os.path.basename(str(path))}: field '{field}': {why}")
    self.path, self.field, self.why = str(path), field, why


def _need(d, key, path, where):
  if not isinstance(d, dict) or key not in d:
    raise SceneError(path, f"{where}{key}", "missing")
  return d[key]


def _floats(values, path, field, n=None):
  try:
    a = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise SceneError(path, field, f"not numbers ({e})") from None
  if a.ndim != 1:
    raise SceneError(path, field, "expected a flat list of numbers")
  if n is not None and a.shape[0] != n:
    raise SceneError(path, field, f"has {a.shape[0]} entries, expected {n}")
  return a


def _scalar(value, path, field) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise SceneError(path, field, f"expected a number, got {type(value).__name__}")
  return float(value)


def _int(value, path, field, lo=INT32_MIN, hi=INT32_MAX) -> int:
  """An integer id that must fit the int32 arrays it lands in (a silent wrap would merge two ids)."""
  if isinstance(value, bool) or not isinstance(value, int):
    raise SceneError(path, field, f"expected an integer, got {value!r}")
  if not lo <= value <= hi:
    raise SceneError(path, field, f"{value} is outside [{lo}, {hi}]")
  return value


def _bools(values, path, field, n):
  if not isinstance(values, list) or len(values) != n:
    raise SceneError(path, field, f"expected a list of {n} booleans")
  if not all(isinstance(v, bool) or v in (0, 1) for v in values):
    raise SceneError(path, field, "entries must be true/false")
  return np.asarray(values, bool)


def _xy(points, path, field, n=None):
  if not isinstance(points, list):
    raise SceneError(path, field, "not a list")
  try:
    x = np.array([p["x"] for p in points], np.float64)
    y = np.array([p["y"] for p in points], np.float64)
  except (TypeError, KeyError, ValueError) as e:
    raise SceneError(path, field, f"malformed point ({type(e).__name__}: {e})") from None
  if x.ndim != 1 or y.ndim != 1:
    raise SceneError(path, field, "point coordinates must be numbers")
  if n is not None and x.shape[0] != n:
    raise SceneError(path, field, f"has {x.shape[0]} entries, expected {n}")
  return x, y


def parse_scene(d: dict, path: str, num_timesteps: int = 91) -> padding.RawScene:
  """Converts a decoded GPUDrive JSON dict into a RawScene (global frame, unpadded)."""
  if not isinstance(d, dict):
    raise SceneError(path, "<top>", "not a JSON object")
  objs = _need(d, "objects", path, "")
  roads = _need(d, "roads", path, "")
  if not isinstance(objs, list) or not isinstance(roads, list):
    raise SceneError(path, "objects" if not isinstance(objs, list) else "roads", "not a list")
  T = num_timesteps
  n = len(objs)
  raw = padding.empty_raw(str(d.get("name", os.path.basename(str(path)))), T)
  raw.scenario_id = str(d.get("scenario_id", raw.name))
  x = np.zeros((n, T)); y = np.zeros((n, T)); yaw = np.zeros((n, T)); vx = np.zeros((n, T)); vy = np.zeros((n, T))
  valid = np.zeros((n, T), bool)
  length = np.zeros(n); width = np.zeros(n); otype = np.zeros(n, int); oid = np.zeros(n, int)
  expert = np.zeros(n, bool)
  for i, o in enumerate(objs):
    w = f"objects[{i}]."
    valid[i] = _bools(_need(o, "valid", path, w), path, w + "valid", T)
    x[i], y[i] = _xy(_need(o, "position", path, w), path, w + "position", T)
    heading = _need(o, "heading", path, w)
    if not isinstance(heading, list):
      raise SceneError(path, w + "heading", "not a list")
    yaw[i] = _floats(heading, path, w + "heading", T)
    vx[i], vy[i] = _xy(_need(o, "velocity", path, w), path, w + "velocity", T)
    length[i] = _scalar(_need(o, "length", path, w), path, w + "length")
    width[i] = _scalar(_need(o, "width", path, w), path, w + "width")
    t = _need(o, "type", path, w)
    if not isinstance(t, str):
      raise SceneError(path, w + "type", f"expected a string, got {t!r}")
    otype[i] = types.OBJECT_TYPE_IDS.get(t.lower(), types.TYPE_OTHER)
    oid[i] = _int(o.get("id", i), path, w + "id")
    expert[i] = bool(o.get("mark_as_expert", False))
  # Fill values and non-finite numbers at valid steps are errors; at invalid steps they are just masked.
  for name, a in (("position", x), ("position", y), ("heading", yaw), ("velocity", vx), ("velocity", vy)):
    bad = valid & (~np.isfinite(a) | (a == ERR_VAL))
    if bad.any():
      i, t = map(int, np.argwhere(bad)[0])
      raise SceneError(path, f"objects[{i}].{name}[{t}]", f"invalid value {a[i, t]} at a valid step")
  for name, a in (("length", length), ("width", width)):
    if (~np.isfinite(a)).any() or (a < 0).any():
      i = int(np.nonzero(~np.isfinite(a) | (a < 0))[0][0])
      raise SceneError(path, f"objects[{i}].{name}", f"invalid size {a[i]}")
  raw.x, raw.y, raw.vel_x, raw.vel_y, raw.valid = x, y, vx, vy, valid
  raw.yaw = padding.wrap_angle(np.where(valid, yaw, 0.0))
  raw.length, raw.width, raw.object_type, raw.object_id = length, width, otype, oid
  meta = d.get("metadata", {}) or {}
  if not isinstance(meta, dict):
    raise SceneError(path, "metadata", "not an object")
  # An index that points nowhere means the file is inconsistent; silently dropping the SDC would change cutting.
  sdc = _int(meta.get("sdc_track_index", -1), path, "metadata.sdc_track_index", -1, n - 1)
  raw.is_sdc = np.zeros(n, bool)
  if sdc >= 0:
    raw.is_sdc[sdc] = True
  raw.controllable = (~expert) & (otype == types.TYPE_VEHICLE) & valid.any(axis=1)
  last = np.where(valid.any(axis=1), T - 1 - np.argmax(valid[:, ::-1], axis=1), 0)
  raw.goal_x = np.where(valid.any(axis=1), x[np.arange(n), last], 0.0)
  raw.goal_y = np.where(valid.any(axis=1), y[np.arange(n), last], 0.0)

  rx, ry, rtype, rel = [], [], [], []
  for j, r in enumerate(roads):
    w = f"roads[{j}]."
    gx, gy = _xy(_need(r, "geometry", path, w), path, w + "geometry")
    if not (np.isfinite(gx).all() and np.isfinite(gy).all()):
      raise SceneError(path, w + "geometry", "non-finite coordinate")
    tid = r.get("map_element_id")
    if tid is None:
      tid = types.ROAD_TYPE_DEFAULT_IDS.get(str(_need(r, "type", path, w)), types.MAP_UNKNOWN)
    tid = _int(tid, path, w + "map_element_id", -1, 255)
    rx.append(gx); ry.append(gy)
    rtype.append(np.full(gx.shape, tid)); rel.append(np.full(gx.shape, _int(r.get("id", j), path, w + "id")))
  cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
  raw.road_x, raw.road_y = cat(rx, np.float64), cat(ry, np.float64)
  raw.road_map_type, raw.road_element_id = cat(rtype, int), cat(rel, int)

  _parse_lights(d.get("tl_states", {}) or {}, path, raw, T)
  return raw


def _parse_lights(tl: dict, path: str, raw: padding.RawScene, T: int) -> None:
  if not isinstance(tl, dict):
    raise SceneError(path, "tl_states", "not an object")
  lanes = sorted(tl.keys(), key=lambda k: int(k) if str(k).lstrip("-").isdigit() else 0)
  L = len(lanes)
  raw.tl_lane_id = np.zeros(L, int); raw.tl_state = np.zeros((L, T), int); raw.tl_valid = np.zeros((L, T), bool)
  raw.tl_stop_x = np.zeros(L); raw.tl_stop_y = np.zeros(L)
  for k, lane in enumerate(lanes):
    s = tl[lane]
    w = f"tl_states[{lane}]."
    states = _need(s, "state", path, w)
    tidx = _need(s, "time_index", path, w)
    if not isinstance(states, list) or not isinstance(tidx, list):
      raise SceneError(path, w + ("state" if not isinstance(states, list) else "time_index"), "not a list")
    xs = _floats(_need(s, "x", path, w), path, w + "x")
    ys = _floats(_need(s, "y", path, w), path, w + "y")
    if not (len(states) == len(tidx) == xs.size == ys.size) or xs.ndim != 1:
      raise SceneError(path, w + "state", "state, time_index, x and y differ in length")
    if xs.size and not (np.isfinite(xs[0]) and np.isfinite(ys[0])):
      raise SceneError(path, w + "x", "non-finite stop point")
    try:
      raw.tl_lane_id[k] = _int(int(lane), path, f"tl_states[{lane}]")
    except ValueError:
      raise SceneError(path, f"tl_states[{lane}]", "lane id is not an integer") from None
    for st, t in zip(states, tidx):
      t = _int(t, path, w + "time_index")
      if 0 <= t < T:
        if str(st) not in types.TL_STATE_IDS:
          raise SceneError(path, w + "state", f"unknown light state {st!r}")
        raw.tl_state[k, t] = types.TL_STATE_IDS[str(st)]
        raw.tl_valid[k, t] = True
    if xs.size:
      raw.tl_stop_x[k], raw.tl_stop_y[k] = xs[0], ys[0]


def read_raw(path: str, num_timesteps: int = 91) -> padding.RawScene:
  """Reads one GPUDrive JSON file into a RawScene; raises SceneError on any problem."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise SceneError(path, "<file>", f"cannot read ({e.strerror})") from None
  try:
    d = json.loads(data)
  except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
    raise SceneError(path, "<json>", f"corrupt or truncated JSON ({e})") from None
  return parse_scene(d, path, num_timesteps)


def read_scene(path: str, config: types.SceneConfig = types.SceneConfig()) -> tuple[types.Scenario, types.SceneMeta]:
  """Reads one GPUDrive JSON file into a padded Scenario and its SceneMeta."""
  raw = read_raw(path, config.num_timesteps)
  return padding.pad_scene(raw, config)
