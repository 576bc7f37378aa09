"""`drivelab scenes inspect DIR` and `drivelab scenes convert SRC_DIR DST_DIR`: look at and convert real scenes.

inspect: one table row per scene (objects by type, valid at the init step, controllable, road and road-edge points,
traffic-light lanes, what the caps cut), a totals row and the skipped files with their one-line errors. Exit 0 when
at least one scene loaded, 1 otherwise.
convert: reads every JSON scene or shard in SRC_DIR, pads to the caps, writes shards of `--shard-size` scenes
(`scenes-00000.dlshard.npz`, ...) into DST_DIR, then prints a summary. Other CLI modules reuse
`add_caps_arguments` / `caps_from_args` for the SceneConfig flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import time

import numpy as np

from shared.scenes import dataset, native, types

_DEFAULT_CAPS = types.SceneConfig()
COUNT_KEYS = ("objects", "vehicles", "pedestrians", "cyclists", "valid_at_init", "controllable", "road_points",
              "road_edge_points", "tl_lanes", "cut_objects", "cut_road_points", "cut_tl_lanes")


def add_caps_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds --max-objects, --max-road-points, --max-tl-lanes, --num-timesteps and --init-step."""
  g = parser.add_argument_group("scene caps (larger scenes are cut to the entries nearest the SDC)")
  for flag, field, what in (("--max-objects", "max_objects", "objects per scene"),
                            ("--max-road-points", "max_road_points", "road points per scene"),
                            ("--max-tl-lanes", "max_tl_lanes", "traffic-light lanes per scene"),
                            ("--num-timesteps", "num_timesteps", "logged steps per scene"),
                            ("--init-step", "init_step", "first simulated step (cutting measures distances here)")):
    default = getattr(_DEFAULT_CAPS, field)
    g.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")


def caps_from_args(args: argparse.Namespace) -> types.SceneConfig:
  """SceneConfig from the flags of `add_caps_arguments`; raises SystemExit (argparse style) on a bad value."""
  config = types.SceneConfig(
      max_objects=args.max_objects, max_road_points=args.max_road_points, max_tl_lanes=args.max_tl_lanes,
      num_timesteps=args.num_timesteps, init_step=args.init_step)
  if min(config.max_objects, config.max_road_points, config.max_tl_lanes, config.num_timesteps) < 1:
    raise SystemExit(f"drivelab: every cap must be >= 1, got {config}")
  if not 0 <= config.init_step < config.num_timesteps:
    raise SystemExit(f"drivelab: --init-step must lie in [0, {config.num_timesteps}), got {config.init_step}")
  return config


def register(subparsers) -> None:
  p = subparsers.add_parser("inspect", help="table of the scenes in a folder (JSON and shards)")
  p.add_argument("dir", help="folder of GPUDrive JSON scenes and/or .dlshard.npz shards")
  p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
  add_caps_arguments(p)
  p.set_defaults(func=cmd_inspect)
  c = subparsers.add_parser("convert", help="convert a folder of scenes into native shards")
  c.add_argument("src_dir")
  c.add_argument("dst_dir")
  c.add_argument("--shard-size", type=int, default=64, help="scenes per shard")
  c.add_argument("--overwrite", action="store_true", help="delete shards already in DST_DIR first")
  add_caps_arguments(c)
  c.set_defaults(func=cmd_convert)


def scene_row(scenario: types.Scenario, meta: types.SceneMeta, init_step: int) -> dict:
  """Counts for one unbatched scene (kept entries, i.e. after cutting to the caps)."""
  o, r, lt = scenario.objects, scenario.roads, scenario.lights
  otype = np.asarray(o.object_type)[np.asarray(o.exists)]
  road_valid = np.asarray(r.valid)
  return {
      "scenario_id": meta.scenario_id, "name": meta.name,
      "objects": int(np.sum(o.exists)), "vehicles": int(np.sum(otype == types.TYPE_VEHICLE)),
      "pedestrians": int(np.sum(otype == types.TYPE_PEDESTRIAN)),
      "cyclists": int(np.sum(otype == types.TYPE_CYCLIST)),
      "valid_at_init": int(np.sum(np.asarray(o.valid)[:, init_step])),
      "controllable": int(np.sum(o.controllable)), "road_points": int(road_valid.sum()),
      "road_edge_points": int(np.sum(road_valid & np.isin(r.map_type, types.MAP_ROAD_EDGE_IDS))),
      "tl_lanes": int(np.sum(np.asarray(lt.valid).any(axis=-1))), "sdc_index": meta.sdc_index,
      "cut_objects": meta.cut_objects, "cut_road_points": meta.cut_road_points, "cut_tl_lanes": meta.cut_tl_lanes,
  }


def inspect_folder(path, config: types.SceneConfig) -> tuple[list[dict], dict, list[tuple[str, str]], float]:
  """(rows with a 'file' key, totals, skipped (file, error), seconds) for a folder."""
  t0 = time.perf_counter()
  res = dataset.load_folder(path, config)
  rows = [{"file": src, **scene_row(s, m, config.init_step)}
          for src, s, m in zip(res.sources, res.scenarios, res.metas)]
  totals = {k: sum(row[k] for row in rows) for k in COUNT_KEYS}
  totals["scenes"] = len(rows)
  return rows, totals, res.errors, time.perf_counter() - t0


def _cells(row: dict) -> list[str]:
  return [f"{row['objects']} ({row['vehicles']}/{row['pedestrians']}/{row['cyclists']})",
          str(row["valid_at_init"]), str(row["controllable"]), str(row["road_points"]),
          str(row["road_edge_points"]), str(row["tl_lanes"]),
          f"{row['cut_objects']}/{row['cut_road_points']}/{row['cut_tl_lanes']}"]


def _console():
  from rich.console import Console

  console = Console()
  # Piped output (logs, CI) gets a wide page so file names and ids are never cut to an ellipsis.
  return console if console.is_terminal else Console(width=max(console.width, 200))


def cmd_inspect(args: argparse.Namespace) -> int:
  from rich.table import Table

  console = _console()
  config = caps_from_args(args)
  try:
    rows, totals, errors, seconds = inspect_folder(args.dir, config)
  except FileNotFoundError as e:
    console.print(f"[red]{e}[/red]")
    return 1
  table = Table(title=f"{args.dir}: {len(rows)} scenes (caps O={config.max_objects} P={config.max_road_points} "
                      f"L={config.max_tl_lanes} T={config.num_timesteps})")
  for col in ("file", "scenario id", "objects (veh/ped/cyc)", f"valid@t{config.init_step}", "controllable",
              "road pts", "road-edge pts", "TL lanes", "cut obj/road/TL"):
    text = col in ("file", "scenario id")
    table.add_column(col, justify="left" if text else "right", no_wrap=text, overflow="fold")
  for row in rows:
    table.add_row(row["file"], row["scenario_id"], *_cells(row))
  table.add_section()
  table.add_row("total", f"{totals['scenes']} scenes", *_cells(totals), style="bold")
  console.print(table)
  console.print(f"skipped {len(errors)} file(s)" + (":" if errors else ""))
  for name, message in errors:
    console.print(f"  {name}: {message}", markup=False)
  console.print(f"read in {seconds:.2f} s")
  if args.json:
    out = {"dir": str(args.dir), "config": dataclasses.asdict(config), "scenes": rows,
           "totals": totals, "skipped": [{"file": f, "error": m} for f, m in errors], "seconds": seconds}
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
  return 0 if rows else 1


def convert_folder(src, dst, config: types.SceneConfig, shard_size: int, progress=None) -> dict:
  """Streams scenes from `src` into shards in `dst` (at most `shard_size` scenes in memory). Returns a summary."""
  dst = pathlib.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  files = dataset.iter_files(src)
  buf_s: list = []
  buf_m: list = []
  summary = {"scenes": 0, "shards": 0, "bytes": 0, "skipped": 0, "errors": [], "files": len(files)}

  def flush():
    out = dst / f"scenes-{summary['shards']:05d}{native.SHARD_SUFFIX}"
    native.write_shard(out, buf_s, buf_m, config)
    summary["shards"] += 1
    summary["bytes"] += out.stat().st_size
    buf_s.clear()
    buf_m.clear()

  for k, f in enumerate(files):
    try:
      scenarios, metas = dataset.load_file(f, config)
    except Exception as e:  # same policy as dataset.load_folder: one line, skip, count
      message = " ".join(str(e).split())
      logging.getLogger(__name__).error("skipping %s", message)
      summary["errors"].append((f.name, message))
      summary["skipped"] += 1
    else:
      for s, m in zip(scenarios, metas):
        buf_s.append(s)
        buf_m.append(m)
        summary["scenes"] += 1
        if len(buf_s) == shard_size:
          flush()
    if progress is not None:
      progress(k + 1, len(files), f.name)
  if buf_s:
    flush()
  return summary


def cmd_convert(args: argparse.Namespace) -> int:
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

  console = _console()
  config = caps_from_args(args)
  if args.shard_size < 1:
    raise SystemExit("drivelab: --shard-size must be >= 1")
  dst = pathlib.Path(args.dst_dir)
  old = sorted(dst.glob(f"*{native.SHARD_SUFFIX}")) if dst.is_dir() else []
  if old and not args.overwrite:
    console.print(f"[red]{dst} already holds {len(old)} shard(s); pass --overwrite to replace them[/red]")
    return 1
  for f in old:
    f.unlink()
  t0 = time.perf_counter()
  columns = (TextColumn("converting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             TextColumn("{task.description}"))
  with Progress(*columns, console=console) as bar:
    task = bar.add_task("", total=None)
    report = lambda done, total, name: bar.update(task, completed=done, total=total, description=name)
    try:
      summary = convert_folder(args.src_dir, dst, config, args.shard_size, report)
    except FileNotFoundError as e:
      console.print(f"[red]{e}[/red]")
      return 1
  seconds = time.perf_counter() - t0
  console.print(f"converted {summary['scenes']} scenes from {summary['files']} files into {summary['shards']} "
                f"shard(s), {summary['bytes']:,} bytes, in {seconds:.2f} s; skipped {summary['skipped']}")
  for name, message in summary["errors"]:
    console.print(f"  {name}: {message}", markup=False)
  return 0 if summary["scenes"] else 1
