"""`drivelab bench memory`: every service's resident memory over a `drivelab up` run, flat after warm-up or not.

The stack is what `drivelab up --simulators N` starts (learner, replay, broker, inference, N simulators, a scene
loader, the evaluator) as local processes. Once every simulator has produced data and `--warmup` more seconds
have passed, each process's RSS is read from /proc every `--interval` seconds for `--seconds`. Per process: RSS at
the start of the measurement, at its end (the highest of the last three samples), the peak, the growth in percent
and the least-squares slope in MB/s. The goal, as the replay soak test asks of replay: every process grows by less
than `--max-growth` (10%) after warm-up. A process the supervisor restarted during the measurement is reported
(pid changed) and fails the goal. Results (command line, git commit, machine, UTC time) go to --out (default
benchmarks/results/memory.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from services.cli import provenance


def rss_mb(pid: int) -> float | None:
  """Resident set size of `pid` in MB (from /proc), None when it is gone."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    return None
  return None


def slope(ts: list[float], ys: list[float]) -> float:
  """Least-squares slope of ys over ts (0 for fewer than two points)."""
  n = len(ts)
  if n < 2:
    return 0.0
  mt, my = sum(ts) / n, sum(ys) / n
  var = sum((t - mt) ** 2 for t in ts)
  return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var if var > 0 else 0.0


def summarize(series: dict[str, list[tuple[float, float, int]]], max_growth: float) -> dict:
  """{process: figures} from {process: [(t_s, rss_mb, pid)]}."""
  out = {}
  for name, rows in series.items():
    if not rows:
      out[name] = {"samples": 0, "met": False}
      continue
    ts, ys, pids = [r[0] for r in rows], [r[1] for r in rows], {r[2] for r in rows}
    start, end = ys[0], max(ys[-3:])
    growth = (end - start) / start if start > 0 else 0.0
    out[name] = {"samples": len(rows), "rss_start_mb": round(start, 1), "rss_end_mb": round(end, 1),
                 "rss_peak_mb": round(max(ys), 1), "growth_pct": round(100 * growth, 2),
                 "slope_mb_per_s": round(slope(ts, ys), 3), "restarted": len(pids) > 1,
                 "met": growth < max_growth and len(pids) == 1}
  return out


def run_stack(args: argparse.Namespace, run_dir: str) -> dict:
  from services.cli import bench_stack
  from services.stack import supervisor

  cfg = supervisor.StackConfig(simulators=args.simulators, run_dir=run_dir, scenes=args.scenes)
  with bench_stack.running_stack(cfg, args.start_timeout) as sup:
    time.sleep(args.warmup)
    series: dict[str, list[tuple[float, float, int]]] = {c.name: [] for c in sup.children}
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds:
      for c in sup.children:
        pid = c.proc.pid if c.proc is not None else None
        rss = rss_mb(pid) if pid is not None else None
        if rss is not None:
          series[c.name].append((time.monotonic() - t0, rss, pid))
      time.sleep(args.interval)
    ports = [c.metrics_port for c in sup.children if c.service == "simulator"]
    agent_steps = bench_stack._total_steps(ports)
  return {"series": series, "agent_steps_total": agent_steps, "seconds": time.monotonic() - t0}


def run(args: argparse.Namespace) -> int:
  result = {"benchmark": "memory", "command": " ".join(["drivelab"] + sys.argv[1:]),
            "git_commit": provenance.git_commit(), "machine": provenance.machine(), "utc": provenance.utc_now(),
            "scenes": args.scenes, "simulators": args.simulators, "warmup_s": args.warmup,
            "interval_s": args.interval}
  with tempfile.TemporaryDirectory(prefix="bench-memory-") as run_dir:
    measured = run_stack(args, run_dir)
  result["seconds"] = measured["seconds"]
  result["agent_steps_total_at_end"] = measured["agent_steps_total"]
  result["processes"] = summarize(measured["series"], args.max_growth)
  result["rss_mb_series"] = {name: [[round(t, 1), round(r, 1)] for t, r, _ in rows]
                             for name, rows in measured["series"].items()}
  result["goal"] = {"growth_below_pct": 100 * args.max_growth,
                    "met": all(p["met"] for p in result["processes"].values())}
  for name, p in result["processes"].items():
    print(f"{name:16s} {p.get('rss_start_mb', 0):8.1f} -> {p.get('rss_end_mb', 0):8.1f} MB "
          f"({p.get('growth_pct', 0):+6.2f}%, {p.get('slope_mb_per_s', 0):+.3f} MB/s){'' if p['met'] else '  FAIL'}")
  print(json.dumps(result["goal"]))
  provenance.write_result(args.out, result)
  return 0 if result["goal"]["met"] else 1


def register(subparsers) -> None:
  p = subparsers.add_parser("memory", help="every service's RSS over a drivelab up run: flat after warm-up?")
  from services.cli import bench_stack

  bench_stack.add_stack_args(p, simulators=2, seconds=120.0, out="benchmarks/results/memory.json")
  p.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples")
  p.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth after warm-up (fraction)")
  p.set_defaults(func=run)
