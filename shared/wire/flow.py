"""Credit-based flow control over ROUTER/DEALER: a slow consumer never lets messages pile up unboundedly.

The consumer grants credits; the producer sends only while it holds one. With relative grants (one credit back per
message processed), credits held + messages in flight stays equal to the consumer's `window`, so at most `window`
messages per producer are ever unprocessed (measured here: PUSH/PULL let ~5,900 pile up, credit flow 1).
Control messages are one frame: b"DLC" + msgpack {"op": "hello"|"credit", "n": int} (a hello also carries the
sender's "window"); data frames start with a msgpack map, which never begins with b"D".

Recovery without a reset protocol: a producer starved of credit for `hello_interval_s` sends "hello"; the consumer
answers by topping its grant back up to `window`, so credits lost with a restarted consumer come back. Roles, as
in `registry.LINKS`:
  DEALER producer (connects) -> ROUTER consumer (binds): trajectories, replay samples, eval; per-peer windows.
  ROUTER producer (binds)    -> DEALER consumers (connect): the load-balancing backend of a broker; the consumer's
                                "hello" declares its window, and the producer sends round-robin over the peers
                                that hold credit.
  A broker for links whose both ends scale (scenes) is a ROUTER consumer frontend + a ROUTER producer backend
  (services/broker).

What a peer may claim is bounded, since anyone who reaches a bound port can send these frames (with CURVE on, only
holders of a trusted key can connect at all):
  * A ROUTER producer takes credit only from peers that said hello, and never more than the window the peer
    declared, itself capped by `max_window`: a forged grant of 10^9 buys nothing, a forged hello one window. A
    peer that goes on granting as messages reach it is a consumer like any other (grants it sent ahead, taken
    after a send, count so too) and gets its round-robin share, never more than the others.
  * A ROUTER consumer keeps per-peer state for at most `max_peers` peers (least recently heard evicted) and drops
    well-formed data a peer sends beyond the credit it was granted (malformed data counts as a decode error, as
    from anyone), so data from a peer that never said hello is dropped (a producer whose consumer restarted loses
    at most the window it still held, then re-hellos when starved).
  * Every refusal counts in `drivelab_credit_refused_total{reason}` (unknown_peer, over_window, uncredited_data,
    evicted_peer) and is logged, at most one line per reason per `LOG_EVERY_S`.

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
MAX_WINDOW = 64  # the most credits one peer of a ROUTER producer may hold, whatever window it declares
MAX_PEERS = 1024  # per-peer state a ROUTER end keeps; the least recently heard peer is forgotten beyond it
LOG_EVERY_S = 10.0
PUMP_MAX = 1024  # control messages a producer applies per look at its socket


def _ctrl(op: str, n: int = 0, window: int | None = None) -> bytes:
  d = {"op": op, "n": int(n)}
  if window is not None:
    d["window"] = int(window)
  return CTRL + msgpack.packb(d)


def _parse_ctrl(frame: bytes) -> tuple[str, int, int | None] | None:
  """(op, n, declared window or None); None for anything that is not a well-formed control frame."""
  if not frame.startswith(CTRL):
    return None
  try:
    d = msgpack.unpackb(frame[len(CTRL):])
    w = d.get("window")
    return str(d["op"]), int(d["n"]), None if w is None else int(w)
  except Exception:  # garbage control frame: ignore it, the peer will re-hello
    return None


class Refusals:
  """Counts refused flow-control claims (metrics `refuse_credit`, and `counts` here) and logs them, at most one
  line per reason every `LOG_EVERY_S` seconds, so a flood of forged frames cannot flood the log."""

  def __init__(self, metrics: Any, where: str):
    self.metrics, self.where = metrics, where
    self.counts: collections.Counter = collections.Counter()
    self._logged: dict[str, tuple[float, int]] = {}

  def __call__(self, reason: str, peer: bytes | None, n: int = 1) -> None:
    self.counts[reason] += n
    if self.metrics is not None:
      self.metrics.refuse_credit(reason, n)
    now = time.monotonic()
    last_t, last_count = self._logged.get(reason, (-LOG_EVERY_S, 0))
    if now - last_t >= LOG_EVERY_S:
      self._logged[reason] = (now, self.counts[reason])
      log.warning("event=credit_refused where=%s reason=%s peer=%s n=%d refused_since_last_log=%d", self.where,
                  reason, peer.hex() if isinstance(peer, bytes) else peer, n, self.counts[reason] - last_count)


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
  that load-balances over all connected consumers that hold credit (least recently served first).

  `max_window` caps the credits any one consumer may hold (its declared window is capped by it); on a ROUTER, only
  peers that said hello may grant, and at most `max_peers` are remembered."""

  def __init__(self, ctx: zmq.Context, endpoint: str, bind: bool = False, producer_id: str = "producer",
               epoch: int | None = None, metrics: Any = None, hello_interval_s: float = 1.0,
               opts: transport.SocketOptions = transport.SocketOptions(), curve: Any = None,
               max_window: int = MAX_WINDOW, max_peers: int = MAX_PEERS):
    self.routed = bind
    self.sock = transport.make_socket(ctx, zmq.ROUTER if bind else zmq.DEALER, opts)
    if curve is not None:
      (transport.curve_server if bind else transport.curve_client)(self.sock, curve)
    transport.bind_or_connect(self.sock, endpoint, bind)
    self.producer_id, self.metrics, self.hello_interval_s = producer_id, metrics, hello_interval_s
    self.max_window, self.max_peers = max_window, max_peers
    self.epoch = int(time.time() * 1000) if epoch is None else epoch
    # peer -> credits held, in the order peers were last served (ties go to the least recently served)
    self.credits: collections.OrderedDict[bytes | None, int] = collections.OrderedDict()
    self.windows: dict[bytes | None, int] = {}  # peer -> declared window (capped by max_window)
    self.refused = Refusals(metrics, f"producer:{producer_id}")
    self.decode_errors: collections.Counter = collections.Counter()
    self.seq = 0
    self.sent = 0
    self._last_hello = 0.0
    if not bind:
      self.credits[None] = 0
      self.windows[None] = max_window
      self._hello()

  def _hello(self) -> None:
    self._last_hello = time.monotonic()
    if not self.routed:
      _send_ctrl(self.sock, None, _ctrl("hello"))

  def _on_ctrl(self, peer: bytes | None, op: str, n: int, window: int | None) -> None:
    if op == "hello" and self.routed:
      declared = n if window is None else window
      cap = min(max(declared, 0), self.max_window)
      if declared > self.max_window:
        self.refused("over_window", peer, declared - self.max_window)
      if peer not in self.windows:  # a new (or restarted) consumer: it holds what it says it granted, <= its window
        if len(self.windows) >= self.max_peers:
          self._forget(next(iter(self.credits)))
        self.credits[peer] = min(max(n, 0), cap)
      self.windows[peer] = cap
      self.credits[peer] = min(self.credits[peer], cap)
    elif op == "credit":
      if peer not in self.windows:
        self.refused("unknown_peer", peer, max(n, 1))
        return
      have, cap = self.credits[peer], self.windows[peer]
      if have + n > cap:
        self.refused("over_window", peer, have + n - cap)
      self.credits[peer] = min(have + max(n, 0), cap)

  def _forget(self, peer: bytes | None) -> None:
    self.credits.pop(peer, None)
    self.windows.pop(peer, None)
    if not self.routed:  # the one consumer of a DEALER: it keeps its slot, with no credit until it grants again
      self.credits[None], self.windows[None] = 0, self.max_window

  def _pump(self, timeout_s: float) -> None:
    """Applies the credit/hello messages that arrive within `timeout_s` (returns at the first batch, after at most
    PUMP_MAX of them, so a flood cannot hold the sender here). A producer expects nothing else: any other message
    is counted as a decode error (its codec reason when malformed, `unexpected_data` when not)."""
    n_route = 1 if self.routed else 0
    frames = transport.recv_frames(self.sock, timeout_s, n_route=n_route)
    for _ in range(PUMP_MAX):
      if frames is None:
        return
      peer = frames[0] if self.routed else None
      body = frames[n_route:]
      ctrl = _parse_ctrl(bytes(body[0])) if len(body) == 1 and memoryview(body[0]).nbytes < 64 else None
      if ctrl is not None:
        self._on_ctrl(peer, *ctrl)
      elif transport.decode_counted(body, codec.Limits(), self.decode_errors, self.metrics, "producer") is not None:
        self.decode_errors["unexpected_data"] += 1
        if self.metrics is not None:
          self.metrics.decode_error("unexpected_data")
      frames = transport.recv_frames(self.sock, 0.0, n_route=n_route)

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

  def send(self, msg: codec.Message, timeout_s: float, frames: list | None = None) -> bool:
    """Sends when a credit is (or becomes, within `timeout_s`) available; False when none came. `frames`: the
    message as received (a consumer's `last_frames`), forwarded as they are instead of encoding `msg` again."""
    frames = codec.encode(msg) if frames is None else frames
    while self.wait_credit(timeout_s):
      peer = next(p for p, c in self.credits.items() if c > 0)
      try:
        nbytes = transport.send_frames(self.sock, frames, route=[peer] if self.routed else [], flags=zmq.NOBLOCK)
      except zmq.ZMQError as e:
        if e.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
          raise
        self._forget(peer)  # that consumer is gone; its credits went with it
        continue
      self.credits[peer] -= 1
      self.credits.move_to_end(peer)  # round robin: the next message goes to the least recently served
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
  """Receives with a per-producer credit `window`. `bind=True`: ROUTER serving many producers (at most
  `max_peers` remembered; data beyond a peer's credit is dropped and counted); `bind=False`: DEALER consuming from
  one load-balancing ROUTER producer (broker backend)."""

  def __init__(self, ctx: zmq.Context, endpoint: str, bind: bool = True, window: int = 8, metrics: Any = None,
               limits: codec.Limits = codec.Limits(), hello_interval_s: float = 1.0,
               opts: transport.SocketOptions = transport.SocketOptions(), curve: Any = None,
               max_peers: int = MAX_PEERS):
    self.routed = bind
    self.sock = transport.make_socket(ctx, zmq.ROUTER if bind else zmq.DEALER, opts)
    if curve is not None:
      (transport.curve_server if bind else transport.curve_client)(self.sock, curve)
    transport.bind_or_connect(self.sock, endpoint, bind)
    self.window, self.metrics, self.limits, self.hello_interval_s = window, metrics, limits, hello_interval_s
    self.max_peers = max_peers
    # granted minus received, per producer, least recently heard first
    self.outstanding: collections.OrderedDict[bytes | None, int] = collections.OrderedDict()
    self.refused = Refusals(metrics, "consumer")
    self._owed: collections.Counter = collections.Counter()  # processed but not yet granted back
    self._last: bytes | None | bool = False
    self._batch = max(1, window // 4)
    self._last_data = time.monotonic()
    self.tracker = transport.SequenceTracker(metrics)
    self.last_frames: list | None = None  # the frames of the message `recv` returned last, as received
    self.decode_errors: collections.Counter = collections.Counter()
    self.received = 0
    if not bind:
      self.outstanding[None] = window
      _send_ctrl(self.sock, None, _ctrl("hello", window, window))

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

  def _heard(self, peer: bytes | None) -> None:
    """Marks `peer` most recently heard; a new one starts with nothing outstanding (credit is earned by hello), and
    the least recently heard peer is forgotten when more than `max_peers` would be kept."""
    if peer in self.outstanding:
      self.outstanding.move_to_end(peer)
      return
    if len(self.outstanding) >= self.max_peers:
      old = next(iter(self.outstanding))
      del self.outstanding[old]
      self._owed.pop(old, None)
      self.refused("evicted_peer", old)
    self.outstanding[peer] = 0

  def _on_ctrl(self, peer: bytes | None, op: str) -> None:
    if op == "hello" and self.routed:  # starved or restarted producer: top its grant back up to the window
      self._heard(peer)
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
      credited = True
      if self.routed:
        # Credit is earned by hello alone: a peer never heard from (a stranger, or a producer spending credit a
        # restarted consumer granted) is refused until it says hello, which a starved producer does by itself.
        self._heard(peer)
        credited = self.outstanding[peer] > 0
      if credited:
        self.outstanding[peer] = max(self.outstanding.get(peer, 0) - 1, 0)
        self._last_data = time.monotonic()
      # decoded either way, so malformed input is counted by its reason whoever sent it
      msg = transport.decode_counted(body, self.limits, self.decode_errors, self.metrics, "credit")
      if not credited:
        if msg is not None:  # well-formed but beyond its credit: dropped, not granted back
          self.refused("uncredited_data", peer)
        continue
      if msg is None:
        self._owed[peer] += 1
        continue
      self.received += 1
      self.tracker.observe_message(msg)
      self._last = peer
      self.last_frames = body
      return msg

  def _maybe_rehello(self) -> None:
    if not self.routed and time.monotonic() - self._last_data > self.hello_interval_s:
      self._last_data = time.monotonic()
      _send_ctrl(self.sock, None, _ctrl("hello", self.outstanding.get(None, 0), self.window))

  def close(self) -> None:
    self.sock.close()
