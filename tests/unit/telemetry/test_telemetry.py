"""Telemetry: a served /metrics page parses, holds every standard name, no _created series; key=value logs."""

from __future__ import annotations

import logging
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from shared.telemetry import metrics as tm
from shared.telemetry.logging import setup_logging


def _scrape(port: int) -> str:
  with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
    return r.read().decode()


def test_served_page_has_every_standard_name_and_no_created():
  reg = tm.new_registry()
  m = tm.standard_metrics(reg, version="1.2.3")
  m.count_in("Trajectory", 1000)
  m.count_in("Trajectory", 24)
  m.count_out("Params", 10)
  m.decode_error("bad_dtype")
  m.gap(3)
  m.queue_depth.labels(queue="fifo").set(7)
  with m.time("act"):
    pass
  m.restarts.labels(component="simulator").inc()
  m.agent_steps.inc(640)
  m.learner_loss.labels(name="policy").set(0.25)
  m.eval_metric.labels(metric="collision_rate", split="val").set(0.05)
  port = tm.serve(0, reg, addr="127.0.0.1")
  assert port > 0
  text = _scrape(port)
  assert "_created" not in text
  families = {f.name: f for f in text_string_to_metric_families(text)}
  # the parser strips _total from counter family names
  exposed = {s.name for f in families.values() for s in f.samples} | {f.name for f in families.values()}
  for name in tm.STANDARD_NAMES:
    assert name in exposed or name.removesuffix("_total") in families, name
  samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
  assert samples[("drivelab_messages_in_total", (("schema", "Trajectory"),))] == 2
  assert samples[("drivelab_bytes_in_total", ())] == 1024
  assert samples[("drivelab_decode_errors_total", (("reason", "bad_dtype"),))] == 1
  assert samples[("drivelab_sequence_gaps_total", ())] == 3
  assert samples[("drivelab_handler_seconds_count", (("handler", "act"),))] == 1
  assert samples[("drivelab_build_info", (("version", "1.2.3"),))] == 1
  assert samples[("drivelab_up", ())] == 1
  for (_, labels) in samples:
    assert not {"service", "job", "instance"} & {k for k, _ in labels}


def test_two_registries_do_not_collide():
  a, b = tm.new_registry(), tm.new_registry()
  tm.standard_metrics(a).agent_steps.inc(5)
  tm.standard_metrics(b)
  assert "drivelab_agent_steps_total 5.0" in tm.render(a)
  assert "drivelab_agent_steps_total 0.0" in tm.render(b)


def test_key_value_log_line(capsys):
  log = setup_logging("replay", "INFO")
  log.info("event=insert items=%d table=%s", 12, "fifo")
  log.info("plain words here")
  logging.getLogger("x").debug("hidden")
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2
  assert "level=INFO component=replay logger=replay event=insert items=12 table=fifo" in err[0]
  assert err[1].endswith('msg="plain words here"')
