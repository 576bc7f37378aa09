"""GPUDrive JSON reader on the 10 real WOMD scenes: counts, masks, values and clear errors on bad input.

Expected values are derived independently from the JSON with plain `json`, and a few are the constants of the table
in ../shared/data/README.md.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from shared.scenes import gpudrive, types
from shared.scenes.gpudrive import SceneError

CONFIG = types.SceneConfig()  # 128 objects / 20000 points: nothing in the real folder is cut
ERR = -10000.0
# From the README table: scenario id -> (objects, valid@t10, road points, TL lanes, sdc index).
README_ROWS = {
    "2a173b334be3d32c": (15, 11, 14648, 12, 14),
    "db4edc9bd0c9d18c": (81, 57, 5388, 0, 80),
    "792d65eb579314db": (99, 73, 10037, 0, 98),
    "74e892ddfe3b9b8": (7, 4, 9305, 0, 6),
}
TL_FILE = "tfrecord-00000-of-00150_2a173b334be3d32c.json"
SMALL_FILE = "tfrecord-00004-of-00150_74e892ddfe3b9b8.json"


@pytest.fixture(scope="module")
def loaded(real_scene_files):
  """[(path, plain json dict, Scenario, SceneMeta)] for every real file."""
  out = []
  for f in real_scene_files:
    d = json.loads(f.read_text())
    scenario, meta = gpudrive.read_scene(str(f), CONFIG)
    out.append((f, d, scenario, meta))
  return out


def test_folder_has_the_ten_readme_scenes(loaded):
  assert len(loaded) == 10
  o = [s.objects for _, _, s, _ in loaded]
  assert sum(int(x.exists.sum()) for x in o) == 379
  assert sum(int(x.valid[:, 10].sum()) for x in o) == 249
  assert sum(int(s.roads.valid.sum()) for _, _, s, _ in loaded) == 108598
  by_id = {m.scenario_id: s for _, _, s, m in loaded}
  for sid, (n, v10, pts, tl, sdc) in README_ROWS.items():
    s = by_id[sid]
    assert (int(s.objects.exists.sum()), int(s.objects.valid[:, 10].sum()), int(s.roads.valid.sum()),
            int(s.lights.valid.any(-1).sum()), int(np.argmax(s.objects.is_sdc))) == (n, v10, pts, tl, sdc)


def test_counts_match_plain_json(loaded):
  for f, d, s, m in loaded:
    objs = d["objects"]
    assert m.scenario_id == d["scenario_id"]
    assert m.num_objects == int(s.objects.exists.sum()) == len(objs), f.name
    assert int(s.objects.valid[:, 10].sum()) == sum(bool(o["valid"][10]) for o in objs), f.name
    assert int(s.roads.valid.sum()) == sum(len(r["geometry"]) for r in d["roads"]), f.name
    assert int(s.lights.valid.any(-1).sum()) == len(d["tl_states"]), f.name
    assert m.sdc_index == d["metadata"]["sdc_track_index"], f.name
    assert s.objects.is_sdc.sum() == 1 and s.objects.is_sdc[m.sdc_index], f.name
    kinds = [types.OBJECT_TYPE_IDS[o["type"]] for o in objs]
    np.testing.assert_array_equal(s.objects.object_type[: len(objs)], kinds)
    np.testing.assert_array_equal(s.objects.object_id[: len(objs)], [o["id"] for o in objs])
    assert (m.cut_objects, m.cut_road_points, m.cut_tl_lanes) == (0, 0, 0)


def test_values_masks_and_padding(loaded):
  for f, d, s, m in loaded:
    o, n = s.objects, len(d["objects"])
    ox, oy = m.origin_xy
    for i, obj in enumerate(d["objects"]):
      v = np.array(obj["valid"], bool)
      px = np.array([p["x"] for p in obj["position"]])
      np.testing.assert_array_equal(o.valid[i], v)
      # Every invalid step in these files holds the fill value -10000; all of them must come out masked and zero.
      assert np.all(px[~v] == ERR) and np.all(o.x[i][~v] == 0) and np.all(o.yaw[i][~v] == 0)
      np.testing.assert_allclose(o.x[i][v], px[v] - ox, atol=2e-3)
      heading = np.array(obj["heading"])[v]
      # Wrapped-angle difference, so a logged -pi and a stored +pi-ish agree.
      diff = np.angle(np.exp(1j * (o.yaw[i][v].astype(np.float64) - heading)))
      assert np.abs(diff).max(initial=0) < 1e-5
      np.testing.assert_allclose(o.goal_x[i], obj["goalPosition"]["x"] - ox, atol=2e-3)
      assert o.length[i] == np.float32(obj["length"])
    assert np.all((o.yaw >= -np.pi) & (o.yaw < np.pi))
    # Padding rows: zero, invalid, typed UNSET, id -1.
    for leaf in (o.x, o.y, o.yaw, o.vel_x, o.vel_y, o.length, o.width, o.goal_x, o.goal_y):
      assert not np.any(leaf[n:]), f.name
    assert not o.valid[n:].any() and not o.exists[n:].any() and np.all(o.object_id[n:] == -1)
    assert np.all(o.object_type[n:] == types.TYPE_UNSET)


def test_road_points_keep_geometry_types_and_directions(loaded):
  for f, d, s, m in loaded:
    r = s.roads
    gx = np.concatenate([[p["x"] for p in road["geometry"]] for road in d["roads"]])
    mt = np.concatenate([[road["map_element_id"]] * len(road["geometry"]) for road in d["roads"]])
    k = gx.size
    np.testing.assert_allclose(r.x[:k], gx - m.origin_xy[0], atol=2e-3)
    np.testing.assert_array_equal(r.map_type[:k], mt)
    assert not r.valid[k:].any() and not np.any(r.x[k:]) and np.all(r.map_type[k:] == types.MAP_UNKNOWN)
    norm = np.hypot(r.dir_x[:k], r.dir_y[:k])
    single = np.concatenate([[len(road["geometry"]) == 1] * len(road["geometry"]) for road in d["roads"]])
    assert np.all(norm[single] == 0)
    # Multi-point elements get unit directions except where two consecutive points coincide.
    assert np.mean(np.abs(norm[~single] - 1) < 1e-5) > 0.99


def test_traffic_lights_kept(loaded):
  (f, d, s, m), = [x for x in loaded if x[0].name == TL_FILE]
  lanes = sorted(d["tl_states"], key=int)
  lt = s.lights
  np.testing.assert_array_equal(lt.lane_id[:12], [int(k) for k in lanes])
  assert np.all(lt.lane_id[12:] == -1) and not lt.valid[12:].any()
  for k, lane in enumerate(lanes):
    tl = d["tl_states"][lane]
    want = [types.TL_STATE_IDS[x] for x in tl["state"]]
    np.testing.assert_array_equal(lt.state[k, tl["time_index"]], want)
    want_valid = np.zeros(91, bool)
    want_valid[tl["time_index"]] = True  # 8 lanes are listed at t=0..90, 4 only from t=55
    np.testing.assert_array_equal(lt.valid[k], want_valid)
    assert np.all(lt.state[k][~want_valid] == 0)
    np.testing.assert_allclose(lt.stop_x[k], tl["x"][0] - m.origin_xy[0], atol=2e-3)
  assert int(lt.valid.sum()) == 8 * 91 + 4 * 36


# ---------------------------------------------------------------- bad input: one SceneError naming file and field


@pytest.fixture(scope="module")
def small_json(real_scene_dir):
  return json.loads((real_scene_dir / SMALL_FILE).read_text())


def _first_valid(obj) -> int:
  return obj["valid"].index(True)


def _write(tmp_path, name, d):
  p = tmp_path / name
  p.write_text(json.dumps(d))
  return p


def _error(path) -> SceneError:
  with pytest.raises(SceneError) as e:
    gpudrive.read_scene(str(path), types.SceneConfig(max_objects=8, max_road_points=64, max_tl_lanes=2))
  return e.value


def test_truncated_json(tmp_path, real_scene_dir):
  p = tmp_path / "cut.json"
  p.write_bytes((real_scene_dir / SMALL_FILE).read_bytes()[:5000])
  e = _error(p)
  assert e.field == "<json>" and str(e).startswith("cut.json: field '<json>'") and "truncated" in str(e)


def test_missing_field(tmp_path, small_json):
  d = copy.deepcopy(small_json)
  del d["objects"][3]["heading"]
  e = _error(_write(tmp_path, "nohead.json", d))
  assert e.field == "objects[3].heading" and "missing" in str(e) and "nohead.json" in str(e)


def test_nan_at_valid_step(tmp_path, small_json):
  d = copy.deepcopy(small_json)
  t = _first_valid(d["objects"][2])
  d["objects"][2]["position"][t]["x"] = math.nan  # json.dumps writes NaN, json.loads reads it back
  e = _error(_write(tmp_path, "nan.json", d))
  assert e.field == f"objects[2].position[{t}]" and "nan" in str(e).lower()


def test_nan_at_invalid_step_is_masked(tmp_path, small_json):
  d = copy.deepcopy(small_json)
  obj = d["objects"][0]
  t = obj["valid"].index(False)
  obj["position"][t]["x"] = math.nan
  obj["heading"][t] = math.inf
  s, _ = gpudrive.read_scene(str(_write(tmp_path, "ok.json", d)), CONFIG)
  assert s.objects.x[0, t] == 0 and s.objects.yaw[0, t] == 0 and np.isfinite(s.objects.x).all()


def test_unknown_light_state(tmp_path, real_scene_dir):
  d = json.loads((real_scene_dir / TL_FILE).read_text())
  d["tl_states"]["185"]["state"][7] = "purple"
  e = _error(_write(tmp_path, "tl.json", d))
  assert e.field == "tl_states[185].state" and "'purple'" in str(e)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("objects"), "objects"),
    (lambda d: d["objects"][1].__setitem__("valid", [True] * 90), "objects[1].valid"),
    (lambda d: d["objects"][1].__setitem__("valid", ["yes"] * 91), "objects[1].valid"),
    (lambda d: d["objects"][1].__setitem__("id", "abc"), "objects[1].id"),
    (lambda d: d["objects"][1].__setitem__("length", [4.0]), "objects[1].length"),
    (lambda d: d["objects"][1]["velocity"].__setitem__(4, {"x": 1.0}), "objects[1].velocity"),
    (lambda d: d["roads"][5].__setitem__("map_element_id", "lane"), "roads[5].map_element_id"),
    (lambda d: d["roads"][5]["geometry"][0].__setitem__("y", None), "roads[5].geometry"),
    (lambda d: d["metadata"].__setitem__("sdc_track_index", 7), "metadata.sdc_track_index"),
])
def test_schema_errors_name_the_field(tmp_path, small_json, edit, field):
  d = copy.deepcopy(small_json)
  edit(d)
  e = _error(_write(tmp_path, "bad.json", d))
  assert e.field == field and str(e).startswith(f"bad.json: field '{field}'")


def test_not_a_scene_at_all(tmp_path):
  assert _error(_write(tmp_path, "list.json", [1, 2])).field == "<top>"
  assert _error(tmp_path / "absent.json").field == "<file>"
