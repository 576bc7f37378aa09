"""Benchmarks' noise meter: other processes' CPU share, which the load average (counting the run's own threads)
cannot give."""

import subprocess
import sys
import time

from services.cli import provenance


def test_other_cpu_share_sees_a_busy_process_that_is_not_ours():
  burner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 30: pass"])
  try:
    time.sleep(0.5)  # let it start
    meter = provenance.OtherCpu()
    time.sleep(1.5)
    share = meter.share()
  finally:
    burner.kill()
    burner.wait()
  # One core of the machine's busy with the burner: at least most of 1 / cores (less only if starved by others).
  cores = provenance.os.cpu_count() or 1
  assert share is not None and share >= 0.6 / cores


def test_own_cpu_is_subtracted_from_the_machines_busy_time(monkeypatch):
  busy, own, clock = iter([10.0, 13.0]), iter([5.0, 7.0]), iter([100.0, 101.0])
  monkeypatch.setattr(provenance.OtherCpu, "_busy_s", staticmethod(lambda: next(busy)))
  monkeypatch.setattr(provenance.OtherCpu, "_own_s", staticmethod(lambda: next(own)))
  monkeypatch.setattr(provenance.time, "perf_counter", lambda: next(clock))
  monkeypatch.setattr(provenance.os, "cpu_count", lambda: 2)
  # 3 busy CPU-seconds on the machine, 2 of them ours, over 1 s of 2 cores: others used 1 / 2.
  assert provenance.OtherCpu().share() == 0.5
