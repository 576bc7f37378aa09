"""Scene sources: every spec form parsed, bad specs refused in one line, synthetic scenes made again from their
record, the real folder and a native shard loaded through the same call."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest

from shared.scenes import dataset, native, source, synthetic, types

DATA_DIR = pathlib.Path(__file__).resolve().parents[3].parent / "shared" / "data"
REAL_DIR = DATA_DIR / "gpudrive_womd"
SHORT = types.SceneConfig(max_objects=12, max_road_points=2000, max_tl_lanes=8, num_timesteps=41)
SMALL = types.SceneConfig(max_objects=100, max_road_points=16384, max_tl_lanes=12)  # fits every real scene


def _same(a: types.Scenario, b: types.Scenario) -> bool:
  fa, fb = native.flatten(a), native.flatten(b)
  return all(fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]) for k in fa)


@pytest.fixture(scope="module")
def real_dir() -> pathlib.Path:
  if not REAL_DIR.is_dir():
    pytest.skip(f"real scenes not found at {REAL_DIR}")
  return REAL_DIR


def test_parse_synthetic_forms():
  assert source.parse("synthetic") == source.SceneSource("synthetic", None, 16, 0, None)
  assert source.parse("synthetic", num=3, seed=5, vehicles=(4, 6)) == source.SceneSource("synthetic", None, 3, 5,
                                                                                          (4, 6))
  assert source.parse("synthetic:7", num=3, seed=2) == source.SceneSource("synthetic", None, 7, 2, None)
  assert source.is_synthetic("synthetic") and source.is_synthetic("synthetic:x")
  assert not source.is_synthetic("synthetic_scenes") and not source.is_synthetic("/data/synthetic")


def test_parse_folder_and_shard(tmp_path, monkeypatch):
  (tmp_path / "scenes").mkdir()
  shard = tmp_path / f"one{native.SHARD_SUFFIX}"
  shard.write_bytes(b"not read by parse")
  monkeypatch.chdir(tmp_path)
  folder = source.parse("scenes", num=4, seed=3, vehicles=(4, 6))  # relative path: made absolute; vehicles dropped
  assert folder == source.SceneSource("folder", str(tmp_path / "scenes"), 4, 3, None)
  assert source.parse(str(shard)) == source.SceneSource("shard", str(shard), None, 0, None)
  assert source.record(folder) == {"scenes": str(tmp_path / "scenes"), "num": 4, "seed": 3}


@pytest.mark.parametrize("spec, kwargs, words", [
    ("", {}, "empty spec"),
    ("   ", {}, "empty spec"),
    ("synthetic:", {}, "bad synthetic count"),
    ("synthetic:0", {}, "bad synthetic count"),
    ("synthetic:-2", {}, "bad synthetic count"),
    ("synthetic:abc", {}, "bad synthetic count"),
    ("synthetic", {"num": 0}, "scene count must be an integer >= 1, got 0"),
    ("synthetic", {"seed": -1}, "synthetic seed must be >= 0, got -1"),
    ("synthetic", {"vehicles": (6, 4)}, "1 <= low <= high"),
    ("synthetic", {"vehicles": (4,)}, "vehicles must be (low, high)"),
])
def test_bad_specs_raise_one_line(spec, kwargs, words):
  with pytest.raises(ValueError) as e:
    source.parse(spec, **kwargs)
  assert words in str(e.value) and "\n" not in str(e.value)


def test_missing_path_and_other_files(tmp_path):
  with pytest.raises(ValueError) as e:
    source.parse(str(tmp_path / "nope"))
  assert str(e.value) == f"no such scene folder: {tmp_path / 'nope'}"  # what `scenes replay` prints after "drivelab: "
  (tmp_path / "scene.json").write_text("{}")
  assert source.parse(str(tmp_path / "scene.json")).kind == "file"  # one GPUDrive JSON scene
  (tmp_path / "notes.txt").write_text("")
  with pytest.raises(ValueError, match=r"is not a scene file"):
    source.parse(str(tmp_path / "notes.txt"))
  with pytest.raises(ValueError, match="needs a 'scenes' entry"):
    source.from_record({"num": 2})


def test_synthetic_load_is_deterministic_and_remade_from_its_record():
  src = source.parse("synthetic", num=3, seed=7, vehicles=(4, 6))
  calls = []
  first = source.load(src, SHORT, progress=lambda *a: calls.append(a))
  assert len(first.scenarios) == len(first.metas) == 3 and first.errors == [] and first.skipped == 0
  assert [m.name for m in first.metas] == ["synthetic_7", "synthetic_8", "synthetic_9"]
  assert calls == [(1, 3, "synthetic_7"), (2, 3, "synthetic_8"), (3, 3, "synthetic_9")]
  assert first.scenarios[0].objects.x.shape == (12, 41)
  counts = [int(np.sum(np.asarray(s.objects.exists) & (np.asarray(s.objects.object_type) == types.TYPE_VEHICLE)))
            for s in first.scenarios]
  assert all(1 <= c <= 6 for c in counts), counts  # the narrowed range (the default one starts at 10)
  assert first.record == {"scenes": "synthetic", "num": 3, "seed": 7, "vehicles": [4, 6]}
  again = source.load(source.from_record(json.loads(json.dumps(first.record))), SHORT)
  assert [m.scenario_id for m in again.metas] == [m.scenario_id for m in first.metas]
  assert all(_same(a, b) for a, b in zip(again.scenarios, first.scenarios))
  # The same scenes synthetic.generate_many makes with the scene config's steps; another seed gives others.
  syn = dataclasses.replace(synthetic.SyntheticConfig(), num_timesteps=41, num_vehicles=(4, 6))
  made = synthetic.generate_many(3, 7, syn, SHORT)
  assert all(_same(a, b) for a, b in zip(first.scenarios, (p[0] for p in made)))
  other = source.load(source.parse("synthetic:1", seed=8, vehicles=(4, 6)), SHORT)
  assert _same(other.scenarios[0], first.scenarios[1]) and not _same(other.scenarios[0], first.scenarios[0])


def test_synthetic_default_record_lists_the_generators_vehicle_range():
  src = source.parse("synthetic:1", seed=0)
  assert source.record(src) == {"scenes": "synthetic", "num": 1, "seed": 0,
                                "vehicles": list(synthetic.SyntheticConfig().num_vehicles)}


def test_real_folder_load_and_record(real_dir):
  loaded = source.load(source.parse(str(real_dir), seed=1), SMALL)
  names = sorted(p.name for p in real_dir.glob("*.json"))
  assert len(loaded.scenarios) == 10 and loaded.num_files == 10 and loaded.skipped == 0
  assert [m.name for m in loaded.metas] == names
  assert sum(m.num_objects for m in loaded.metas) == 379
  assert loaded.scenarios[0].objects.x.shape == (100, 91)
  assert loaded.record == {"scenes": os.path.abspath(real_dir), "num": None, "seed": 1}
  ref = dataset.load_folder(real_dir, SMALL)
  assert all(_same(a, b) for a, b in zip(loaded.scenarios, ref.scenarios))
  cut = source.load(source.from_record(dict(loaded.record, num=3)), SMALL)
  assert [m.scenario_id for m in cut.metas] == [m.scenario_id for m in loaded.metas[:3]]


def test_shard_load_and_folder_with_a_bad_file(tmp_path):
  made = source.load(source.parse("synthetic:3", seed=11, vehicles=(4, 6)), SHORT)
  shard = tmp_path / f"syn{native.SHARD_SUFFIX}"
  native.write_shard(shard, made.scenarios, made.metas, SHORT)
  src = source.parse(str(shard))
  assert src.kind == "shard" and src.path == str(shard)
  loaded = source.load(src, SHORT)
  assert [m.scenario_id for m in loaded.metas] == [m.scenario_id for m in made.metas]
  assert all(_same(a, b) for a, b in zip(loaded.scenarios, made.scenarios))
  assert loaded.record == {"scenes": str(shard), "num": None, "seed": 0} and loaded.num_files == 1
  first_two = source.load(source.parse(str(shard), num=2), SHORT)
  assert [m.name for m in first_two.metas] == ["synthetic_11", "synthetic_12"]
  (tmp_path / "broken.json").write_text("{")
  folder = source.load(source.parse(str(tmp_path)), SHORT)
  assert folder.skipped == 1 and folder.errors[0][0] == "broken.json" and folder.num_files == 2
  assert [m.scenario_id for m in folder.metas] == [m.scenario_id for m in made.metas]
