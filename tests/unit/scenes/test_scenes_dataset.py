"""Folder loading (JSON + shards, bad files skipped and counted), exact re-padding of shards, batch iteration."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest

from shared.scenes import dataset, gpudrive, native, types
from shared.scenes.gpudrive import SceneError

SMALL = types.SceneConfig(max_objects=100, max_road_points=16384, max_tl_lanes=12)  # fits every real scene


@pytest.fixture(scope="module")
def real_small(real_scene_dir):
  res = dataset.load_folder(real_scene_dir, SMALL)
  assert res.num_skipped == 0
  return res


def _same(a: types.Scenario, b: types.Scenario) -> bool:
  fa, fb = native.flatten(a), native.flatten(b)
  return all(fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]) for k in fa)


def test_real_folder_loads(real_small, real_scene_files):
  assert len(real_small.scenarios) == 10 and real_small.num_files == 10 and real_small.errors == []
  assert real_small.sources == [f.name for f in real_scene_files]
  assert real_small.scenarios[0].objects.x.shape == (100, 91)
  assert sum(m.num_objects for m in real_small.metas) == 379


def test_limit_and_progress(real_scene_dir):
  calls = []
  res = dataset.load_folder(real_scene_dir, SMALL, limit=3, progress=lambda *a: calls.append(a))
  assert len(res.scenarios) == len(res.metas) == 3 and res.num_files == 3
  assert [c[:2] for c in calls] == [(1, 10), (2, 10), (3, 10)]


def test_mixed_folder_skips_bad_files(real_scene_dir, real_small, tmp_path, caplog):
  names = sorted(p.name for p in real_scene_dir.glob("*.json"))
  for name in names[:3]:
    shutil.copy(real_scene_dir / name, tmp_path / name)
  text = (real_scene_dir / names[3]).read_text()
  (tmp_path / "a_truncated.json").write_text(text[:3000])
  d = json.loads(text)
  del d["roads"][2]["geometry"]
  (tmp_path / "b_missing.json").write_text(json.dumps(d))
  d = json.loads(text)
  obj = d["objects"][0]
  obj["heading"][obj["valid"].index(True)] = math.nan
  (tmp_path / "c_nan.json").write_text(json.dumps(d))
  d = json.loads((real_scene_dir / names[0]).read_text())
  d["tl_states"]["189"]["state"][0] = "blinking"
  (tmp_path / "d_tl.json").write_text(json.dumps(d))
  good = tmp_path / f"e_good{native.SHARD_SUFFIX}"
  native.write_shard(good, real_small.scenarios[4:6], real_small.metas[4:6], SMALL)
  flipped = bytearray(good.read_bytes())
  flipped[len(flipped) // 2] ^= 0xFF
  (tmp_path / f"f_flipped{native.SHARD_SUFFIX}").write_bytes(bytes(flipped))
  (tmp_path / "notes.txt").write_text("not a scene")  # ignored: not a scene suffix
  with caplog.at_level(logging.ERROR):
    res = dataset.load_folder(tmp_path, SMALL)
  assert len(res.scenarios) == 3 + 2 and res.num_skipped == 5 and res.num_files == 3 + 4 + 2
  errors = dict(res.errors)
  assert errors["a_truncated.json"].startswith("a_truncated.json: field '<json>'")
  assert errors["b_missing.json"] == "b_missing.json: field 'roads[2].geometry': missing"
  assert errors["c_nan.json"].startswith("c_nan.json: field 'objects[0].heading[")
  assert errors["d_tl.json"].startswith("d_tl.json: field 'tl_states[189].state': unknown light state")
  assert errors[f"f_flipped{native.SHARD_SUFFIX}"].startswith(f"f_flipped{native.SHARD_SUFFIX}: field '")
  assert all("\n" not in m for m in errors.values())
  skips = [r for r in caplog.records if r.getMessage().startswith("skipping ")]
  assert len(skips) == 5
  # Sorted file order: a_..f_ before tfrecord-..., so the shard's two scenes come first.
  assert res.sources == [good.name, good.name] + names[:3] and res.metas[:2] == real_small.metas[4:6]
  assert _same(res.scenarios[1], real_small.scenarios[5]) and _same(res.scenarios[2], real_small.scenarios[0])


def test_shard_with_other_caps_is_repadded_exactly(real_small, real_scene_files, tmp_path):
  big = types.SceneConfig()  # 128 / 20000 / 16
  scenarios, metas = zip(*(gpudrive.read_scene(str(f), big) for f in real_scene_files[:4]))
  native.write_shard(tmp_path / f"s{native.SHARD_SUFFIX}", list(scenarios), list(metas), big)
  # Shrinking drops only padding here (<= 49 objects, <= 16226 points), so it equals reading JSON at SMALL.
  res = dataset.load_folder(tmp_path, SMALL)
  assert res.num_skipped == 0
  for got, want in zip(res.scenarios, real_small.scenarios[:4]):
    assert _same(got, want)
  grown = types.SceneConfig(max_objects=200, max_road_points=20001, max_tl_lanes=20)
  regrown = dataset.repad(types.stack(res.scenarios), SMALL, grown, "x")
  for got, f in zip(types.unstack(regrown), real_scene_files[:4]):
    assert _same(got, gpudrive.read_scene(str(f), grown)[0])


def test_shard_that_would_need_a_cut_is_rejected(real_scene_files, tmp_path):
  cfg = types.SceneConfig()
  s, m = gpudrive.read_scene(str(real_scene_files[-1]), cfg)  # 99 objects
  native.write_shard(tmp_path / f"s{native.SHARD_SUFFIX}", [s], [m], cfg)
  res = dataset.load_folder(tmp_path, types.SceneConfig(max_objects=50))
  assert res.scenarios == [] and res.num_skipped == 1
  assert "field 'config.max_objects': scenes use more than 50 entries" in res.errors[0][1]
  with pytest.raises(SceneError, match="num_timesteps"):
    dataset.load_file(tmp_path / f"s{native.SHARD_SUFFIX}", types.SceneConfig(num_timesteps=80))


def test_iter_files(tmp_path, real_scene_dir):
  for name in ("b.json", f"a{native.SHARD_SUFFIX}", "c.npz", ".hidden.tmp", "d.JSONL"):
    (tmp_path / name).write_text("")
  (tmp_path / "sub.json").mkdir()
  assert [p.name for p in dataset.iter_files(tmp_path)] == [f"a{native.SHARD_SUFFIX}", "b.json"]
  assert len(dataset.iter_files(real_scene_dir)) == 10
  with pytest.raises(FileNotFoundError):
    dataset.iter_files(tmp_path / "nope")


def test_batch_iterator(real_small):
  scenes = real_small.scenarios[:5]
  ids = [int(s.objects.object_id[0]) for s in scenes]
  it = dataset.batch_iterator(scenes, 2, seed=3, with_indices=True)
  draws = [next(it) for _ in range(5)]
  idx = np.concatenate([i for _, i in draws])
  # Two full epochs in 10 draws: each a permutation of the 5 scenes.
  assert sorted(idx[:5]) == sorted(idx[5:]) == [0, 1, 2, 3, 4]
  for batch, i in draws:
    assert batch.objects.x.shape == (2, 100, 91) and batch.roads.valid.shape == (2, 16384)
    assert list(batch.objects.object_id[:, 0]) == [ids[k] for k in i]
  again = dataset.batch_iterator(scenes, 2, seed=3, with_indices=True)
  assert np.array_equal(np.concatenate([next(again)[1] for _ in range(5)]), idx)
  other = dataset.batch_iterator(scenes, 2, seed=4, with_indices=True)
  assert not np.array_equal(np.concatenate([next(other)[1] for _ in range(5)]), idx)
  fixed = dataset.batch_iterator(scenes, 7, shuffle=False, with_indices=True)
  assert list(next(fixed)[1]) == [0, 1, 2, 3, 4, 0, 1] and list(next(fixed)[1]) == [2, 3, 4, 0, 1, 2, 3]
  with pytest.raises(ValueError):
    next(dataset.batch_iterator([], 2))
