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


class OtherCpu:
  """CPU used by OTHER processes while a benchmark runs: the machine's busy time (/proc/stat) minus this process's
  own (its threads and waited-for children). The load average cannot tell: a benchmark's own threads raise it.

    meter = OtherCpu(); ...run...; share = meter.share()   # other processes' CPU / (wall x cores), 0..1
  None where /proc/stat is unavailable (not Linux)."""

  def __init__(self):
    self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy_s(), self._own_s()

  @staticmethod
  def _busy_s() -> float | None:
    try:
      with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
      return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait counts as busy
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

  @staticmethod
  def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system

  def share(self) -> float | None:
    busy = self._busy_s()
    wall = time.perf_counter() - self.t0
    if busy is None or self.busy0 is None or wall <= 0:
      return None
    other = (busy - self.busy0) - (self._own_s() - self.own0)
    return round(max(other, 0.0) / (wall * (os.cpu_count() or 1)), 3)
