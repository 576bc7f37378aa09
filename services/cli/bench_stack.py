"""`drivelab bench stack`: agent-steps/s through the full stack against the same simulate+learn work in one process.

Stack: `drivelab up` (fused simulators, replay, learner, broker, one scene loader, no evaluator or inference) as
local processes; the rate is the growth of drivelab_agent_steps_total summed over the simulators' /metrics,
measured over `--seconds` after every simulator has produced data and `--warmup` more seconds have passed.
In-process: the same engine, scenes, unroll and learner update in one loop (collect `sample_items` unrolls, one
update), timed over `--seconds` after its own warm-up. bus_cost = 1 - stack / in-process (negative when the
stack's processes overlap simulating and learning better than one loop does). The two sides run one after the
other, so other load on the machine skews them: the 1-minute load average after each is recorded beside it.
Results (command line, git commit, machine, UTC time) go to --out (default benchmarks/results/stack.json).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import time

from services.cli import provenance



def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  except OSError:
    return ""


def _total_steps(ports: list[int]) -> float:
  """drivelab_agent_steps_total summed over the processes' /metrics (0 for one not serving)."""
  from services.stack import supervisor

  return sum(supervisor.scrape_metrics(p, timeout_s=2.0).get("drivelab_agent_steps_total", 0.0) for p in ports)


@contextlib.contextmanager
def running_stack(cfg, start_timeout_s: float):
  """A local stack (services.stack.supervisor) in a thread, yielded once every simulator has produced data (its
  agent-steps counter moved); stopped on exit. RuntimeError when none did within `start_timeout_s`."""
  from services.stack import supervisor

  sup = supervisor.Supervisor(cfg, out=io.StringIO())
  thread = threading.Thread(target=sup.run, daemon=True)
  thread.start()
  ports = [c.metrics_port for c in sup.children if c.service == "simulator"]
  try:
    deadline = time.monotonic() + start_timeout_s
    while not all(_total_steps([p]) > 0 for p in ports):
      if time.monotonic() > deadline:
        raise RuntimeError(f"simulators produced no data within {start_timeout_s} s; see {cfg.run_dir}/logs")
      time.sleep(1.0)
    yield sup
  finally:
    sup.stop.set()
    thread.join(60)


def add_stack_args(p: argparse.ArgumentParser, simulators: int, seconds: float, out: str) -> None:
  """The flags every benchmark of a running stack takes."""
  p.add_argument("--simulators", type=int, default=simulators, help="simulator replicas in the stack")
  p.add_argument("--scenes", default="synthetic", help='"synthetic" or a scene folder')
  p.add_argument("--seconds", type=float, default=seconds, help="measured seconds")
  p.add_argument("--warmup", type=float, default=10.0 if seconds < 60 else 30.0,
                 help="seconds after the first data before measuring")
  p.add_argument("--start-timeout", type=float, default=300.0, help="most seconds to wait for compiled simulators")
  p.add_argument("--out", default=out, help="JSON result file")


def run_stack(args: argparse.Namespace, run_dir: str) -> dict:
  from services.stack import supervisor

  cfg = supervisor.StackConfig(simulators=args.simulators, inference=0, scene_loaders=1, evaluator=False,
                               mode="fused", run_dir=run_dir, scenes=args.scenes)
  with running_stack(cfg, args.start_timeout) as sup:
    ports = [c.metrics_port for c in sup.children if c.service == "simulator"]
    time.sleep(args.warmup)
    t0, c0 = time.monotonic(), _total_steps(ports)
    time.sleep(args.seconds)
    t1, c1 = time.monotonic(), _total_steps(ports)
  return {"agent_steps_per_s": (c1 - c0) / (t1 - t0), "agent_steps": c1 - c0, "seconds": t1 - t0,
          "simulators": args.simulators}


def run_in_process(args: argparse.Namespace) -> dict:
  """The stack's work in one loop: the same engine, policy network, trajectory and replay-batch layout, and the
  learner service's own update (services.learner.algo) on every `sample_items` unrolls."""
  import jax
  import numpy as np

  from services.common import runtime
  from shared.acting import policy_net
  from services.learner import algo as algo_lib
  from services.learner import config as learner_config
  from services.replay import config as replay_config
  from services.replay import service as replay_service
  from services.scene_loader import config as loader_config
  from services.scene_loader import service as loader_service
  from services.simulator import config as sim_config
  from shared.acting import engine as engine_lib
  from services.simulator import service as sim_service
  from shared.scenes import dataset

  lc, sc, rc = loader_config.SceneLoaderConfig(), sim_config.SimulatorConfig(), replay_config.ReplayConfig()
  scenarios, _ = loader_service.load_scenes(args.scenes, lc)
  batches = dataset.batch_iterator(scenarios, lc.batch_size, seed=0)
  env_cfg = sim_service.env_config(sc)
  pn = policy_net.from_common(runtime.CommonConfig(), env_cfg)
  engine = engine_lib.Engine(env_cfg, sc.unroll_length, policy=pn)
  learner = algo_lib.make(pn, "ppo", learner_config.LearnerConfig())
  state = learner.init_state()
  pending, steps, updates, t0 = [], 0, 0, None
  end = time.monotonic() + args.start_timeout
  while time.monotonic() < end:
    engine.load(next(batches))
    while not engine.episode_over() and time.monotonic() < end:
      rec = engine.collect(policy_net.to_flat(state.params))
      pending.append(sim_service.trajectory_arrays(rec, np.asarray(engine.feat)))
      if len(pending) == rc.sample_items:
        sample = {k: np.stack([r[k] for r in pending]) for k in pending[0]}
        state, metrics = learner.update(state, learner.to_batch(replay_service.to_batch_arrays(sample)))
        jax.block_until_ready(metrics)
        pending, updates = [], updates + 1
      if t0 is None and updates >= 2:  # both jits compiled: start the clock
        t0, end = time.monotonic(), time.monotonic() + args.seconds
      elif t0 is not None:
        steps += int(rec["valid"].sum())
  t1 = time.monotonic()
  if t0 is None:
    raise RuntimeError("in-process loop did not warm up")
  return {"agent_steps_per_s": steps / (t1 - t0), "agent_steps": steps, "seconds": t1 - t0}


def run(args: argparse.Namespace) -> int:
  result = {"benchmark": "stack", "command": " ".join(["drivelab"] + sys.argv[1:]),
            "git_commit": provenance.git_commit(),
            "machine": provenance.machine(cpu_model=_cpu_model()), "utc": provenance.utc_now(),
            "scenes": args.scenes}
  with tempfile.TemporaryDirectory(prefix="bench-stack-") as run_dir:
    result["stack"] = dict(run_stack(args, run_dir), load_avg_1m_after=os.getloadavg()[0])
  result["in_process"] = dict(run_in_process(args), load_avg_1m_after=os.getloadavg()[0])
  ratio = result["stack"]["agent_steps_per_s"] / max(result["in_process"]["agent_steps_per_s"], 1e-9)
  result["stack_over_in_process"] = ratio
  result["bus_cost"] = 1.0 - ratio
  result["goal"] = {"bus_cost_below": 0.10, "met": result["bus_cost"] < 0.10}
  print(json.dumps({k: result[k] for k in ("stack", "in_process", "stack_over_in_process", "bus_cost")}, indent=1))
  provenance.write_result(args.out, result)
  return 0


def register(subparsers) -> None:
  p = subparsers.add_parser("stack", help="agent-steps/s through the full stack vs the same work in one process")
  add_stack_args(p, simulators=1, seconds=30.0, out="benchmarks/results/stack.json")
  p.set_defaults(func=run)
