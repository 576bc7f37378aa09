"""`drivelab scenes inspect` and `drivelab scenes convert` on the real folder, through the real CLI entry point."""

from __future__ import annotations

import argparse
import json

import numpy as np

from services.cli import scenes_io
from shared.scenes import dataset, native, types


def _run(argv: list[str]) -> int:
  """Runs `drivelab scenes ...` with only this module registered, so sibling command modules cannot break it."""
  parser = argparse.ArgumentParser(prog="drivelab scenes")
  scenes_io.register(parser.add_subparsers(dest="subcommand"))
  args = parser.parse_args(argv)
  return int(args.func(args) or 0)


def test_inspect_real_folder(real_scene_dir, real_scene_files, tmp_path, capsys):
  out_json = tmp_path / "inspect.json"
  rc = _run(["inspect", str(real_scene_dir), "--json", str(out_json)])
  text = capsys.readouterr().out
  assert rc == 0
  for f in real_scene_files:
    sid = json.loads(f.read_text())["scenario_id"]
    assert sid in text and f.name in text
  assert "379 (345/32/2)" in text and "skipped 0 file(s)" in text
  report = json.loads(out_json.read_text())
  t = report["totals"]
  assert (t["scenes"], t["objects"], t["valid_at_init"], t["road_points"], t["tl_lanes"]) == (10, 379, 249, 108598, 12)
  row = next(r for r in report["scenes"] if r["scenario_id"] == "db4edc9bd0c9d18c")
  assert (row["objects"], row["pedestrians"], row["cyclists"], row["sdc_index"]) == (81, 12, 1, 80)
  assert report["skipped"] == [] and report["config"]["max_objects"] == 128


def test_inspect_lists_skipped_files(real_scene_files, tmp_path, capsys):
  (tmp_path / "ok.json").write_bytes(real_scene_files[0].read_bytes())
  (tmp_path / "broken.json").write_text('{"objects": [')
  rc = _run(["inspect", str(tmp_path), "--max-objects", "16"])
  text = capsys.readouterr().out
  assert rc == 0 and "skipped 1 file(s)" in text and "broken.json: field '<json>'" in text
  assert _run(["inspect", str(tmp_path / "missing")]) == 1


def test_convert_then_load_back_identical(real_scene_dir, tmp_path, capsys):
  dst = tmp_path / "shards"
  caps = ["--max-objects", "100", "--max-road-points", "16384", "--max-tl-lanes", "12"]
  rc = _run(["convert", str(real_scene_dir), str(dst), "--shard-size", "4", *caps])
  text = capsys.readouterr().out
  assert rc == 0 and "converted 10 scenes from 10 files into 3 shard(s)" in text and "skipped 0" in text
  shards = sorted(p.name for p in dst.iterdir())
  assert shards == [f"scenes-0000{i}{native.SHARD_SUFFIX}" for i in range(3)]
  cfg = types.SceneConfig(max_objects=100, max_road_points=16384, max_tl_lanes=12)
  back, src = dataset.load_folder(dst, cfg), dataset.load_folder(real_scene_dir, cfg)
  assert back.metas == src.metas and back.num_skipped == 0 and len(back.scenarios) == 10
  for a, b in zip(back.scenarios, src.scenarios):
    fa, fb = native.flatten(a), native.flatten(b)
    assert all(np.array_equal(fa[k], fb[k]) and fa[k].dtype == fb[k].dtype for k in fa)
  # A second convert into the same folder refuses unless told to overwrite.
  assert _run(["convert", str(real_scene_dir), str(dst), *caps]) == 1
  assert _run(["convert", str(real_scene_dir), str(dst), "--overwrite", *caps]) == 0
  assert len(list(dst.iterdir())) == 1  # 10 scenes fit one default-size (64) shard


def test_caps_arguments_round_trip():
  p = argparse.ArgumentParser()
  scenes_io.add_caps_arguments(p)
  assert scenes_io.caps_from_args(p.parse_args([])) == types.SceneConfig()
  cfg = scenes_io.caps_from_args(p.parse_args(["--max-objects", "32", "--max-road-points", "4000", "--init-step", "0"]))
  assert cfg == types.SceneConfig(max_objects=32, max_road_points=4000, init_step=0)
