"""A/B of one `drivelab bench` command between two checkouts on this machine, in one run: BASE and HEAD alternate
(`--rounds` times each, base first), every run's JSON is kept, and one file holds them all with both commits.

  git worktree add /tmp/base <commit>      # the baseline checkout (its ../shared must reach the scenes too)
  .venv/bin/python benchmarks/scripts/ab_commits.py --base /tmp/base --rounds 2 \
      --out benchmarks/results/ab_sim_quick.json -- bench sim --quick --out {out}

`{out}` in the command is replaced by each run's own result path (for `bench learn`, pass `--out-dir {dir}`).
Runs are sequential: nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HEAD = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(HEAD))

from services.cli import provenance  # noqa: E402


def _commit(repo: pathlib.Path) -> str:
  return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=repo).stdout.strip()


def _run(repo: pathlib.Path, argv: list[str], work: pathlib.Path) -> dict:
  out, out_dir = work / "result.json", work / "out"
  out_dir.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "services.cli.main"] + [a.replace("{out}", str(out)).replace("{dir}", str(out_dir))
                                                       for a in argv]
  env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(cmd)} failed in {repo} ({proc.returncode}):\n{proc.stderr[-3000:]}")
  results = {p.name: json.loads(p.read_text()) for p in [out] + sorted(out_dir.glob("*.json")) if p.is_file()}
  return {"wall_s": round(wall, 1), "results": results}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--base", required=True, help="the baseline checkout")
  p.add_argument("--rounds", type=int, default=1)
  p.add_argument("--out", required=True)
  p.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the drivelab arguments")
  args = p.parse_args()
  argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
  repos = {"base": pathlib.Path(args.base).resolve(), "head": HEAD}
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for name, repo in repos.items():
        print(f"round {r + 1}/{args.rounds}: {name} ({repo})", flush=True)
        runs.append(dict(which=name, round=r, **_run(repo, argv, pathlib.Path(tmp) / f"{name}{r}")))
  result = {"benchmark": "ab_commits", "command": " ".join(["python"] + sys.argv),
            "drivelab_args": argv, "commits": {k: _commit(v) for k, v in repos.items()},
            "machine": provenance.machine(), "utc": provenance.utc_now(), "runs": runs}
  provenance.write_result(args.out, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
