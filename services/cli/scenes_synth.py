"""`drivelab scenes generate` (synthetic scenes into native shards) and `drivelab scenes render` (PNG / GIF).

generate: scenes of seeds SEED .. SEED+NUM-1 (scene i is `synthetic:{SEED+i}`), padded to the caps, written as
`scenes-00000.dlshard.npz`, ... of `--shard-size` scenes, with a progress bar and a summary (ms per scene).
render: SCENE is a GPUDrive .json file, `synthetic:SEED`, a shard file (its first scene) or `SHARDFILE:INDEX`.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from services.cli import scenes_io
from shared.scenes import gpudrive, native, synthetic, types


def register(subparsers) -> None:
  g = subparsers.add_parser("generate", help="generate synthetic scenes into native shards")
  g.add_argument("--num", type=int, default=16, help="number of scenes")
  g.add_argument("--seed", type=int, default=0, help="seed of the first scene (scene i uses seed + i)")
  g.add_argument("--out", required=True, help="output folder for the shards")
  g.add_argument("--shard-size", type=int, default=64, help="scenes per shard")
  g.add_argument("--overwrite", action="store_true", help="delete shards already in --out first")
  scenes_io.add_caps_arguments(g)
  g.set_defaults(func=cmd_generate)
  r = subparsers.add_parser("render", help="draw one scene as a PNG (and optionally a replay GIF)")
  r.add_argument("scene", help="GPUDrive .json file, synthetic:SEED, a shard file or SHARDFILE:INDEX")
  r.add_argument("--out", required=True, help="PNG path")
  r.add_argument("--t", type=int, default=None, help="step to draw (default: the init step)")
  r.add_argument("--gif", default=None, help="also write a log-replay GIF here")
  r.add_argument("--stride", type=int, default=2, help="steps between GIF frames")
  r.add_argument("--fps", type=int, default=10, help="GIF frames per second")
  r.add_argument("--no-trajectories", action="store_true", help="do not draw the logged trajectories")
  scenes_io.add_caps_arguments(r)
  r.set_defaults(func=cmd_render)


def load_scene(spec: str, config: types.SceneConfig) -> tuple[types.Scenario, types.SceneMeta]:
  """One unbatched scene from a render SCENE argument; raises ValueError / SceneError with the reason."""
  if spec.startswith("synthetic:"):
    seed = spec.split(":", 1)[1]
    if not seed.isdigit():
      raise ValueError(f"{spec!r}: expected synthetic:SEED with SEED a non-negative integer")
    return synthetic.generate(int(seed), scene_config=config)
  path, index = spec, 0
  head, sep, tail = spec.rpartition(":")
  if sep and tail.isdigit() and pathlib.Path(head).is_file():
    path, index = head, int(tail)
  if path.endswith(native.SHARD_SUFFIX):
    batch, metas, _ = native.read_shard(path)
    if not 0 <= index < len(metas):
      raise ValueError(f"{path}: index {index} outside 0..{len(metas) - 1}")
    return types.unstack(batch)[index], metas[index]
  if index:
    raise ValueError(f"{spec!r}: an index only applies to shard files (*{native.SHARD_SUFFIX})")
  return gpudrive.read_scene(path, config)


def cmd_generate(args: argparse.Namespace) -> int:
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

  console = scenes_io._console()
  config = scenes_io.caps_from_args(args)
  if args.num < 1 or args.shard_size < 1 or args.seed < 0:
    raise SystemExit("drivelab: --num and --shard-size must be >= 1 and --seed >= 0")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  old = sorted(out.glob(f"*{native.SHARD_SUFFIX}"))
  if old and not args.overwrite:
    console.print(f"[red]{out} already holds {len(old)} shard(s); pass --overwrite to replace them[/red]")
    return 1
  for f in old:
    f.unlink()
  buf_s, buf_m, shards, gen_s = [], [], [], 0.0
  columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             TextColumn("{task.description}"))
  with Progress(*columns, console=console) as bar:
    task = bar.add_task("", total=args.num)
    for i in range(args.num):
      t0 = time.perf_counter()
      scenario, meta = synthetic.generate(args.seed + i, scene_config=config)
      gen_s += time.perf_counter() - t0
      buf_s.append(scenario)
      buf_m.append(meta)
      if len(buf_s) == args.shard_size or i == args.num - 1:
        path = out / f"scenes-{len(shards):05d}{native.SHARD_SUFFIX}"
        native.write_shard(path, buf_s, buf_m, config)
        shards.append(path)
        buf_s, buf_m = [], []
      bar.update(task, advance=1, description=meta.scenario_id)
  size = sum(p.stat().st_size for p in shards)
  console.print(f"wrote {args.num} scenes in {len(shards)} shard(s), {size / 1e6:.1f} MB, to {out}; "
                f"{1000 * gen_s / args.num:.0f} ms per scene generated")
  return 0


def cmd_render(args: argparse.Namespace) -> int:
  from shared.scenes import render

  console = scenes_io._console()
  config = scenes_io.caps_from_args(args)
  try:
    scenario, meta = load_scene(args.scene, config)
  except (ValueError, OSError) as e:  # SceneError is a ValueError
    console.print(f"[red]{e}[/red]", markup=True)
    return 1
  t0 = time.perf_counter()
  render.render_scene(scenario, meta, t=args.t, trajectories=not args.no_trajectories, out=args.out)
  console.print(f"wrote {args.out} ({meta.scenario_id}) in {time.perf_counter() - t0:.2f} s")
  if args.gif:
    t0 = time.perf_counter()
    n = render.render_replay_gif(scenario, args.gif, meta, stride=args.stride, fps=args.fps)
    console.print(f"wrote {args.gif}: {n} frames in {time.perf_counter() - t0:.2f} s")
  return 0
