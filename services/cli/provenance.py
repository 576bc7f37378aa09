"""Where a result came from: git commit, machine, time. Every benchmark and report JSON carries these."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def git_commit() -> str | None:
  """HEAD of the repository this code runs from, or None outside a git checkout."""
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
  except (OSError, subprocess.SubprocessError):
    return None
  return (out.stdout.strip() or None) if out.returncode == 0 else None


def machine(**extra) -> dict:
  """Platform, cores, Python and the load average (other work on a shared box makes timings noisy)."""
  return dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=sys.version.split()[0],
              loadavg_1_5_15min=list(os.getloadavg()), **extra)


def utc_now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_result(path: str, result: dict) -> None:
  """Writes a benchmark's JSON (creating its folder) and says where."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {path}")
