"""ZeroMQ socket plumbing: sockets with safe options, framed send/receive with timeouts, counted decoding, sequence
gap tracking. The request/reply and params classes built on these live in `transport` (which re-exports all
of this module's public names).

Rules: one context per process created AFTER fork (`new_context()`); every socket gets
LINGER, HWMs, ZMTP heartbeats (500 ms / 1500 ms) and MAXMSGSIZE; ROUTERs get ROUTER_MANDATORY so replies to a
vanished peer fail loudly; every receive takes a timeout and never blocks forever; every message carries
(producer, epoch, seq) and receivers count gaps with `SequenceTracker`.

Per-frame costs matter for small messages (~65k msgs/s one way is the Python ceiling), so the hot
paths use plain-int flags, check readiness with ZMQ_EVENTS before paying for a poll, and follow `Frame.more`
rather than a getsockopt(RCVMORE) per frame.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any

import numpy as np
import zmq

from shared.wire import codec

log = logging.getLogger(__name__)
# Plain ints: or-ing pyzmq's enum flags costs microseconds per frame.
_SNDMORE, _NOBLOCK, _POLLIN, _RCVMORE = int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.POLLIN), int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)

@dataclasses.dataclass(frozen=True)
class SocketOptions:
  """Attributes:
    linger_ms: how long close() waits for unsent messages.
    sndhwm, rcvhwm: high-water marks in messages (credit flow keeps real queues far below them).
    heartbeat_ivl_ms, heartbeat_timeout_ms: ZMTP heartbeats; a dead peer is noticed after the timeout.
    max_msg_bytes: MAXMSGSIZE; a larger message drops the connection, so keep it above codec.Limits.
    reconnect_ivl_ms: first reconnect delay.
  """

  linger_ms: int = 500
  sndhwm: int = 1000
  rcvhwm: int = 1000
  heartbeat_ivl_ms: int = 500
  heartbeat_timeout_ms: int = 1500
  max_msg_bytes: int = (1 << 30) + (1 << 20)
  reconnect_ivl_ms: int = 100


def new_context() -> zmq.Context:
  """A fresh context. Create one per process after fork; never share one across a fork."""
  return zmq.Context()


def make_socket(ctx: zmq.Context, kind: int, opts: SocketOptions = SocketOptions()) -> zmq.Socket:
  sock = ctx.socket(kind)
  sock.setsockopt(zmq.LINGER, opts.linger_ms)
  sock.setsockopt(zmq.SNDHWM, opts.sndhwm)
  sock.setsockopt(zmq.RCVHWM, opts.rcvhwm)
  sock.setsockopt(zmq.HEARTBEAT_IVL, opts.heartbeat_ivl_ms)
  sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, opts.heartbeat_timeout_ms)
  sock.setsockopt(zmq.HEARTBEAT_TTL, opts.heartbeat_timeout_ms)
  sock.setsockopt(zmq.MAXMSGSIZE, opts.max_msg_bytes)
  sock.setsockopt(zmq.RECONNECT_IVL, opts.reconnect_ivl_ms)
  if kind == zmq.ROUTER:
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
  return sock


def bind_or_connect(sock: zmq.Socket, endpoint: str, bind: bool) -> zmq.Socket:
  (sock.bind if bind else sock.connect)(endpoint)
  return sock


def send_frames(sock: zmq.Socket, frames: list, route: list[bytes] = (), flags: int = 0) -> int:
  """Sends [*route, *frames] as one multipart message; zero-copy for frames >= 64 KiB. Returns payload bytes."""
  parts = [*route, *frames]
  last, n_route, total, flags = len(parts) - 1, len(route), 0, int(flags)
  for i, f in enumerate(parts):
    n = len(f) if type(f) is bytes else f.nbytes if type(f) is np.ndarray else memoryview(f).nbytes
    sock.send(f, flags | _SNDMORE if i < last else flags, copy=n < codec.ZERO_COPY_MIN_BYTES)
    total += n if i >= n_route else 0
  return total


def send_message(sock: zmq.Socket, msg: codec.Message, route: list[bytes] = (), flags: int = 0,
                 metrics: Any = None) -> int:
  nbytes = send_frames(sock, codec.encode(msg), route, flags)
  if metrics is not None:
    metrics.count_out(msg.schema, nbytes)
  return nbytes


def wait_readable(sock: zmq.Socket, timeout_s: float) -> bool:
  """True when a message can be received now or within `timeout_s`. ZMQ_EVENTS answers the common "already
  there" case without building a Poller (what `Socket.poll` does on every call)."""
  if sock.getsockopt(_EVENTS) & _POLLIN:
    return True
  return timeout_s > 0 and bool(zmq.zmq_poll([(sock, _POLLIN)], int(timeout_s * 1000)))


def recv_frames(sock: zmq.Socket, timeout_s: float, n_route: int = 0) -> list | None:
  """One multipart message within `timeout_s` (None on timeout). The first `n_route` + 1 frames (ROUTER identity
  frames, then the header) arrive as bytes, the rest as zero-copy zmq.Frame: pass n_route=1 on a ROUTER, 0 on
  DEALER/PULL/SUB (a wrong n_route copies the first array frame)."""
  if not wait_readable(sock, max(timeout_s, 0.0)):
    return None
  frames = [sock.recv(_NOBLOCK)]
  while len(frames) <= n_route and sock.getsockopt(_RCVMORE):
    frames.append(sock.recv(_NOBLOCK))
  if len(frames) > n_route and sock.getsockopt(_RCVMORE):
    frame = sock.recv(_NOBLOCK, copy=False)
    frames.append(frame)
    while frame.more:
      frame = sock.recv(_NOBLOCK, copy=False)
      frames.append(frame)
  return frames
def decode_counted(frames: list, limits: codec.Limits, errors: collections.Counter, metrics: Any = None,
                   where: str = "") -> codec.Message | None:
  """decode() that counts and logs a bad message instead of raising."""
  try:
    msg = codec.decode(frames, limits)
  except codec.DecodeError as e:
    errors[e.reason] += 1
    if metrics is not None:
      metrics.decode_error(e.reason)
    log.warning("event=decode_error where=%s reason=%s detail=%r", where, e.reason, e.detail[:200])
    return None
  if metrics is not None:
    metrics.count_in(msg.schema, sum(memoryview(f).nbytes for f in frames))
  return msg


class SequenceTracker:
  """Counts lost (gaps) and duplicate/reordered messages per producer, by (epoch, seq).

  A new epoch from a producer (restart) starts its count over without a gap; an older epoch counts as stale.
  """

  def __init__(self, metrics: Any = None):
    self._next: dict[str, tuple[int, int]] = {}
    self.gaps = 0
    self.duplicates = 0
    self.stale = 0
    self._metrics = metrics

  def observe(self, producer: str, epoch: int, seq: int) -> int:
    """Records one message; returns how many messages were found missing just before it."""
    prev = self._next.get(producer)
    if prev is None or epoch > prev[0]:
      self._next[producer] = (epoch, seq + 1)
      return 0
    if epoch < prev[0]:
      self.stale += 1
      return 0
    expected = prev[1]
    if seq < expected:
      self.duplicates += 1
      return 0
    self._next[producer] = (epoch, seq + 1)
    gap = seq - expected
    self.gaps += gap
    if gap and self._metrics is not None:
      self._metrics.gap(gap)
    return gap

  def observe_message(self, msg: codec.Message) -> int:
    return self.observe(msg.producer, msg.epoch, msg.seq)

