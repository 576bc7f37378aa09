"""bench memory's figures: growth from the first sample to the highest of the last three, least-squares slope, and a
restart (pid changed) failing the goal."""

from __future__ import annotations

import os

import pytest

from services.cli import bench_memory


def test_slope_is_least_squares():
  assert bench_memory.slope([0, 1, 2, 3], [10, 12, 14, 16]) == pytest.approx(2.0)
  assert bench_memory.slope([0, 1, 2], [5, 9, 5]) == pytest.approx(0.0)
  assert bench_memory.slope([0], [5]) == 0.0


def test_summary_growth_restart_and_goal():
  rows = {"flat": [(0, 100, 1), (2, 104, 1), (4, 103, 1), (6, 105, 1)],
          "leaky": [(0, 100, 2), (2, 130, 2), (4, 160, 2), (6, 190, 2)],
          "restarted": [(0, 100, 3), (2, 101, 3), (4, 100, 4), (6, 101, 4)],
          "gone": []}
  out = bench_memory.summarize(rows, max_growth=0.10)
  assert out["flat"]["growth_pct"] == pytest.approx(5.0) and out["flat"]["met"]
  assert out["leaky"]["growth_pct"] == pytest.approx(90.0) and out["leaky"]["slope_mb_per_s"] == pytest.approx(15.0)
  assert not out["leaky"]["met"]
  assert out["restarted"]["restarted"] and not out["restarted"]["met"]
  assert not out["gone"]["met"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_rss_of_this_process_and_of_a_missing_one():
  assert bench_memory.rss_mb(os.getpid()) > 1.0
  assert bench_memory.rss_mb(2**22 + 12345) is None
