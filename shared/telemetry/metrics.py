"""Per-process Prometheus metrics: one registry, one /metrics port, the standard metric set. No jax.

Every service calls `standard_metrics(registry)` once; the names below are what the Grafana dashboard queries, so
they never change (add new ones instead). No `service`/`job`/`instance` label: the scrape adds job and instance.
No `_created` series (`prometheus_client.disable_created_metrics()`).

  drivelab_messages_in_total{schema}, drivelab_messages_out_total{schema}   counters
  drivelab_bytes_in_total, drivelab_bytes_out_total                          counters (header + array frames)
  drivelab_decode_errors_total{reason}                                       counter (codec.DecodeError.reason)
  drivelab_sequence_gaps_total                                               counter (messages lost)
  drivelab_credit_refused_total{reason}                                      counter (flow-control claims refused)
  drivelab_queue_depth{queue}                                                gauge
  drivelab_handler_seconds{handler}                                          histogram
  drivelab_restarts_total{component}                                         counter (supervisor)
  drivelab_agent_steps_total                                                 counter (rate() = agent-steps/s)
  drivelab_batch_fill_ratio, drivelab_params_version, drivelab_params_version_lag   gauges
  drivelab_learner_loss{name}, drivelab_eval_metric{metric,split}           gauges
  drivelab_up, drivelab_build_info{version}                                  gauges fixed at 1

  reg = new_registry(); m = standard_metrics(reg); port = serve(0, reg)   # http://127.0.0.1:{port}/metrics
  with m.time("act"): ...                                                  # handler latency
StandardMetrics also offers count_in/count_out/decode_error/gap/refuse_credit, the hooks shared.wire's transport classes call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

prometheus_client.disable_created_metrics()

HANDLER_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STANDARD_NAMES = (
    "drivelab_messages_in_total", "drivelab_messages_out_total", "drivelab_bytes_in_total",
    "drivelab_bytes_out_total", "drivelab_decode_errors_total", "drivelab_sequence_gaps_total",
    "drivelab_credit_refused_total",
    "drivelab_queue_depth", "drivelab_handler_seconds", "drivelab_restarts_total", "drivelab_agent_steps_total",
    "drivelab_batch_fill_ratio", "drivelab_params_version", "drivelab_params_version_lag", "drivelab_learner_loss",
    "drivelab_eval_metric", "drivelab_up", "drivelab_build_info",
)


def new_registry() -> CollectorRegistry:
  """A fresh registry per process (never the global default, so tests and services do not collide)."""
  return CollectorRegistry(auto_describe=True)


@dataclasses.dataclass(frozen=True)
class StandardMetrics:
  """Attributes: one prometheus_client metric per standard name (see the module docstring)."""

  messages_in: Counter
  messages_out: Counter
  bytes_in: Counter
  bytes_out: Counter
  decode_errors: Counter
  sequence_gaps: Counter
  credit_refused: Counter
  queue_depth: Gauge
  handler_seconds: Histogram
  restarts: Counter
  agent_steps: Counter
  batch_fill_ratio: Gauge
  params_version: Gauge
  params_version_lag: Gauge
  learner_loss: Gauge
  eval_metric: Gauge
  up: Gauge
  build_info: Gauge

  def count_in(self, schema: str, nbytes: int) -> None:
    self.messages_in.labels(schema=schema).inc()
    self.bytes_in.inc(nbytes)

  def count_out(self, schema: str, nbytes: int) -> None:
    self.messages_out.labels(schema=schema).inc()
    self.bytes_out.inc(nbytes)

  def decode_error(self, reason: str) -> None:
    self.decode_errors.labels(reason=reason).inc()

  def gap(self, n: int) -> None:
    self.sequence_gaps.inc(n)

  def refuse_credit(self, reason: str, n: int = 1) -> None:
    self.credit_refused.labels(reason=reason).inc(n)

  @contextlib.contextmanager
  def time(self, handler: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.handler_seconds.labels(handler=handler).observe(time.perf_counter() - t0)


def _build_version() -> str:
  try:
    from importlib.metadata import version

    return version("drivelab")
  except Exception:  # not installed as a distribution (running from a checkout)
    return "0.0.0+local"


def standard_metrics(registry: CollectorRegistry, version: str | None = None) -> StandardMetrics:
  """Creates the standard set on `registry` (once per registry). `up` and `build_info` are set to 1."""
  r = registry
  m = StandardMetrics(
      messages_in=Counter("drivelab_messages_in", "Messages received and decoded", ["schema"], registry=r),
      messages_out=Counter("drivelab_messages_out", "Messages sent", ["schema"], registry=r),
      bytes_in=Counter("drivelab_bytes_in", "Payload bytes received", registry=r),
      bytes_out=Counter("drivelab_bytes_out", "Payload bytes sent", registry=r),
      decode_errors=Counter("drivelab_decode_errors", "Messages rejected by decode, by reason", ["reason"],
                            registry=r),
      sequence_gaps=Counter("drivelab_sequence_gaps", "Messages lost, by sequence number gaps", registry=r),
      credit_refused=Counter("drivelab_credit_refused", "Credit grants, ready messages and uncredited data refused "
                             "by flow control, by reason", ["reason"], registry=r),
      queue_depth=Gauge("drivelab_queue_depth", "Items waiting in a queue", ["queue"], registry=r),
      handler_seconds=Histogram("drivelab_handler_seconds", "Handler latency", ["handler"],
                                buckets=HANDLER_BUCKETS_S, registry=r),
      restarts=Counter("drivelab_restarts", "Component restarts by the supervisor", ["component"], registry=r),
      agent_steps=Counter("drivelab_agent_steps", "Agent steps simulated", registry=r),
      batch_fill_ratio=Gauge("drivelab_batch_fill_ratio", "Filled fraction of the last batch", registry=r),
      params_version=Gauge("drivelab_params_version", "Params version in use", registry=r),
      params_version_lag=Gauge("drivelab_params_version_lag", "Newest known minus used params version",
                               registry=r),
      learner_loss=Gauge("drivelab_learner_loss", "Learner losses", ["name"], registry=r),
      eval_metric=Gauge("drivelab_eval_metric", "Evaluation metrics", ["metric", "split"], registry=r),
      up=Gauge("drivelab_up", "1 while the process runs", registry=r),
      build_info=Gauge("drivelab_build_info", "Build version", ["version"], registry=r),
  )
  m.up.set(1)
  m.build_info.labels(version=version or _build_version()).set(1)
  return m


def serve(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> int:
  """Serves `registry` at http://addr:port/metrics in a daemon thread; port 0 picks a free port. Returns the port."""
  server, _thread = prometheus_client.start_http_server(port, addr=addr, registry=registry)
  return int(server.server_address[1])


def render(registry: CollectorRegistry) -> str:
  return prometheus_client.generate_latest(registry).decode()
