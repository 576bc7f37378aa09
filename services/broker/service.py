"""Broker: the two links whose both ends scale, each through one small process in front of the scaled consumers.

Scenes (credit broker): scene_loaders' DEALER producers -> `scenes_in` ROUTER (credit window per loader);
`scenes` ROUTER -> simulators' and the evaluator's DEALER consumers, each sent batches only against its credits.
A batch is validated (zero-copy decode) and forwarded as the frames it came in, never encoded again.
At most one batch waits inside the broker, so flow control reaches from the last simulator back to the loaders.

Inference (the ZeroMQ load-balancing broker pattern): simulators' `transport.Client` DEALERs -> `act` ROUTER
(frontend); inference workers' DEALERs -> `act_backend` ROUTER. A worker says "ready" (Heartbeat status "ready")
and gets `inference_slots` slots less the requests it still holds; the broker hands it [client id, *request]
while it has a free slot, and routes its [client id, *reply] back (a reply from a worker holding no request is
dropped; a worker releases a request it cannot answer with a Heartbeat status "rejected"). So a peer that says
"ready" and never answers holds at most `inference_slots` requests (counted in drivelab_credit_refused_total).
Requests wait in a bounded queue while every worker is busy. Every message is decoded (and counted when
malformed) but forwarded as the original frames.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Sequence

import zmq

from services.broker import config as config_lib
from services.common import runtime
from shared.wire import codec, flow, transport

log = logging.getLogger(__name__)
_NO_ROUTE = (zmq.EHOSTUNREACH, zmq.EAGAIN)


@dataclasses.dataclass
class Links:
  """scenes_in (flow.CreditConsumer, ROUTER), scenes (flow.CreditProducer, ROUTER), act_front, act_back (ROUTERs)."""

  scenes_in: Any
  scenes: Any
  act_front: Any
  act_back: Any


class Broker:
  """Moves scene batches by credit and balances act requests over inference workers."""

  def __init__(self, cfg: config_lib.BrokerConfig, rt: runtime.Runtime, links: Links):
    self.cfg, self.rt, self.links = cfg, rt, links
    self.pending_scene: codec.Message | None = None
    self.pending_frames: list | None = None  # pending_scene's frames as received
    self.scenes_forwarded = 0
    self.free: collections.OrderedDict[bytes, int] = collections.OrderedDict()  # worker -> free slots
    # worker -> requests handed to it and not yet answered, least recently heard first (at most flow.MAX_PEERS)
    self.in_flight: collections.OrderedDict[bytes, int] = collections.OrderedDict()
    self.refusals = flow.Refusals(rt.metrics, "act_backend")
    self.pending: collections.deque = collections.deque()  # (client id, request frames)
    self.refused = 0
    self.lost_replies = 0
    self.decode_errors: collections.Counter = collections.Counter()
    self.poller = zmq.Poller()
    self.poller.register(links.act_front, zmq.POLLIN)
    self.poller.register(links.act_back, zmq.POLLIN)

  # SCENES
  def _move_scene(self) -> None:
    """Forwards the batch's frames as they came (validated by the zero-copy decode, never encoded again)."""
    if self.pending_scene is None:
      msg = self.links.scenes_in.recv(0.0)
      if msg is not None:
        self.pending_scene, self.pending_frames = msg, self.links.scenes_in.last_frames
    if self.pending_scene is not None and self.links.scenes.wait_credit(0.0):
      if self.links.scenes.send(self.pending_scene, 0.0, frames=self.pending_frames):
        self.pending_scene = self.pending_frames = None
        self.scenes_forwarded += 1

  # ACT
  def _decode(self, frames: list, where: str) -> codec.Message | None:
    return transport.decode_counted(frames, codec.Limits(), self.decode_errors, self.rt.metrics, where)

  def _from_client(self, frames: list) -> None:
    client, body = frames[0], frames[1:]
    msg = self._decode(body, "act_front")
    if msg is None:
      return
    if msg.schema != "ActRequest":
      self.rt.metrics.decode_error("wrong_schema")
      return
    if len(self.pending) >= self.cfg.max_pending_requests:
      self.refused += 1
      self.rt.dropped.labels(what="act_request_refused").inc()
      return
    self.pending.append((client, body))

  def _from_worker(self, frames: list) -> None:
    worker = frames[0]
    if len(frames) == 2:  # a lone header frame: the worker's "ready"
      msg = self._decode(frames[1:], "act_back")
      if msg is not None and msg.schema == "Heartbeat" and msg.fields.get("status") == "ready":
        # idempotent: an idle worker re-announces its window, less what it still holds (never more)
        busy = self.in_flight.get(worker, 0)
        if busy:
          self.refusals("ready_while_busy", worker)
        if worker not in self.in_flight:
          self._heard(worker)
        self.free[worker] = self.cfg.inference_slots - busy
      return
    if self.in_flight.get(worker, 0) <= 0:  # it was handed no request: whatever it says is not an answer
      self.refusals("unsolicited_reply", worker)
      return
    self.in_flight[worker] -= 1
    self.in_flight.move_to_end(worker)
    if worker in self.free:
      self.free[worker] += 1
    msg = self._decode(frames[2:], "act_back")
    if msg is None:
      return
    if msg.schema == "Heartbeat" and msg.fields.get("status") == "rejected":  # the worker refused that request
      self.rt.dropped.labels(what="act_request_rejected").inc()
      return
    try:
      nbytes = transport.send_frames(self.links.act_front, frames[2:], route=[frames[1]], flags=zmq.NOBLOCK)
      self.rt.metrics.count_out(msg.schema, nbytes)
    except zmq.ZMQError as e:
      if e.errno not in _NO_ROUTE:
        raise
      self.lost_replies += 1  # the simulator went away; it will not miss the answer
      self.rt.dropped.labels(what="act_reply_unroutable").inc()

  def _heard(self, worker: bytes) -> None:
    if len(self.in_flight) >= flow.MAX_PEERS:
      old = next(iter(self.in_flight))
      del self.in_flight[old]
      self.free.pop(old, None)
    self.in_flight[worker] = 0

  def _dispatch(self) -> None:
    while self.pending and self.free:
      worker = max(self.free, key=self.free.__getitem__)
      if self.free[worker] <= 0:
        return
      client, body = self.pending[0]
      try:
        transport.send_frames(self.links.act_back, [client] + list(body), route=[worker], flags=zmq.NOBLOCK)
      except zmq.ZMQError as e:
        if e.errno not in _NO_ROUTE:
          raise
        del self.free[worker]  # that worker is gone; the request goes to another one
        continue
      self.pending.popleft()
      self.free[worker] -= 1
      self.in_flight[worker] += 1

  def _drain(self, sock: zmq.Socket, n_route: int, handle) -> None:
    for _ in range(256):  # bounded, so scenes keep moving under an act flood
      frames = transport.recv_frames(sock, 0.0, n_route=n_route)
      if frames is None:
        return
      handle(frames)

  def run_once(self) -> None:
    self._move_scene()
    events = dict(self.poller.poll(self.cfg.poll_ms))
    if self.links.act_back in events:
      self._drain(self.links.act_back, 2, self._from_worker)
    if self.links.act_front in events:
      self._drain(self.links.act_front, 1, self._from_client)
    self._dispatch()
    m = self.rt.metrics
    m.queue_depth.labels(queue="act_pending").set(len(self.pending))
    m.queue_depth.labels(queue="inference_workers").set(len(self.free))
    m.queue_depth.labels(queue="scenes_pending").set(int(self.pending_scene is not None))
    self.rt.heartbeat(scenes=self.scenes_forwarded, workers=len(self.free), pending=len(self.pending))

  def close(self) -> None:
    for s in (self.links.scenes_in, self.links.scenes, self.links.act_front, self.links.act_back):
      s.close()


def bootstrap(cfg: config_lib.BrokerConfig, rt: runtime.Runtime) -> Broker:
  server = rt.curve(bind=True)  # CURVE keys, or None when curve_dir is unset
  c, m = rt.common, rt.metrics
  front, back = transport.make_socket(rt.ctx, zmq.ROUTER), transport.make_socket(rt.ctx, zmq.ROUTER)
  for sock, link in ((front, "act"), (back, "act_backend")):
    if server is not None:
      transport.curve_server(sock, server)
    sock.bind(runtime.endpoint(c, link, bind=True))
  links = Links(
      scenes_in=runtime.credit_consumer(rt, "scenes_in", window=cfg.scene_window, bind=True, curve=server),
      scenes=flow.CreditProducer(rt.ctx, runtime.endpoint(c, "scenes", bind=True), bind=True,
                                 producer_id=rt.producer_id, epoch=rt.epoch, metrics=m, curve=server,
                                 max_window=cfg.max_consumer_window),
      act_front=front, act_back=back)
  return Broker(cfg, rt, links)


def main(argv: Sequence[str] | None = None) -> int:
  cfg, common = config_lib.load(argv)
  return runtime.run_main("broker", cfg, common, bootstrap)
