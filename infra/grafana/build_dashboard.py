"""Builds infra/grafana/dashboards/drivelab.json, the provisioned Grafana dashboard, from plain Python dicts.

  python infra/grafana/build_dashboard.py            # rewrite the committed JSON
  python infra/grafana/build_dashboard.py --check    # exit 1 if the committed JSON is stale

Rows: throughput, latency, queues and flow, learning, evaluation, errors and health. Every query names only the
metrics the services export (shared/telemetry; listed in METRICS below) and filters on the `job` and `instance`
labels that the scrape adds. Grafana variables: $datasource, $job, $instance, $split; `$__rate_interval` is
Grafana's own. tests/e2e/test_infra_offline.py parses every expression with promql-parser.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent / "dashboards" / "drivelab.json"
UID = "drivelab-overview"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
RI = "$__rate_interval"

# Metrics the services export (shared/telemetry); the histogram also has _bucket/_sum/_count.
METRICS = (
    "drivelab_messages_in_total", "drivelab_messages_out_total", "drivelab_bytes_in_total",
    "drivelab_bytes_out_total", "drivelab_decode_errors_total", "drivelab_sequence_gaps_total",
    "drivelab_credit_refused_total", "drivelab_queue_depth", "drivelab_handler_seconds", "drivelab_restarts_total", "drivelab_agent_steps_total",
    "drivelab_batch_fill_ratio", "drivelab_params_version", "drivelab_params_version_lag", "drivelab_learner_loss",
    "drivelab_eval_metric", "drivelab_up", "drivelab_build_info",
)


def target(expr: str, legend: str, ref: str = "A", instant: bool = False) -> dict:
  return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": not instant,
          "instant": instant}


def panel(title: str, targets: list[dict], unit: str = "short", kind: str = "timeseries", w: int = 8,
          h: int = 8, description: str = "", stack: bool = False) -> dict:
  for ref, t in zip("ABCDEFGH", targets):
    t["refId"] = ref
  custom = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
  p = {"type": kind, "title": title, "description": description, "datasource": DS, "targets": targets,
       "gridPos": {"w": w, "h": h},
       "fieldConfig": {"defaults": {"unit": unit, "custom": custom if kind == "timeseries" else {}},
                       "overrides": []},
       "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                   "tooltip": {"mode": "multi", "sort": "desc"}}}
  if kind == "stat":
    p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto"}
  return p


def rate(metric: str, by: str, extra: str = "") -> str:
  return f"sum by ({by}) (rate({metric}{{{SEL}{extra}}}[{RI}]))"


def quantile(q: float) -> dict:
  expr = f"histogram_quantile({q}, sum by (job, handler, le) (rate(drivelab_handler_seconds_bucket{{{SEL}}}[{RI}])))"
  return target(expr, f"{{{{job}}}} {{{{handler}}}} p{round(q * 100)}")


def throughput_row() -> list[dict]:
  return [
      panel("Agent steps / s (all simulators)", [target(f"sum(rate(drivelab_agent_steps_total{{{SEL}}}[{RI}]))",
                                                        "total")], unit="short", kind="stat", w=6),
      panel("Agent steps / s by instance", [target(rate("drivelab_agent_steps_total", "job, instance"),
                                                   "{{instance}}")], w=18, stack=True),
      panel("Messages in / s by schema", [target(rate("drivelab_messages_in_total", "job, schema"),
                                                 "{{job}} {{schema}}")], unit="reqps"),
      panel("Messages out / s by schema", [target(rate("drivelab_messages_out_total", "job, schema"),
                                                  "{{job}} {{schema}}")], unit="reqps"),
      panel("Bytes / s", [target(rate("drivelab_bytes_in_total", "job"), "{{job}} in"),
                          target(f"-{rate('drivelab_bytes_out_total', 'job')}", "{{job}} out")], unit="Bps",
            description="Received bytes above zero, sent bytes below."),
  ]


def latency_row() -> list[dict]:
  mean = (f"sum by (job, handler) (rate(drivelab_handler_seconds_sum{{{SEL}}}[{RI}])) / "
          f"sum by (job, handler) (rate(drivelab_handler_seconds_count{{{SEL}}}[{RI}]))")
  return [
      panel("Handler latency p50 / p95 / p99", [quantile(0.5), quantile(0.95), quantile(0.99)], unit="s", w=12,
            description="histogram_quantile over drivelab_handler_seconds, per service and handler."),
      panel("Handler mean latency", [target(mean, "{{job}} {{handler}}")], unit="s", w=6),
      panel("Handler calls / s", [target(rate("drivelab_handler_seconds_count", "job, handler"),
                                         "{{job}} {{handler}}")], unit="reqps", w=6),
  ]


def flow_row() -> list[dict]:
  return [
      panel("Queue depth", [target(f"max by (job, queue) (drivelab_queue_depth{{{SEL}}})", "{{job}} {{queue}}")],
            w=6),
      panel("Batch fill ratio", [target(f"avg by (job) (drivelab_batch_fill_ratio{{{SEL}}})", "{{job}}")],
            unit="percentunit", w=6),
      panel("Sequence gaps / s (lost messages)", [target(rate("drivelab_sequence_gaps_total", "job, instance"),
                                                         "{{instance}}")], w=6),
      panel("Params version and lag", [
          target(f"max by (job, instance) (drivelab_params_version{{{SEL}}})", "{{instance}} version"),
          target(f"max by (job, instance) (drivelab_params_version_lag{{{SEL}}})", "{{instance}} lag")], w=6),
  ]


def learning_row() -> list[dict]:
  per_min = f"60 * max(deriv(drivelab_params_version{{job=\"learner\", instance=~\"$instance\"}}[5m]))"
  return [
      panel("Learner losses", [target(f"avg by (name) (drivelab_learner_loss{{{SEL}}})", "{{name}}")], w=16),
      panel("Params versions published / min", [target(per_min, "learner")], w=8),
  ]


def evaluation_row() -> list[dict]:
  sel = f'{SEL}, split=~"$split"'
  return [
      panel("Eval metrics by split", [target(f"avg by (metric, split) (drivelab_eval_metric{{{sel}}})",
                                             "{{split}} {{metric}}")], w=16),
      panel("Latest eval metrics", [target(f"avg by (metric, split) (drivelab_eval_metric{{{sel}}})",
                                           "{{split}} {{metric}}", instant=True)], kind="table", w=8),
  ]


def health_row() -> list[dict]:
  return [
      panel("Targets up", [target('sum by (job) (up{job=~"$job"})', "{{job}} up"),
                           target('count by (job) (up{job=~"$job"})', "{{job}} known")], w=6),
      panel("drivelab_up by instance", [target(f"min by (job, instance) (drivelab_up{{{SEL}}})", "{{instance}}")],
            w=6),
      panel("Decode errors / s by reason", [target(rate("drivelab_decode_errors_total", "job, reason"),
                                                   "{{job}} {{reason}}")], w=6),
      panel("Restarts (1 h)", [target(f"sum by (job, component) (increase(drivelab_restarts_total{{{SEL}}}[1h]))",
                                      "{{job}} {{component}}")], w=6),
      panel("Refused flow-control claims / s by reason", [target(rate("drivelab_credit_refused_total", "job, reason"),
                                                                  "{{job}} {{reason}}")], w=8, h=5,
            description="Credit grants, ready messages and uncredited data refused: a stranger or a misconfigured "
                        "peer on a bus port."),
      panel("Build versions", [target(f"count by (version) (drivelab_build_info{{{SEL}}})", "{{version}}",
                                      instant=True)], kind="table", w=16, h=5),
  ]


ROWS = (("Throughput", throughput_row), ("Latency", latency_row), ("Queues and flow", flow_row),
        ("Learning", learning_row), ("Evaluation", evaluation_row), ("Errors and health", health_row))


def layout(rows) -> list[dict]:
  """Flattens rows into panels with ids and grid positions (24 columns; panels wrap left to right)."""
  panels, ids, y = [], itertools.count(1), 0
  for title, build in rows:
    panels.append({"type": "row", "title": title, "id": next(ids), "collapsed": False, "panels": [],
                   "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}})
    y, x, row_h = y + 1, 0, 0
    for p in build():
      w, h = p["gridPos"]["w"], p["gridPos"]["h"]
      if x + w > 24:
        y, x, row_h = y + row_h, 0, 0
      p["id"], p["gridPos"] = next(ids), {"x": x, "y": y, "w": w, "h": h}
      panels.append(p)
      x, row_h = x + w, max(row_h, h)
    y += row_h
  return panels


def variable(name: str, query: str, label: str) -> dict:
  return {"type": "query", "name": name, "label": label, "datasource": DS,
          "query": {"query": query, "refId": f"{name}-var"}, "definition": query, "refresh": 2,
          "includeAll": True, "multi": True, "allValue": ".*", "sort": 1,
          "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def dashboard() -> dict:
  return {
      "uid": UID, "title": "drivelab", "tags": ["drivelab"], "timezone": "utc", "editable": True,
      "schemaVersion": 39, "version": 1, "refresh": "10s", "graphTooltip": 1,
      "time": {"from": "now-30m", "to": "now"},
      "annotations": {"list": []},
      "templating": {"list": [
          {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
           "current": {"text": "Prometheus", "value": "drivelab-prometheus"}, "hide": 0},
          variable("job", "label_values(drivelab_up, job)", "Service"),
          variable("instance", 'label_values(drivelab_up{job=~"$job"}, instance)', "Instance"),
          variable("split", "label_values(drivelab_eval_metric, split)", "Eval split"),
      ]},
      "panels": layout(ROWS),
  }


def render() -> str:
  return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs from the build")
  args = parser.parse_args(argv)
  text = render()
  if args.check:
    if not OUT.is_file() or OUT.read_text() != text:
      print(f"{OUT} is stale: run python {pathlib.Path(__file__).name}", file=sys.stderr)
      return 1
    return 0
  OUT.parent.mkdir(parents=True, exist_ok=True)
  OUT.write_text(text)
  print(f"wrote {OUT} ({len(dashboard()['panels'])} panels)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
