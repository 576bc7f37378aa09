"""`drivelab up --duration 90 --warmup --prometheus`: the real stack as local processes, scraped by a real Prometheus.

Checks, while it runs: every process is a Prometheus target with `up == 1`; the agent-step rate Prometheus
computes is positive; then a SIGKILLed simulator is restarted (new pid, drivelab_restarts_total{component="simulator"}
on the supervisor's /metrics, its /metrics back). Then the stack stops by itself and every process exits cleanly.
`--warmup` compiles the simulator into JAX's persistent cache (~/.cache/drivelab/jax) before the stack and its
90 s start: cold on a busy 2-core machine that takes 1-2 minutes, warm a few seconds.
The Prometheus checks are skipped (with the reason) only when the `prometheus` binary is absent.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DURATION_S = 90  # the restart check must fit in it with the other test worker busy


def _get(url: str, timeout_s: float = 2.0) -> str:
  with urllib.request.urlopen(url, timeout=timeout_s) as r:
    return r.read().decode()


def _query(port: int, promql: str) -> list[dict]:
  body = json.loads(_get(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
  assert body["status"] == "success", body
  return body["data"]["result"]


def _status(run_dir: pathlib.Path) -> dict:
  try:
    return json.loads((run_dir / "stack.json").read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


def _wait(cond, timeout_s: float, what: str, proc: subprocess.Popen):
  deadline = time.monotonic() + timeout_s
  last_error = None
  while time.monotonic() < deadline:
    try:
      value = cond()
      if value:
        return value
    except (OSError, ValueError, KeyError) as e:  # not up yet
      last_error = e
    if proc.poll() is not None:
      break
    time.sleep(0.5)
  raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


def _all_up(result: list[dict], n: int) -> list[dict] | None:
  return result if len(result) == n and all(x["value"][1] == "1" for x in result) else None


def _positive(result: list[dict]) -> list[dict] | None:
  return result if result and float(result[0]["value"][1]) > 0 else None


def _scrape(port: int, name: str) -> float:
  for line in _get(f"http://127.0.0.1:{port}/metrics").splitlines():
    if line.startswith(name):
      return float(line.rsplit(" ", 1)[1])
  return 0.0


@pytest.mark.slow
def test_drivelab_up_runs_scrapes_restarts_and_stops(tmp_path):
  have_prometheus = shutil.which("prometheus") is not None
  run_dir = tmp_path / "stack"
  cmd = [sys.executable, "-m", "services.cli.main", "up", "--duration", str(DURATION_S), "--run-dir", str(run_dir),
         "--simulators", "2", "--inference", "1", "--scene-loaders", "1", "--warmup"]
  cmd += ["--prometheus"] if have_prometheus else []
  # The "tiny" policy network (passed through the environment to every process) keeps the compiles short.
  env = dict(os.environ, JAX_PLATFORMS="cpu", DRIVELAB_NET_PRESET="tiny")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    status = _wait(lambda: _status(run_dir).get("children", {}).get("evaluator-0", {}).get("pid")
                   and _status(run_dir), 300, "stack.json", proc)  # after the warm-up
    children = status["children"]
    assert sorted(children) == ["broker-0", "evaluator-0", "inference-0", "learner-0", "replay-0", "scene_loader-0",
                                "simulator-0", "simulator-1"]
    # SCRAPE: Prometheus sees every process up and a positive agent-step rate.
    if have_prometheus:
      prom = _wait(lambda: _status(run_dir).get("prometheus_port"), 20, "prometheus port", proc)
      rate = _wait(lambda: _positive(_query(prom, "sum(rate(drivelab_agent_steps_total[15s]))")), DURATION_S,
                   "agent-step rate > 0", proc)
      assert float(rate[0]["value"][1]) > 0
      # After --warmup every simulator starts at once (no stagger), but loading its programs takes a while.
      up = _wait(lambda: _all_up(_query(prom, "up"), len(children) + 1), 40, "up == 1 on every target", proc)
      assert {x["metric"]["job"] for x in up} == {"stack", "broker", "evaluator", "inference", "learner", "replay",
                                                   "scene_loader", "simulator"}
    else:
      _wait(lambda: _scrape(children["simulator-0"]["metrics_port"], "drivelab_agent_steps_total") > 0, DURATION_S,
            "agent steps", proc)
    # KILL: a simulator dies (after the first data, so the compile cache is warm); the supervisor starts a new one
    # on the same /metrics port and counts it.
    old_pid = children["simulator-0"]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    _wait(lambda: _status(run_dir)["children"]["simulator-0"]["pid"] not in (None, old_pid), 15, "a restart", proc)
    sup_port = status["supervisor"]["metrics_port"]
    assert _scrape(sup_port, 'drivelab_restarts_total{component="simulator"}') == 1.0
    _wait(lambda: _scrape(children["simulator-0"]["metrics_port"], "drivelab_up") == 1, 30, "the new /metrics", proc)
    if not have_prometheus:
      pytest.skip("prometheus binary not found (apt-get install -y prometheus): scrape checks skipped")
    # STOP: by itself after --duration, every child exiting 0 on SIGTERM.
    out, _ = proc.communicate(timeout=DURATION_S + 40)
    learner = json.loads((run_dir / "policy.json").read_text())  # the learner ran the real network
    assert (learner["net"], learner["preset"], learner["algo"]) == ("mlp", "tiny", "ppo")
  finally:
    if proc.poll() is None:
      proc.send_signal(signal.SIGINT)
      proc.wait(30)
  assert proc.returncode == 0, out[-3000:]
  assert f"duration of {DURATION_S} s reached" in out
  stopped = [line for line in out.splitlines() if line.startswith("stopped:")]
  assert stopped and all(part.endswith("=0") for part in stopped[0].split()[1:]), stopped
  assert "restarting simulator-0" in out
