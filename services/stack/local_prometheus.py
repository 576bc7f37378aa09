"""Starts Debian's `prometheus` binary for a local stack: config from prometheus_config, data under run_dir.

  proc, port = start({"simulator": ["127.0.0.1:9103"]}, 1.0, "runs/x", print)   # http://127.0.0.1:{port}
`promtool check config` validates the file first when promtool is installed. Returns (None, 0) with a one-line
reason when the binary is absent (apt-get install -y prometheus).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Callable

from services.stack import prometheus_config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return int(s.getsockname()[1])


def write_config(targets: dict[str, list[str]], scrape_interval_s: float, run_dir: str) -> str:
  out = os.path.join(run_dir, "prometheus")
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "prometheus.yml")
  with open(path, "w") as f:
    f.write(prometheus_config.render_local_config(targets, scrape_interval_s))
  return path


def start(targets: dict[str, list[str]], scrape_interval_s: float, run_dir: str,
          say: Callable[[str], None] = print) -> tuple[subprocess.Popen | None, int]:
  binary = shutil.which("prometheus")
  if binary is None:
    say("prometheus: binary not found, not starting it (apt-get install -y prometheus)")
    return None, 0
  path = write_config(targets, scrape_interval_s, run_dir)
  promtool = shutil.which("promtool")
  if promtool is not None:
    check = subprocess.run([promtool, "check", "config", path], capture_output=True, text=True)
    if check.returncode != 0:
      say(f"prometheus: config rejected by promtool: {check.stdout.strip()} {check.stderr.strip()}")
      return None, 0
  port = _free_port()
  data = os.path.join(run_dir, "prometheus", "data")
  logf = open(os.path.join(run_dir, "logs", "prometheus.log"), "ab")
  proc = subprocess.Popen([binary, f"--config.file={path}", f"--storage.tsdb.path={data}",
                           f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d"],
                          stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
  logf.close()
  say(f"started prometheus pid={proc.pid} ui=http://127.0.0.1:{port} config={path}")
  return proc, port
