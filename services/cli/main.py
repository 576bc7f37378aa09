"""`drivelab`: one command line for scenes, the simulator, training, evaluation, the stack and benchmarks.

Each command group lives in its own module under `services/cli/` exposing `register(subparsers)`; the module adds
its subcommands with `set_defaults(func=...)`. Modules are imported lazily by group so `drivelab scenes ...` does
not pay for importing the service stack.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# group -> modules that add subcommands to it (None: top-level commands).
COMMAND_MODULES: dict[str | None, tuple[str, ...]] = {
    "scenes": ("services.cli.scenes_io", "services.cli.scenes_synth", "services.cli.scenes_replay"),
    "bench": ("services.cli.bench_sim", "services.cli.bench_wire", "services.cli.bench_stack",
              "services.cli.bench_learn", "services.cli.bench_memory"),
    None: ("services.cli.demo", "services.cli.stack_cmd", "services.cli.eval_cmd", "services.cli.train_cmd"),
}
GROUP_HELP = {
    "scenes": "inspect, convert, generate, render and replay driving scenes",
    "bench": "benchmarks that write JSON under benchmarks/results/",
}


def _load(name: str):
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name == name:  # a command module not written yet: skip it, keep the rest usable
      return None
    raise


def build_parser(only_group: str | None = "*") -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="drivelab", description=__doc__.splitlines()[0])
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for group, modules in COMMAND_MODULES.items():
    if only_group != "*" and group != only_group:
      continue
    if group is None:
      target = sub
    else:
      gp = sub.add_parser(group, help=GROUP_HELP.get(group, ""))
      target = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
      gp.set_defaults(func=lambda args, gp=gp: (gp.print_help(), 2)[1])
    for name in modules:
      mod = _load(name)
      if mod is not None:
        mod.register(target)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  first = next((a for a in argv if not a.startswith("-")), None)
  group = first if first in COMMAND_MODULES else (None if first else "*")
  parser = build_parser(group if first else "*")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  if not getattr(args, "func", None):
    parser.print_help()
    return 2
  rc = args.func(args)
  return int(rc or 0)


if __name__ == "__main__":
  sys.exit(main())
