"""`drivelab eval POLICY --scenes DIR|synthetic` and `drivelab report RUN_DIR`.

eval: greedy closed-loop evaluation with done signals off of a named policy (shared.evaluation.POLICY_NAMES:
log, expert-grid, expert-continuous, random, constant) over a folder of scenes or `--num` synthetic ones; prints
the metrics (all / moving / parked vehicles, with counts), writes the record to `--out` and/or into `--run-dir`
(evaluations/NNN_<policy>.json + .npz). Checkpoint directories are not evaluable yet (a later issue).
report: rebuilds RUN_DIR/report/ (JSON, Markdown, HTML, PNG, GIF) from what the run directory holds.
Exit codes: 0 ok, 1 nothing to evaluate, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from services.cli import scenes_io

AGENT_MODES = ("sdc", "all", "moving")
AGENTS_HELP = ("sdc | all | moving (the vehicles that move in the log; parked ones replay it) | N (the N "
               "controllable agents nearest the SDC)")
AT_GOAL = ("stop", "drive-on")
AT_GOAL_HELP = ("stop (paper 000: the episode ends at the goal) or drive-on (paper 002's Table 2: no goal done "
                "signal, progress = distance driven / logged distance)")


def register(subparsers) -> None:
  p = subparsers.add_parser("eval", help="evaluate a policy (greedy, done signals off) on scenes")
  p.add_argument("policy", help="log | expert-grid | expert-continuous | random | constant, or a `drivelab train` run dir")
  p.add_argument("--scenes", required=True, help="folder of scenes (JSON / shards), or 'synthetic'")
  p.add_argument("--num", type=int, default=None, help="scenes to use (synthetic: how many; default 8)")
  p.add_argument("--seed", type=int, default=0, help="synthetic scene seed and evaluation PRNG seed")
  p.add_argument("--agents", default="all", help=AGENTS_HELP)
  p.add_argument("--at-goal", default="stop", help=AT_GOAL_HELP)
  p.add_argument("--batch-size", type=int, default=2, help="scenes per compiled batch")
  p.add_argument("--held-out-fraction", type=float, default=0.2, help="share of scenes in the held-out split")
  p.add_argument("--split-seed", type=int, default=0, help="seed of the train/held-out split")
  p.add_argument("--out", metavar="FILE.json", help="write the evaluation record here")
  p.add_argument("--run-dir", metavar="DIR", help="add the record to this run directory's evaluations/")
  scenes_io.add_caps_arguments(p)
  p.set_defaults(func=cmd_eval)
  r = subparsers.add_parser("report", help="rebuild a run directory's evaluation report")
  r.add_argument("run_dir")
  r.add_argument("--worst", type=int, default=3, help="worst scenes rendered per policy")
  r.set_defaults(func=cmd_report)


def env_config_for(agents: str, at_goal: str = "stop"):
  """EnvConfig for an --agents value and an --at-goal value; raises ValueError on a bad one.

  at_goal "stop" (paper 000: reaching the goal ends the agent's episode, where it stands still) or "drive-on"
  (paper 002's Table 2: no done signal at all in evaluation; progress ratio = distance driven / logged distance,
  so a car that stops at its goal, up to the 2 m goal radius short of its logged end, cannot score 1; measured
  on the real scenes' self-driving cars, the log-tracking experts score 0.909 with "stop", 1.000 with "drive-on")."""
  from shared.sim import env

  if at_goal not in AT_GOAL:
    raise ValueError(f"--at-goal must be one of {', '.join(AT_GOAL)}, got {at_goal!r}")
  stop = at_goal == "stop"
  if agents in AGENT_MODES:
    return env.EnvConfig(control_mode=agents, stop_at_goal=stop)
  if agents.isdigit() and 1 <= int(agents) <= 64:
    return env.EnvConfig(control_mode="all", max_controlled=int(agents), stop_at_goal=stop)
  raise ValueError(f"--agents must be sdc, all, moving or 1..64, got {agents!r}")


def _load(args, scene_cfg, progress):
  """(scenarios, metas, source) for --scenes; raises ValueError with a one-line reason."""
  from shared.scenes import dataset, synthetic

  if args.scenes == "synthetic":
    num = 8 if args.num is None else args.num
    task = progress.add_task("generating scenes", total=num)
    pairs = []
    for i in range(num):
      pairs += synthetic.generate_many(1, args.seed + i, scene_config=scene_cfg)
      progress.update(task, completed=i + 1)
    return [p[0] for p in pairs], [p[1] for p in pairs], {"scenes": "synthetic", "num": num, "seed": args.seed}
  if not os.path.isdir(args.scenes):
    raise ValueError(f"--scenes: no such folder {args.scenes}")
  task = progress.add_task("loading scenes", total=None)
  res = dataset.load_folder(args.scenes, scene_cfg, limit=args.num,
                            progress=lambda k, n, name: progress.update(task, completed=k, total=n))
  source = {"scenes": os.path.abspath(args.scenes), "num": args.num, "seed": args.seed}
  return res.scenarios, res.metas, source


def _checkpoint_policy(run_dir: str):
  """(Policy, params, name) from the newest checkpoint of a `drivelab train` run directory (greedy actions)."""
  from services.cli import train_cmd
  from shared import evaluation

  agent, params, meta = train_cmd.load_policy(run_dir)
  name = f"checkpoint-{os.path.basename(os.path.normpath(run_dir))}"
  return evaluation.from_policy_fn(agent.policy_fn(greedy=True), name=name), params, name


def cmd_eval(args: argparse.Namespace) -> int:
  import jax
  from rich.console import Console
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

  from services.evaluator import report
  from shared import evaluation

  console = Console()
  if not console.is_terminal:  # piped output: rich would wrap the metrics table at 80 columns
    console = Console(width=170)
  policy, params, policy_name = args.policy, None, args.policy
  if args.policy not in evaluation.POLICY_NAMES:
    if not os.path.isdir(args.policy):
      console.print(f"drivelab eval: unknown policy {args.policy!r} (policies: "
                    f"{', '.join(evaluation.POLICY_NAMES)}, or a `drivelab train` run directory)")
      return 2
    try:
      policy, params, policy_name = _checkpoint_policy(args.policy)
    except (OSError, ValueError, KeyError) as e:
      console.print(f"drivelab eval: cannot load a checkpoint from {args.policy}: {e}")
      return 2
  try:
    env_cfg = env_config_for(args.agents, args.at_goal)
    scene_cfg = scenes_io.caps_from_args(args)
    if not 0.0 <= args.held_out_fraction < 1.0 or args.batch_size < 1:
      raise ValueError("need 0 <= --held-out-fraction < 1 and --batch-size >= 1")
  except ValueError as e:
    console.print(f"drivelab eval: {e}")
    return 2
  columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
  with Progress(*columns, console=console, transient=True) as progress:
    try:
      scenarios, metas, source = _load(args, scene_cfg, progress)
    except (ValueError, RuntimeError) as e:
      console.print(f"drivelab eval: {e}")
      return 2
    if not scenarios:
      console.print(f"drivelab eval: no scenes loaded from {args.scenes}")
      return 1
    task = progress.add_task(f"evaluating {policy_name}", total=len(scenarios))
    t0 = time.perf_counter()
    res = evaluation.evaluate_scenes(policy, params, scenarios, env_cfg, jax.random.PRNGKey(args.seed),
                                     batch_size=min(args.batch_size, len(scenarios)),
                                     progress=lambda k, n: progress.update(task, completed=k))
    wall = time.perf_counter() - t0
  _, held = evaluation.split_scenes(metas, args.held_out_fraction, args.split_seed)
  record = report.make_record(policy_name, res["per_agent"], metas, dict(source, agents=args.agents),
                              evaluation.eval_env_config(env_cfg), scene_cfg, held,
                              {"held_out_fraction": args.held_out_fraction, "seed": args.split_seed})
  record["wall_s"] = round(wall, 2)
  print_summary(console, record, f"{policy_name} on {len(scenarios)} scenes ({wall:.1f} s)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(record, f, indent=1)
  if args.run_dir:
    path = report.write_evaluation(args.run_dir, record, {k: res[k] for k in ("x", "y", "yaw")})
    console.print(f"wrote {path}")
  return 0


def print_summary(console, record: dict, title: str) -> None:
  from rich.table import Table

  from services.evaluator import report

  table = Table(title=title)
  keys = [k for k, _ in report.COLUMNS if k != "new_failures"]
  table.add_column("vehicles")
  for k, name in report.COLUMNS:
    if k != "new_failures":
      table.add_column(name, justify="right")
  for split in ("all", "moving", "parked"):
    table.add_row(split, *[report.cell(record["summary"][split], k) for k in keys])
  console.print(table)


def cmd_report(args: argparse.Namespace) -> int:
  from rich.console import Console

  from services.evaluator import report

  console = Console()
  if not os.path.isdir(args.run_dir):
    console.print(f"drivelab report: no such run directory {args.run_dir}")
    return 2
  paths = report.build_report(args.run_dir, worst_k=args.worst)
  for k, v in paths.items():
    console.print(f"{k}: {v}")
  return 0 if report.load_evaluations(args.run_dir) else 1


__all__ = ["register", "cmd_eval", "cmd_report", "env_config_for", "print_summary"]
