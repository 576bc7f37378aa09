"""`drivelab demo`: the main job behind `make run`.

Generates synthetic scenes (the default data) and writes them as native shards, optionally loads a folder of real
GPUDrive scenes, drives every scene with the two log-tracking experts in the JAX simulator, renders pictures and
replay GIFs, trains a policy with PPO from scratch for `--train-seconds` (services/cli/demo_train.py: the fused
trainer of `drivelab train`, evaluated greedily on held-out scenes), runs the whole service stack (`drivelab up`)
for `--stack-seconds`, and writes a report (Markdown + HTML + JSON) that a person can open.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import pathlib
import platform
import subprocess
import sys
import time

from rich.console import Console

from services.cli import provenance

console = Console()


def register(subparsers) -> None:
  p = subparsers.add_parser("demo", help="generate scenes, replay them in the simulator, write a report")
  p.add_argument("--scenes", default="synthetic",
                 help="'synthetic' (default), 'synthetic:N', a folder of GPUDrive JSON / shards, or one shard")
  p.add_argument("--real", default=None, help="an extra folder of real scenes to include (optional)")
  p.add_argument("--num", type=int, default=12, help="synthetic scenes to generate")
  p.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
  p.add_argument("--out", default="runs/latest", help="run directory for shards, pictures and the report")
  p.add_argument("--gifs", type=int, default=2, help="replay GIFs per dataset")
  p.add_argument("--train-seconds", type=float, default=180.0,
                 help="train PPO from scratch on short synthetic scenes for this long, then evaluate (0: skip)")
  p.add_argument("--stack-seconds", type=float, default=0.0,
                 help="also run the whole service stack on synthetic scenes for this long (0: skip)")
  p.set_defaults(func=cmd_demo)


def _load_dataset(where: str, num: int, seed: int, out: pathlib.Path):
  """(label, scenarios, metas, caps, skipped) of a scene spec (shared.scenes.source): `num` synthetic scenes from
  `seed` ('synthetic'; 'synthetic:N' says N itself), also written as one shard, or a folder or shard of scenes.
  Raises ValueError on a bad spec or missing path."""
  from shared.scenes import native, types
  from shared.scenes import source as scene_source

  src = scene_source.parse(where, num=num if scene_source.is_synthetic(where) else None, seed=seed)
  if src.kind == scene_source.SYNTHETIC:
    caps = types.SceneConfig(max_objects=64, max_road_points=8000)
    with console.status(f"generating {src.num} synthetic scenes (seed {seed})"):
      t0 = time.perf_counter()
      loaded = scene_source.load(src, caps)
    shard = out / "scenes" / f"synthetic-seed{seed}{native.SHARD_SUFFIX}"
    shard.parent.mkdir(parents=True, exist_ok=True)
    native.write_shard(str(shard), loaded.scenarios, loaded.metas, caps)
    console.print(f"generated {src.num} synthetic scenes in {time.perf_counter() - t0:.1f} s -> {shard}")
    return "synthetic", loaded.scenarios, loaded.metas, caps, []
  caps = types.SceneConfig()
  with console.status(f"loading scenes from {where}"):
    loaded = scene_source.load(src, caps)
  console.print(f"loaded {len(loaded.scenarios)} scenes from {where} ({loaded.skipped} skipped)")
  return pathlib.Path(where).name, loaded.scenarios, loaded.metas, caps, loaded.errors


def _replay(scenarios, metas, caps, expert: str) -> dict:
  from services.cli import scenes_replay

  cfg = scenes_replay.env_config("all", 64, caps.init_step)
  t0 = time.perf_counter()
  with console.status(f"replaying {len(scenarios)} scenes with the {expert} expert"):
    result = scenes_replay.replay(scenarios, [m.name for m in metas], expert, cfg, min(4, len(scenarios)))
  result["seconds"] = round(time.perf_counter() - t0, 2)
  return result


def _pictures(label: str, scenarios, metas, out: pathlib.Path, gifs: int) -> list[str]:
  import matplotlib.pyplot as plt

  from shared.scenes import render

  pics = []
  with console.status(f"rendering {label} scenes"):
    for i, (sc, meta) in enumerate(zip(scenarios[:4], metas[:4])):
      path = out / "pictures" / f"{label}-{i}.png"
      path.parent.mkdir(parents=True, exist_ok=True)
      plt.close(render.render_scene(sc, meta, out=str(path)))
      pics.append(str(path.relative_to(out)))
    for i, (sc, meta) in enumerate(zip(scenarios[:gifs], metas[:gifs])):
      path = out / "pictures" / f"{label}-{i}-replay.gif"
      render.render_replay_gif(sc, str(path), meta=meta, stride=2)
      pics.append(str(path.relative_to(out)))
  return pics


def _run_stack(seconds: float, out: pathlib.Path) -> dict:
  """Runs `drivelab up` as a child process; returns what its run directory says (children, evaluations)."""
  run_dir = out / "stack"
  cmd = [sys.executable, "-m", "services.cli", "up", "--duration", str(seconds), "--warmup", "--run-dir", str(run_dir)]
  t0 = time.perf_counter()
  with console.status(f"running the service stack for {seconds:.0f} s (after compiling the simulator)"):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 900)
  (out / "stack.log").write_text(proc.stdout + proc.stderr)
  result = dict(returncode=proc.returncode, seconds=round(time.perf_counter() - t0, 1), command=" ".join(cmd[1:]))
  try:
    stack = json.loads((run_dir / "stack.json").read_text())
    result["children"] = {k: {"restarts": v.get("restarts", 0)} for k, v in stack.get("children", {}).items()}
  except (OSError, ValueError):
    result["children"] = {}
  evals = []
  for path in sorted((run_dir / "eval").glob("eval_*.json")):
    try:
      d = json.loads(path.read_text())
    except (OSError, ValueError):
      continue
    m = d.get("metrics", {})
    evals.append({"params_version": d.get("params_version"), "agents": m.get("all/agents"),
                  "goal_reached": m.get("all/goal_reached"), "collision": m.get("all/collision"),
                  "offroad": m.get("all/offroad"), "progress_ratio": m.get("all/progress_ratio")})
  result["evaluations"] = evals
  console.print(f"stack: exit {proc.returncode} after {result['seconds']} s, {len(result['children'])} processes, "
                f"{len(evals)} evaluations of the learner's params")
  return result


def _stack_md(stack: dict) -> list[str]:
  md = ["## Service stack", "",
        f"`drivelab {stack['command'].split(' ', 2)[-1]}` exited {stack['returncode']} after {stack['seconds']} s. "
        "Processes (restarts): " + ", ".join(f"{k} ({v['restarts']})" for k, v in stack["children"].items()) + ".",
        "", "The learner runs PPO (V-trace targets) on the actors' trajectories from version 0 for these "
        "seconds, so its params barely move; the evaluator scores the newest params greedily on a scene batch "
        "every 10 s:", "",
        "| params version | agents | goal reached | collision | off-road | progress ratio |", "|---|---|---|---|---|---|"]
  fmt = lambda v: "-" if v is None else f"{v:.3f}"
  md += [f"| {e['params_version']} | {e['agents']} | {fmt(e['goal_reached'])} | {fmt(e['collision'])} | "
         f"{fmt(e['offroad'])} | {fmt(e['progress_ratio'])} |" for e in stack["evaluations"]]
  return md + [""]


def _rows(result: dict) -> list[tuple[str, ...]]:
  pct = lambda d: "-" if d.get("rate") is None else f"{100 * d['rate']:.1f}% ({d['count']}/{d['total']})"
  rows = []
  for group in ("all", "moving", "parked"):
    g = result["overall"][group]
    ade = g["ade_m"]["mean"]
    rows.append((group, str(g["agents"]), "-" if ade is None else f"{ade:.3f}", pct(g["end_within_2m"]),
                 pct(g["goal_reached"]), pct(g["collision"]), pct(g["offroad"]), pct(g["offroute"])))
  return rows


HEADER = ("vehicles", "n", "ADE m", "end within 2 m", "goal reached", "collision", "off-road", "off-route")


def _write_report(out: pathlib.Path, sections: list[dict], meta: dict) -> tuple[pathlib.Path, pathlib.Path]:
  md = ["# drivelab demo report", "",
        f"commit `{meta['commit']}` · {meta['utc']} · {meta['machine']} · {meta['seconds']:.0f} s in all", "",
        "Each scene is driven in the JAX simulator by two experts that track the logged trajectories: the "
        "continuous expert replays inverse-dynamics actions open-loop, the grid expert picks each step the "
        "discrete action whose prediction lands nearest the log (closed loop). Rates count controlled vehicles; "
        "parked vehicles (never above 1 m/s) are reported apart from moving ones.", ""]
  body = [f"<h1>drivelab demo report</h1><p>commit <code>{html.escape(str(meta['commit']))}</code> · "
          f"{meta['utc']} · {html.escape(meta['machine'])}</p>"]
  for s in sections:
    md += [f"## {s['label']} ({s['num_scenes']} scenes, {s['skipped']} skipped)", ""]
    body.append(f"<h2>{html.escape(s['label'])} ({s['num_scenes']} scenes, {s['skipped']} skipped)</h2>")
    for expert, result in s["replays"].items():
      md += [f"**{expert} expert** ({result['seconds']} s)", "", "| " + " | ".join(HEADER) + " |",
             "|" + "---|" * len(HEADER)]
      md += ["| " + " | ".join(r) + " |" for r in _rows(result)]
      md.append("")
      body.append(f"<h3>{expert} expert ({result['seconds']} s)</h3><table border=1 cellpadding=4><tr>"
                  + "".join(f"<th>{h}</th>" for h in HEADER) + "</tr>"
                  + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                            for r in _rows(result)) + "</table>")
    md += [f"![{p}]({p})" for p in s["pictures"]] + [""]
    body.append("".join(f'<img src="{html.escape(p)}" width="420">' for p in s["pictures"]))
  if meta.get("training"):
    from services.cli import demo_train

    train_md = demo_train.report_md(meta["training"])
    md += train_md
    curve = meta["training"].get("curve")
    body.append("<pre>" + html.escape("\n".join(l for l in train_md if not l.startswith("!["))) + "</pre>"
                + (f'<img src="{html.escape(curve)}" width="900">' if curve else ""))
  if meta.get("stack"):
    stack_md = _stack_md(meta["stack"])
    md += stack_md
    body.append("<pre>" + html.escape("\n".join(stack_md)) + "</pre>")
  md_path, html_path = out / "report.md", out / "report.html"
  md_path.write_text("\n".join(md))
  html_path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>drivelab demo</title></head><body>"
                       + "".join(body) + "</body></html>")
  return md_path, html_path


def cmd_demo(args: argparse.Namespace) -> int:
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  sources = [args.scenes] + ([args.real] if args.real else [])
  sections = []
  for where in sources:
    try:
      label, scenarios, metas, caps, errors = _load_dataset(where, args.num, args.seed, out)
    except ValueError as e:
      console.print(f"[red]{e}[/red]")
      return 1
    if not scenarios:
      console.print(f"[red]no scenes from {where}[/red]")
      return 1
    replays = {}
    for expert in ("continuous", "grid"):
      replays[expert] = _replay(scenarios, metas, caps, expert)
      rows = _rows(replays[expert])
      console.print(f"{label} / {expert}: " + "; ".join(f"{r[0]} ADE {r[2]} m, goal {r[4]}" for r in rows[:2]))
    pictures = _pictures(label, scenarios, metas, out, args.gifs)
    sections.append(dict(label=label, source=where, num_scenes=len(scenarios), skipped=len(errors),
                         errors=errors, caps=dataclasses.asdict(caps), replays=replays, pictures=pictures))
  training = None
  if args.train_seconds > 0:
    from services.cli import demo_train

    training = demo_train.train_synthetic(out, args.train_seconds, args.seed, console)
  stack = _run_stack(args.stack_seconds, out) if args.stack_seconds > 0 else None
  meta = dict(training=training, stack=stack, commit=provenance.git_commit(), utc=time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
              machine=f"{platform.machine()} {platform.system()} python {platform.python_version()}",
              seconds=time.perf_counter() - t0, command="drivelab " + " ".join(sys.argv[1:]))
  (out / "demo.json").write_text(json.dumps(dict(meta=meta, sections=sections), indent=2, default=str))
  md_path, html_path = _write_report(out, sections, meta)
  console.print(f"[bold green]report:[/bold green] {html_path}  {md_path}  ({meta['seconds']:.0f} s)")
  return 0
