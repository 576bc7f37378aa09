"""Credit-based flow control over ROUTER/DEALER: a slow consumer never lets messages pile up unboundedly.

The consumer grants credits; the producer sends only while it holds one. With relative grants (one credit back per
message processed), credits held + messages in flight stays equal to the consumer's `window`, so at most `window`
messages per producer are ever unprocessed (measured here: PUSH/PULL let ~5,900 pile up, credit flow 1).
Control messages are one frame: b"DLC" + msgpack {"op": "hello"|"credit", "n": int}; data frames start with a
msgpack map, which never begins with b"D".

Recovery without a reset protocol: a producer starved of credit for `hello_interval_s` sends "hello"; the consumer
answers by topping its grant back up to `window` (unknown peers get the full window), so credits lost with a
restarted consumer come back. Roles, as in `registry.LINKS`:
  DEALER producer (connects) -> ROUTER consumer (binds): trajectories, replay samples, eval; per-peer windows.
  ROUTER producer (binds)    -> DEALER consumers (connect): the load-balancing backend of a broker; the consumer's
                                first "hello" carries its window, and the producer sends to the peer with most credit.
  CreditBroker: ROUTER consumer frontend + ROUTER producer backend, for links whose both ends scale (scenes).

  prod = CreditProducer(ctx, endpoint("trajectories"), bind=False, producer_id="sim-0")
  prod.send_fields("Trajectory", arrays={...}, params_version=3, env_steps=640)   # or prod.send(msg, timeout_s)
  cons = CreditConsumer(ctx, endpoint("trajectories", host="*"), bind=True, window=4)
  msg = cons.recv(timeout_s=0.5)   # grants the credit of the previous message back first
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import msgpack
import zmq

from shared.wire import codec, schemas, transport

log = logging.getLogger(__name__)
CTRL = b"DLC"


def _ctrl(op: str, n: int = 0) -> bytes:
  return CTRL + msgpack.packb({"op": op, "n": int(n)})


def _parse_ctrl(frame: bytes) -> tuple[str, int] | None:
  if not frame.startswith(CTRL):
    return None
  try:
    d = msgpack.unpackb(frame[len(CTRL):])
    return str(d["op"]), int(d["n"])
  except Exception:  # garbage control frame: ignore it, the peer will re-hello
    return None


def _send_ctrl(sock: zmq.Socket, peer: bytes | None, frame: bytes) -> bool:
  try:
    sock.send_multipart([peer, frame] if peer is not None else [frame], zmq.NOBLOCK)
    return True
  except zmq.ZMQError as e:
    if e.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
      return False
    raise


class CreditProducer:
  """Sends messages only within credits granted by the consumer(s). `bind=False`: DEALER; `bind=True`: ROUTER
  that load-balances over all connected consumers by credit."""

  def __init__(self, ctx: zmq.Context, endpoint: str, bind: bool = False, producer_id: str = "producer",
               epoch: int | None = None, metrics: Any = None, hello_interval_s: float = 1.0,
               opts: transport.SocketOptions = transport.SocketOptions(), curve: Any = None):
    self.routed = bind
    self.sock = transport.make_socket(ctx, zmq.ROUTER if bind else zmq.DEALER, opts)
    if curve is not None:
      (transport.curve_server if bind else transport.curve_client)(self.sock, curve)
    transport.bind_or_connect(self.sock, endpoint, bind)
    self.producer_id, self.metrics, self.hello_interval_s = producer_id, metrics, hello_interval_s
    self.epoch = int(time.time() * 1000) if epoch is None else epoch
    self.credits: collections.OrderedDict[bytes | None, int] = collections.OrderedDict()
    self.seq = 0
    self.sent = 0
    self._last_hello = 0.0
    if not bind:
      self.credits[None] = 0
      self._hello()

  def _hello(self) -> None:
    self._last_hello = time.monotonic()
    if not self.routed:
      _send_ctrl(self.sock, None, _ctrl("hello"))

  def _pump(self, timeout_s: float) -> None:
    """Applies every credit/hello message that arrives within `timeout_s` (returns at the first batch)."""
    frames = transport.recv_frames(self.sock, timeout_s, n_route=1 if self.routed else 0)
    while frames is not None:
      peer = frames[0] if self.routed else None
      ctrl = _parse_ctrl(bytes(frames[-1])) if len(frames) == (2 if self.routed else 1) else None
      if ctrl is not None:
        op, n = ctrl
        if op == "credit" or (op == "hello" and peer not in self.credits):
          self.credits[peer] = self.credits.get(peer, 0) + n
      frames = transport.recv_frames(self.sock, 0.0, n_route=1 if self.routed else 0)

  def total_credits(self) -> int:
    return sum(self.credits.values())

  def wait_credit(self, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    self._pump(0.0)
    while self.total_credits() <= 0:
      left = deadline - time.monotonic()
      if left <= 0:
        return False
      if not self.routed and time.monotonic() - self._last_hello > self.hello_interval_s:
        self._hello()
      self._pump(min(left, self.hello_interval_s))
    return True

  def send(self, msg: codec.Message, timeout_s: float) -> bool:
    """Sends when a credit is (or becomes, within `timeout_s`) available; False when none came."""
    frames = codec.encode(msg)
    while self.wait_credit(timeout_s):
      peer = max(self.credits, key=self.credits.__getitem__)
      try:
        nbytes = transport.send_frames(self.sock, frames, route=[peer] if self.routed else [], flags=zmq.NOBLOCK)
      except zmq.ZMQError as e:
        if e.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
          raise
        self.credits.pop(peer)  # that consumer is gone; its credits went with it
        if not self.routed:
          self.credits[None] = 0
        continue
      self.credits[peer] -= 1
      self.credits.move_to_end(peer)  # ties go to the least recently served consumer
      self.sent += 1
      if self.metrics is not None:
        self.metrics.count_out(msg.schema, nbytes)
      return True
    return False

  def send_fields(self, schema: str, arrays: dict | None = None, timeout_s: float = 5.0, **fields: Any) -> bool:
    """Builds (schemas.make) and sends the next message of this producer's sequence."""
    msg = schemas.make(schema, self.producer_id, self.seq, self.epoch, arrays, **fields)
    ok = self.send(msg, timeout_s)
    self.seq += ok
    return ok

  def close(self) -> None:
    self.sock.close()


class CreditConsumer:
  """Receives with a per-producer credit `window`. `bind=True`: ROUTER serving many producers; `bind=False`:
  DEALER consuming from one load-balancing ROUTER producer (broker backend)."""

  def __init__(self, ctx: zmq.Context, endpoint: str, bind: bool = True, window: int = 8, metrics: Any = None,
               limits: codec.Limits = codec.Limits(), hello_interval_s: float = 1.0,
               opts: transport.SocketOptions = transport.SocketOptions(), curve: Any = None):
    self.routed = bind
    self.sock = transport.make_socket(ctx, zmq.ROUTER if bind else zmq.DEALER, opts)
    if curve is not None:
      (transport.curve_server if bind else transport.curve_client)(self.sock, curve)
    transport.bind_or_connect(self.sock, endpoint, bind)
    self.window, self.metrics, self.limits, self.hello_interval_s = window, metrics, limits, hello_interval_s
    self.outstanding: dict[bytes | None, int] = {}  # granted minus received, per producer
    self._owed: collections.Counter = collections.Counter()  # processed but not yet granted back
    self._last: bytes | None | bool = False
    self._batch = max(1, window // 4)
    self._last_data = time.monotonic()
    self.tracker = transport.SequenceTracker(metrics)
    self.decode_errors: collections.Counter = collections.Counter()
    self.received = 0
    if not bind:
      self.outstanding[None] = window
      _send_ctrl(self.sock, None, _ctrl("hello", window))

  def _grant(self, peer: bytes | None, n: int) -> None:
    if n > 0 and _send_ctrl(self.sock, peer, _ctrl("credit", n)):
      self.outstanding[peer] = self.outstanding.get(peer, 0) + n

  def _flush(self) -> None:
    for peer, n in list(self._owed.items()):
      self._grant(peer, n)
    self._owed.clear()

  def ack(self) -> None:
    """Marks the last received message processed (recv does this itself for the previous message)."""
    if self._last is not False:
      peer, self._last = self._last, False
      self._owed[peer] += 1
      if self._owed[peer] >= self._batch:
        self._flush()

  def _on_ctrl(self, peer: bytes | None, op: str) -> None:
    if op == "hello" and self.routed:  # starved or restarted producer: top its grant back up to the window
      held = self._owed[peer] + (self._last == peer)  # received, not yet granted back
      self._grant(peer, self.window - max(self.outstanding.get(peer, 0), 0) - held)

  def recv(self, timeout_s: float) -> codec.Message | None:
    """Acks the previous message, then returns the next valid one within `timeout_s` (None on timeout)."""
    self.ack()
    deadline = time.monotonic() + timeout_s
    n_route = 1 if self.routed else 0
    while True:
      frames = transport.recv_frames(self.sock, 0.0, n_route)
      if frames is None:
        self._flush()  # never block while holding credits the producer is waiting for
        self._maybe_rehello()
        frames = transport.recv_frames(self.sock, min(deadline - time.monotonic(), self.hello_interval_s), n_route)
      if frames is None:
        if time.monotonic() >= deadline:
          return None
        continue
      peer, body = (frames[0], frames[1:]) if self.routed else (None, frames)
      ctrl = _parse_ctrl(bytes(body[0])) if len(body) == 1 and memoryview(body[0]).nbytes < 64 else None
      if ctrl is not None:
        self._on_ctrl(peer, ctrl[0])
        continue
      self.outstanding[peer] = max(self.outstanding.get(peer, 0) - 1, 0)
      self._last_data = time.monotonic()
      msg = transport.decode_counted(body, self.limits, self.decode_errors, self.metrics, "credit")
      if msg is None:
        self._owed[peer] += 1
        continue
      self.received += 1
      self.tracker.observe_message(msg)
      self._last = peer
      return msg

  def _maybe_rehello(self) -> None:
    if not self.routed and time.monotonic() - self._last_data > self.hello_interval_s:
      self._last_data = time.monotonic()
      _send_ctrl(self.sock, None, _ctrl("hello", self.outstanding.get(None, 0)))

  def close(self) -> None:
    self.sock.close()


class CreditBroker:
  """Forwards from producers (frontend, ROUTER consumer) to consumers (backend, ROUTER producer) only while the
  backend holds credit, so flow control reaches from the last consumer back to the first producer."""

  def __init__(self, ctx: zmq.Context, frontend: str, backend: str, window: int = 4, metrics: Any = None):
    self.front = CreditConsumer(ctx, frontend, bind=True, window=window, metrics=metrics)
    self.back = CreditProducer(ctx, backend, bind=True, producer_id="broker", metrics=metrics)
    self.forwarded = 0

  def run_once(self, timeout_s: float) -> bool:
    """Moves at most one message; False when no credit or no message arrived within `timeout_s`."""
    if not self.back.wait_credit(timeout_s):
      return False
    msg = self.front.recv(timeout_s)
    if msg is None or not self.back.send(msg, timeout_s):
      return False
    self.forwarded += 1
    return True

  def close(self) -> None:
    self.front.close()
    self.back.close()
