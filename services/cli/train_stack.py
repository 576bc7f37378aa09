"""`drivelab train --stack`: the same training, run by the service stack (as `drivelab up` runs it) instead of the
fused single process.

Each phase (BC when --pretrain bc, then --algo) runs the stack's local processes (services.stack.supervisor) in
--run-dir with that algorithm until the learner has learned from --steps (or --pretrain-steps) agent steps, read
from its /metrics (drivelab_learner_samples_total) once a second, or --max-seconds pass. The PPO phase after BC
starts from the BC phase's newest checkpoint (learner --init-from run_dir/checkpoints/bc) and, with --ref-kl C,
keeps C * KL(pi_BC || pi) in its loss. A progress bar shows agent steps learned, their rate, the simulators' agent
steps, the learner's updates and the evaluator's latest held-out figures. Then the newest checkpoint is evaluated
and reported exactly as after the fused path.

A rerun with the same --run-dir resumes: the learner restores its newest checkpoint (with the agent steps it had
learned from) and a phase already past its steps is skipped.
Flags the stack does not take (its services have their own settings, DRIVELAB_* env) are refused with exit 2.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

SAMPLES = "drivelab_learner_samples_total"
UPDATES = "drivelab_learner_updates_total"
AGENT_STEPS = "drivelab_agent_steps_total"
EVAL = "drivelab_eval_metric"
CONTROL = ("all", "sdc", "moving")  # --agents values the stack's simulators and evaluator take as control modes
MAX_RESTARTS = 3  # a process that exits this often is not coming up: the phase stops instead of waiting forever
# fused-only flags and their defaults: a changed one is refused in --stack mode rather than silently ignored
FUSED_ONLY = {"scenes_per_iter": 4, "bc_dagger": 0.0, "epochs": 4, "minibatches": 4, "at_goal": "stop"}


def check_args(args: argparse.Namespace) -> None:
  """ValueError (one line) for flags --stack cannot honour."""
  changed = [k for k, v in FUSED_ONLY.items() if getattr(args, k) != v]
  changed += [k for k in ("num", "seed") if getattr(args, k) not in (None, 0)]  # the loader's own (16, seed 0)
  if changed:
    flags = ", ".join("--" + k.replace("_", "-") for k in changed)
    raise ValueError(f"{flags}: fused-path settings; with --stack the services' own settings apply (DRIVELAB_* env)")
  if args.agents not in CONTROL:
    raise ValueError(f"--agents {args.agents}: the stack's simulators control {', '.join(CONTROL)}")


def _eval_summary(values: dict[str, float]) -> str:
  """'goal 0.62 coll 0.05 off 0.01' from the evaluator's drivelab_eval_metric{metric, split=".../all"} gauges."""
  short = {"goal_reached": "goal", "collision": "coll", "offroad": "off-road"}
  parts = []
  for metric, label in short.items():
    hit = [v for k, v in values.items() if k.startswith(EVAL + "{") and f'metric="{metric}"' in k and '/all"' in k]
    if hit:
      parts.append(f"{label} {hit[0]:.2f}")
  return " ".join(parts)


def _phase_env(args: argparse.Namespace, algo: str) -> tuple[tuple[str, str], ...]:
  env = {"DRIVELAB_SIMULATOR_CONTROL_MODE": args.agents, "DRIVELAB_EVALUATOR_CONTROL_MODE": args.agents,
         "DRIVELAB_SCENE_MAX_OBJECTS": str(args.max_objects),
         "DRIVELAB_SCENE_MAX_ROAD_POINTS": str(args.max_road_points)}
  if args.lr:
    env["DRIVELAB_LEARNER_LR"] = repr(float(args.lr))
  if algo == args.algo and args.pretrain:  # the main phase fine-tunes the BC phase's policy
    from services.cli import stack_cmd

    env.update(stack_cmd.fine_tune_env(os.path.join(args.run_dir, "checkpoints", "bc"), args.ref_kl))
  return tuple(env.items())


def _learned_before(run_dir: str, algo: str) -> int:
  """Agent steps the phase's newest checkpoint had learned from (0 without one)."""
  from shared.training import checkpoint

  found = checkpoint.list_checkpoints(os.path.join(run_dir, "checkpoints", algo))
  return int(checkpoint.read_extra(found[-1][1]).get("samples", 0)) if found else 0


def run_phase(args: argparse.Namespace, algo: str, steps: int, console, show_progress: bool = True) -> int:
  """Runs the stack for one phase; returns the agent steps the learner has learned from in this phase.
  RuntimeError (one line) when a process keeps exiting or the phase ends without a single update."""
  from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

  from services.stack import supervisor

  base = _learned_before(args.run_dir, algo)
  if base >= steps:
    console.print(f"{algo}: already trained on {base:,} agent steps (checkpoint in {args.run_dir}): skipped")
    return base
  cfg = supervisor.StackConfig(
      simulators=args.simulators, inference=0, scene_loaders=1, evaluator=args.eval_every > 0, mode="fused",
      scenes=args.scenes, run_dir=args.run_dir, algo=algo, net=args.net, preset=args.preset,
      extra_env=_phase_env(args, algo))
  log_path = os.path.join(args.run_dir, "logs", f"supervisor-{algo}.log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  out = open(log_path, "a", buffering=1)  # noqa: SIM115  closed below, after the supervisor thread
  sup = supervisor.Supervisor(cfg, out=out)
  thread = threading.Thread(target=sup.run, name=f"stack-{algo}", daemon=True)
  ports = {c.service + ":" + c.name: c.metrics_port for c in sup.children}
  learner = next(p for k, p in ports.items() if k.startswith("learner:"))
  sims = [p for k, p in ports.items() if k.startswith("simulator:")]
  evaluator = [p for k, p in ports.items() if k.startswith("evaluator:")]
  done, t0, why, failed = base, time.monotonic(), "the stack stopped early", False
  columns = [TextColumn(f"[bold]{algo} (stack)"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
             TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
  thread.start()
  try:
    with Progress(*columns, console=console, disable=not show_progress, transient=False) as bar:
      task = bar.add_task(algo, total=steps, completed=base, info="starting the services")
      while thread.is_alive():
        time.sleep(1.0)
        learned = supervisor.scrape_metrics(learner)
        done = base + int(learned.get(SAMPLES, 0))
        elapsed = time.monotonic() - t0
        sim_steps = sum(supervisor.scrape_metrics(p).get(AGENT_STEPS, 0.0) for p in sims)
        info = (f"{(done - base) / max(elapsed, 1e-9):,.0f} steps/s learned · sim {sim_steps:,.0f} steps · "
                f"{int(learned.get(UPDATES, 0))} updates")
        if evaluator:
          summary = _eval_summary(supervisor.scrape_metrics(evaluator[0]))
          info += f" · eval {summary}" if summary else ""
        bar.update(task, completed=min(done, steps), info=info)
        if done >= steps:
          why = ""
          break
        failing = [c.name for c in sup.children if c.given_up or c.restarts >= MAX_RESTARTS]
        if failing:
          why, failed = f"{', '.join(failing)} kept exiting (see {args.run_dir}/logs/{failing[0]}.log)", True
          break
        if args.max_seconds is not None and elapsed >= args.max_seconds:
          why = f"--max-seconds {args.max_seconds:g} reached"
          break
  finally:
    sup.stop.set()
    thread.join(120)
    out.close()
  if why:
    console.print(f"{algo}: {why} after {done:,} of {steps:,} agent steps; logs in {args.run_dir}/logs")
  if failed or (done == base and why):
    raise RuntimeError(f"{algo} phase failed: {why}")
  return max(done, _learned_before(args.run_dir, algo))


__all__ = ["check_args", "run_phase"]
