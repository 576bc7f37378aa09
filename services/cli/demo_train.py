"""The training phase of `drivelab demo` (`make run`): PPO from scratch on synthetic scenes for a few minutes.

The same trainer as `drivelab train` (services/cli/train_cmd.train_phase: the fused path, greedy held-out
evaluations every few iterations in the history and the progress bar), with the quick recipe of
`drivelab bench learn --quick` (short synthetic logs, few vehicles, the tiny MLP) so that a 2-core machine learns
something in ~3 minutes. The run directory (<out>/train) is a normal training run: `drivelab eval <out>/train`
and `drivelab report <out>/train` work on it. Returns a JSON-able summary for the demo report.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time

from rich.console import Console

from services.cli import bench_learn, eval_cmd, train_cmd
from shared.training import recipes

NET, PRESET = "mlp", "tiny"
NUM_SCENES = 24  # fewer than the benchmark's: generation and the final evaluations stay short in `make run`


def train_synthetic(out: pathlib.Path, seconds: float, seed: int, console: Console,
                    num_scenes: int = NUM_SCENES) -> dict:
  """Generates the quick scene set, trains PPO for `seconds` of training time, evaluates and reports."""
  import jax

  from services.evaluator import report
  from shared import evaluation
  from shared.scenes import types

  s = dict(recipes.settings(quick=True), synth_scenes=num_scenes)
  run_dir = out / "train"
  shutil.rmtree(run_dir, ignore_errors=True)  # each demo trains afresh (its checkpoints would resume otherwise)
  run_dir.mkdir(parents=True)
  caps = types.SceneConfig(max_objects=s["max_objects"], max_road_points=3000, num_timesteps=s["num_timesteps"])
  with console.status(f"generating {s['synth_scenes']} short synthetic scenes for training"):
    scenarios, metas, source = train_cmd.load_scenes("synthetic", s["synth_scenes"], seed, caps,
                                                     vehicles=s["synth_vehicles"])
  train_idx, held = evaluation.split_scenes(metas, s["held_out_fraction"], seed)
  agent = train_cmd.make_agent(NET, PRESET)
  env_cfg = train_cmd.train_env_config("all")
  cfg = recipes.synthetic_ppo(s, env_cfg)
  meta = {"net": NET, "preset": PRESET, "agents": "all", "algo": "ppo", "pretrain": None, "source": source,
          "caps": {k: getattr(caps, k) for k in ("max_objects", "max_road_points", "max_tl_lanes", "num_timesteps",
                                                 "init_step")}}
  (run_dir / "policy.json").write_text(json.dumps(meta, indent=1))
  console.print(f"training PPO from scratch for {seconds:.0f} s on {len(train_idx)} synthetic scenes "
                f"({len(held)} held out, every vehicle controlled); run dir {run_dir}")
  t0 = time.perf_counter()
  params, steps, _ = train_cmd.train_phase(
      agent, cfg, [scenarios[i] for i in train_idx], 10**12, str(run_dir), seed, checkpoint_every=50,
      held_out=[scenarios[i] for i in held], eval_every=s["eval_every"], max_seconds=seconds)
  train_s = time.perf_counter() - t0
  record = train_cmd.evaluate_and_report(agent, params, scenarios, metas, env_cfg, caps, str(run_dir),
                                         dict(source, agents="all"), s["held_out_fraction"], seed, "ppo")
  eval_cmd.print_summary(console, record, "trained policy, greedy, done signals off (all scenes)")
  try:
    paths = report.build_report(str(run_dir))
  except Exception as e:  # noqa: BLE001  the report is a convenience; the evaluation is already written
    console.print(f"training report failed: {e!r}")
    paths = {}
  history = [json.loads(line) for line in (run_dir / "metrics_history.jsonl").read_text().splitlines()]
  evals = [r for r in history if r.get("kind") == "eval"]
  curve = run_dir / "report" / "img" / "learning_curves.png"
  return dict(agent_steps=steps, seconds=round(train_s, 1), budget_s=seconds, net=f"{NET}/{PRESET}",
              ppo=bench_learn.ppo_summary(cfg), scenes={"train": len(train_idx), "held_out": len(held)},
              evaluations=evals, final={k: record[f"summary_{k}"]["all"] for k in ("train", "held_out")},
              jax_devices=[str(d) for d in jax.devices()], run_dir=str(run_dir.relative_to(out)),
              curve=str(curve.relative_to(out)) if curve.is_file() else None,
              report=os.path.relpath(str(paths["html"]), str(out)) if paths.get("html") else None)


def _pct(summary: dict, key: str) -> str:
  d = summary.get(key) or {}
  return "-" if d.get("rate") is None else f"{100 * d['rate']:.1f}% ({d['count']}/{d['total']})"


def report_md(t: dict) -> list[str]:
  """Markdown lines of the training section of the demo report."""
  md = ["## Training (PPO from scratch, synthetic scenes)", "",
        f"{t['agent_steps']:,} agent steps in {t['seconds']} s of wall time (compile and evaluations included; "
        f"the {t['budget_s']:.0f} s budget counts training only), net {t['net']}, {t['scenes']['train']} training scenes, "
        f"{t['scenes']['held_out']} held out, every vehicle controlled. Run dir `{t['run_dir']}`"
        + (f", full report `{t['report']}`." if t.get("report") else "."), "",
        "Held-out evaluations during training (greedy, done signals off):", "",
        "| agent steps | goal reached | collision | off-road | progress ratio |", "|---|---|---|---|---|"]
  md += [f"| {e['agent_steps']:,} | {e['eval/goal_reached']:.3f} | {e['eval/collision']:.3f} | "
         f"{e['eval/offroad']:.3f} | {e['eval/progress_ratio']:.2f} |" for e in t["evaluations"]]
  md += ["", "Final policy (all vehicles):", "", "| split | agents | goal reached | collision | off-road | failure |",
         "|---|---|---|---|---|---|"]
  for split, s in t["final"].items():
    md.append(f"| {split} | {s['agents']} | {_pct(s, 'goal_reached')} | {_pct(s, 'collision')} | "
              f"{_pct(s, 'offroad')} | {_pct(s, 'failure')} |")
  if t.get("curve"):
    md += ["", f"![learning curves]({t['curve']})"]
  return md + [""]


__all__ = ["train_synthetic", "report_md"]
