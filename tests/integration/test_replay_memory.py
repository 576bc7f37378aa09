"""Replay's memory stays flat under a steady stream: the real `serve replay` process, fed Trajectories by credit and
drained by a learner-like consumer, for DRIVELAB_SOAK_S seconds (60 by default) after a warm-up. Its RSS, read from
/proc, may grow by less than 10% after the warm-up. (Every wire arena it built for a ReplayBatch used to leak,
about 4 MB per 1 MB Trajectory here; `drivelab bench memory` measures every service of a `drivelab up` the same
way.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from services.stack import supervisor
from shared.wire import flow, registry, transport

T, B, F = 32, 16, 512  # 1 MiB of observations per Trajectory


def rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f"no VmRSS for pid {pid}")


def _trajectory(rng: np.random.Generator) -> dict:
  return {"obs/flat": rng.random((T, B, F), np.float32), "action": rng.integers(0, 91, (T, B), np.int32),
          "reward": rng.random((T, B), np.float32), "done": np.zeros((T, B), bool), "valid": np.ones((T, B), bool),
          "log_prob": np.zeros((T, B), np.float32), "value": np.zeros((T, B), np.float32)}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_replay_rss_stays_flat_under_a_steady_stream(tmp_path):
  soak_s = float(os.environ.get("DRIVELAB_SOAK_S", "60"))
  offset = supervisor.find_port_offset()
  env = dict(os.environ, DRIVELAB_PORT_OFFSET=str(offset), DRIVELAB_METRICS_PORT="0", DRIVELAB_LOG_LEVEL="WARNING",
             DRIVELAB_RUN_DIR=str(tmp_path), JAX_PLATFORMS="cpu")
  ctx = transport.new_context()
  # The learner's end of replay_samples (binds) and a simulator's end of trajectories (connects).
  learner = flow.CreditConsumer(ctx, registry.endpoint("replay_samples", host="*", port_offset=offset), window=2)
  sim = flow.CreditProducer(ctx, registry.endpoint("trajectories", port_offset=offset), producer_id="sim", epoch=1)
  log = open(tmp_path / "replay.log", "w")
  proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "replay"], env=env, stdout=log,
                          stderr=subprocess.STDOUT)
  rng = np.random.default_rng(0)
  pool = [_trajectory(rng) for _ in range(4)]
  sent = batches = 0
  samples: list[tuple[float, float]] = []

  def pump(seconds: float) -> None:
    nonlocal sent, batches
    end = time.monotonic() + seconds
    while time.monotonic() < end:
      assert proc.poll() is None, (tmp_path / "replay.log").read_text()[-2000:]
      if sim.send_fields("Trajectory", arrays=pool[sent % len(pool)], timeout_s=0.05, params_version=0,
                         env_steps=T * B):
        sent += 1
      msg = learner.recv(0.0)
      if msg is not None:
        assert msg.schema == "ReplayBatch" and msg.arrays["obs/flat"].shape == (T, 2 * B, F)
        batches += 1
      if not samples or time.monotonic() - samples[-1][0] >= 1.0:
        samples.append((time.monotonic(), rss_mb(proc.pid)))

  try:
    pump(20.0)  # warm-up: imports, the jitted insert and sample compiled, the allocator's pools filled
    warm_sent, warm_rss = sent, rss_mb(proc.pid)
    samples.clear()
    pump(soak_s)
    end_rss = max(r for _, r in samples[-5:])  # the highest of the last 5 s, not a lucky low
  finally:
    proc.terminate()
    proc.wait(15)
    log.close()
    for s in (learner, sim):
      s.close()
    ctx.destroy(linger=0)
  streamed = sent - warm_sent
  assert streamed >= 10 * soak_s, f"only {streamed} Trajectories in {soak_s} s: not a steady stream"
  assert batches >= (sent - 8) // 2 - 2  # everything sent came back out, but what the queue (8) may still hold
  growth = (end_rss - warm_rss) / warm_rss
  assert growth < 0.10, (f"replay RSS {warm_rss:.0f} -> {end_rss:.0f} MB (+{100 * growth:.1f}%) over {soak_s} s, "
                         f"{streamed} Trajectories of {T * B * F * 4 >> 20} MiB")
