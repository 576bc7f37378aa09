"""Inference worker: ActRequests in (from the broker's load balancer), one batched jitted forward pass, ActReplies out.

Protocol with the broker (services/broker/service.py): this worker's DEALER connects to the broker's act_backend
ROUTER and says "ready" (a Heartbeat with status "ready") when it starts and whenever it has been idle for
`READY_INTERVAL_S`; the broker then hands it up to its slot count of requests as [client id, *request frames], and
every reply [client id, *reply frames] returns one slot (a request it cannot answer is released with a Heartbeat
status "rejected" in the reply's place). All requests that are waiting are merged into one forward
pass (up to `max_batch_requests`), padded to a power of two rows so jit compiles only a few shapes.
Policy: shared.acting.policy_net (the project's Agent over the flat features the simulators send). Params: the
newest version from the learner's PUB; version 0 (`init_flat`, identical in every process) until one arrives.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import zmq

from services.common import runtime
from shared.acting import policy_net
from services.inference import config as config_lib
from shared.wire import codec, schemas, transport

log = logging.getLogger(__name__)
READY_INTERVAL_S = 2.0


@dataclasses.dataclass
class Links:
  """Attributes: backend (zmq DEALER to the broker's act_backend), params (transport.ParamsSubscriber)."""

  backend: Any
  params: Any


def _pad_rows(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


class Inference:
  """Thin shell around `PolicyNet.select_action`."""

  def __init__(self, cfg: config_lib.InferenceConfig, rt: runtime.Runtime, links: Links,
               policy: policy_net.PolicyNet | None = None):
    self.cfg, self.rt, self.links = cfg, rt, links
    self.policy = policy if policy is not None else policy_net.from_common(rt.common)
    self.params, self.params_version = self.policy.acting_params(None)  # version 0 until the learner's arrive
    self.rng = jax.random.PRNGKey(cfg.seed + os.getpid())
    self.decode_errors: collections.Counter = collections.Counter()
    self.replies = 0
    self.seq = 0
    self._select = jax.jit(self.policy.select_action, static_argnums=3)
    self._last_activity = 0.0

  def _ready(self) -> None:
    self._last_activity = time.monotonic()
    msg = schemas.make("Heartbeat", self.rt.producer_id, self.seq, self.rt.epoch, component="inference",
                       status="ready", time_s=time.time(), uptime_s=time.monotonic() - self.rt.started_s)
    try:
      transport.send_message(self.links.backend, msg, flags=zmq.NOBLOCK)
    except zmq.Again:  # no broker connected yet: say it again after READY_INTERVAL_S
      pass

  def _release(self, client: bytes) -> None:
    """Tells the broker that the request it routed from `client` gets no reply, so it frees that slot (the broker
    counts a slot as busy until the worker answers, whatever "ready" says)."""
    msg = schemas.make("Heartbeat", self.rt.producer_id, self.seq, self.rt.epoch, component="inference",
                       status="rejected", time_s=time.time(), uptime_s=time.monotonic() - self.rt.started_s)
    try:
      transport.send_message(self.links.backend, msg, route=[client], flags=zmq.NOBLOCK)
    except zmq.Again:
      pass

  def _poll_params(self) -> None:
    got = runtime.take_params(self.links.params, self.rt.metrics)
    if got is not None:
      self.params, self.params_version = self.policy.acting_params(*got)

  def _receive(self) -> list[tuple[bytes, codec.Message]]:
    out = []
    timeout = 0.2
    while len(out) < self.cfg.max_batch_requests:
      frames = transport.recv_frames(self.links.backend, timeout, n_route=1)
      if frames is None:
        break
      timeout = self.cfg.batch_wait_s
      msg = transport.decode_counted(frames[1:], codec.Limits(), self.decode_errors, self.rt.metrics, "inference")
      if msg is None or msg.schema != "ActRequest":
        continue
      out.append((frames[0], msg))
    return out

  def _answer(self, requests: list[tuple[bytes, codec.Message]]) -> None:
    num_features = self.policy.num_features
    bad = [(c, m) for c, m in requests if np.shape(m.arrays.get("obs/flat"))[-1:] != (num_features,)]
    for client, m in bad:  # another network's features: say so, never feed them to this one
      self.rt.metrics.decode_error("item_shape")
      log.warning("event=reject reason=features producer=%s shape=%s want=%d", m.producer,
                  np.shape(m.arrays.get("obs/flat")), num_features)
      self._release(client)
    requests = [r for r in requests if not any(r is b for b in bad)]
    if not requests:
      return
    obs = [np.asarray(m.arrays["obs/flat"], np.float32) for _, m in requests]
    sizes = [len(o) for o in obs]
    rows = np.concatenate(obs)
    padded = np.zeros((_pad_rows(len(rows)), rows.shape[1]), np.float32)
    padded[:len(rows)] = rows
    self.rng, key = jax.random.split(self.rng)
    params = self.params
    action, log_prob, value = (np.asarray(x) for x in self._select(params, jnp.asarray(padded), key,
                                                                    self.cfg.greedy))
    self.rt.metrics.batch_fill_ratio.set(len(rows) / len(padded))
    start = 0
    for (client, req), n in zip(requests, sizes):
      sl = slice(start, start + n)
      start += n
      self.seq += 1
      reply = schemas.make("ActReply", self.rt.producer_id, self.seq, self.rt.epoch,
                           arrays={"action": action[sl], "log_prob": log_prob[sl], "value": value[sl]},
                           request_id=req.fields["request_id"], params_version=self.params_version)
      try:
        transport.send_message(self.links.backend, reply, route=[client], flags=zmq.NOBLOCK,
                               metrics=self.rt.metrics)
        self.replies += 1
      except zmq.Again:  # broker gone or stalled: the client times out and asks again
        self.rt.dropped.labels(what="act_reply_unsent").inc()

  def run_once(self) -> None:
    self._poll_params()
    requests = self._receive()
    if requests:
      self._last_activity = time.monotonic()
      with self.rt.metrics.time("act"):
        self._answer(requests)
    elif time.monotonic() - self._last_activity > READY_INTERVAL_S:
      self._ready()
    self.rt.heartbeat(replies=self.replies, params_version=self.params_version)

  def close(self) -> None:
    self.links.backend.close()
    self.links.params.close()


def bootstrap(cfg: config_lib.InferenceConfig, rt: runtime.Runtime) -> Inference:
  client = rt.curve(bind=False)  # CURVE keys, or None when curve_dir is unset
  backend = transport.make_socket(rt.ctx, zmq.DEALER)
  if client is not None:
    transport.curve_client(backend, client)
  backend.connect(runtime.endpoint(rt.common, "act_backend"))
  params = runtime.watch_params(rt, curve=client)
  links = Links(backend=backend, params=params)
  svc = Inference(cfg, rt, links)
  svc._ready()
  return svc


def main(argv: Sequence[str] | None = None) -> int:
  cfg, common = config_lib.load(argv)
  return runtime.run_main("inference", cfg, common, bootstrap)
