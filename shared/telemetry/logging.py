"""Structured one-line logs: `ts=... level=INFO component=replay logger=... msg="..." key=value`.

`setup_logging(component, level, json=False)` configures the root logger once per process. Code logs events as
`log.info("event=insert items=%d table=%s", n, name)` so lines stay grep- and Loki-friendly; `json=True` emits one
JSON object per line instead.
"""

from __future__ import annotations

import json as _json
import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
  """key=value lines; the message is quoted unless it is already key=value pairs."""

  def __init__(self, component: str, as_json: bool = False):
    super().__init__()
    self.component, self.as_json = component, as_json

  def format(self, record: logging.LogRecord) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
    msg = record.getMessage()
    if record.exc_info:
      msg += " exc=" + repr(self.formatException(record.exc_info))
    if self.as_json:
      return _json.dumps({"ts": ts, "level": record.levelname, "component": self.component,
                          "logger": record.name, "msg": msg})
    body = msg if "=" in msg.split(" ", 1)[0] else f"msg={_json.dumps(msg)}"
    return f"ts={ts} level={record.levelname} component={self.component} logger={record.name} {body}"


def setup_logging(component: str, level: str | int = "INFO", json: bool = False) -> logging.Logger:
  """Routes the root logger to stderr with one-line structured records; returns the component's logger."""
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(KeyValueFormatter(component, json))
  root = logging.getLogger()
  root.handlers[:] = [handler]
  root.setLevel(level if isinstance(level, int) else level.upper())
  return logging.getLogger(component)
