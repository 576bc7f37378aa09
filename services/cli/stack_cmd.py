"""`drivelab up` (the whole stack as local processes) and `drivelab serve NAME` (one service process).

  drivelab up --simulators 2 --inference 1 --scene-loaders 1 --duration 60 --prometheus --mode service
  drivelab up --algo bc --run-dir runs/bc --duration 300   # BC on the logged experts, then PPO fine-tuning:
  drivelab up --init-from runs/bc --ref-kl 0.2 --run-dir runs/ppo
  drivelab serve simulator --mode fused          # flags after NAME go to the service (see `serve NAME --help`)
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from services.common import runtime


def _up(args: argparse.Namespace) -> int:
  from services.stack import supervisor

  cfg = supervisor.StackConfig(
      simulators=args.simulators, inference=args.inference, scene_loaders=args.scene_loaders,
      evaluator=not args.no_evaluator, mode=args.mode, duration_s=args.duration, scenes=args.scenes,
      run_dir=args.run_dir, port_offset=args.port_offset, prometheus=args.prometheus,
      scrape_interval_s=args.scrape_interval, stagger=not args.no_stagger, warmup=args.warmup, algo=args.algo,
      extra_env=learner_env(args))
  sup = supervisor.Supervisor(cfg)
  sup.install_signal_handlers()
  return sup.run()


def learner_env(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
  """The learner's fine-tuning settings as env vars for the stack's children (exit 2 on bad ones)."""
  from shared.algos import registry

  no_reference = bool(args.algo) and registry.get(args.algo).add_reference is None
  if args.ref_kl < 0 or (args.ref_kl > 0 and (not args.init_from or no_reference)):
    print("drivelab up: --ref-kl is a weight >= 0 and needs --init-from with PPO", file=sys.stderr)
    raise SystemExit(2)
  return tuple(fine_tune_env(args.init_from, args.ref_kl).items()) if args.init_from else ()


def fine_tune_env(init_from: str, ref_kl: float) -> dict[str, str]:
  """The learner's env settings that start it from `init_from` (a BC run) with KL weight `ref_kl` (0: none)."""
  env = {"DRIVELAB_LEARNER_INIT_FROM": os.path.abspath(init_from)}
  if ref_kl:
    env["DRIVELAB_LEARNER_REF_KL"] = repr(float(ref_kl))
  return env


def _serve(args: argparse.Namespace) -> int:
  # A SIGTERM while the service still imports (JAX takes seconds) has nothing to flush: exit cleanly. The
  # service's own handler replaces this one before it opens any socket.
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
  service = importlib.import_module(f"services.{args.name}.service")
  return service.main(args.service_args)


def register(subparsers) -> None:
  up = subparsers.add_parser("up", help="run the whole service stack as local processes (no Docker)")
  up.add_argument("--simulators", type=int, default=2, help="simulator replicas")
  up.add_argument("--inference", type=int, default=1, help="inference worker replicas")
  up.add_argument("--scene-loaders", type=int, default=1, help="scene loader replicas")
  up.add_argument("--no-evaluator", action="store_true", help="do not run the evaluator")
  up.add_argument("--mode", choices=("fused", "service"), default="fused",
                  help="fused: policy inside the simulator's jitted rollout; service: actions from inference")
  up.add_argument("--duration", type=float, default=0.0, help="stop by itself after SECONDS (0: until Ctrl-C)")
  up.add_argument("--scenes", default="synthetic", help='"synthetic" or a folder of scene files')
  up.add_argument("--run-dir", default="runs/stack", help="logs, stack.json, checkpoints, eval reports")
  up.add_argument("--port-offset", type=int, default=-1, help="ZeroMQ port offset (-1: find a free block)")
  up.add_argument("--prometheus", action="store_true", help="also start a local Prometheus scraping every process")
  up.add_argument("--scrape-interval", type=float, default=1.0, help="Prometheus scrape interval in seconds")
  up.add_argument("--no-stagger", action="store_true",
                  help="start every simulator at once instead of after the first has compiled")
  up.add_argument("--warmup", action="store_true",
                  help="compile the simulator once (into JAX's persistent cache) before starting the stack and "
                       "the --duration clock")
  from shared.algos import registry

  up.add_argument("--algo", type=registry.check, default="",
                  help="the learner's algorithm (default: DRIVELAB_ALGO, else ppo); bc clones the logged experts")
  up.add_argument("--init-from", default="",
                  help="start the learner from the newest checkpoint of a BC run (its run dir or checkpoints/bc)")
  up.add_argument("--ref-kl", type=float, default=0.0,
                  help="with --init-from and PPO: weight of KL(pi_init || pi) in the loss (0: off)")
  up.set_defaults(func=_up)

  serve = subparsers.add_parser("serve", help="run one service process (what `up` and the containers run)")
  serve.add_argument("name", choices=runtime.SERVICES)
  serve.add_argument("service_args", nargs=argparse.REMAINDER, help="flags for the service")
  serve.set_defaults(func=_serve)
