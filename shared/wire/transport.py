"""ZeroMQ transport: request/reply and versioned params over the socket plumbing of `sockets`.

Split in three modules, every public name importable from here as before:
  sockets.py    SocketOptions, new_context, make_socket, bind_or_connect, send_frames, send_message, wait_readable,
                recv_frames, decode_counted, SequenceTracker (options, framed I/O with timeouts, gap counting)
  transport.py  Server / Client (ROUTER/DEALER request-reply), ParamsPublisher / ParamsSubscriber (PUB/SUB,
                newest version wins)
  curve.py      CurveKeys, create_curve_keys, curve_keys_from_files, start_authenticator, curve_server,
                curve_client
Credit flow control (CreditProducer / CreditConsumer) lives in `shared.wire.flow`.

Receivers never raise on bad input: a message that fails `codec.decode` is counted (`decode_errors[reason]` and,
when a `StandardMetrics` is passed, `drivelab_decode_errors_total{reason}`) and dropped.

  ctx = new_context()
  srv = Server(ctx, registry.endpoint("act", host="*"));  cli = Client(ctx, registry.endpoint("act"))
  reply = cli.request(schemas.make("ActRequest", "sim-0", seq=7, arrays={"obs/x": x}, request_id=7), 1.0)
  pub = ParamsPublisher(ctx, ep); sub = ParamsSubscriber(ctx, ep); newest = sub.poll(0.1)   # None if nothing newer
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any

import zmq

from shared.wire import codec
from shared.wire.curve import (CurveKeys, create_curve_keys, curve_client, curve_keys_from_files,  # noqa: F401
                               curve_server, start_authenticator)
from shared.wire.sockets import (SequenceTracker, SocketOptions, bind_or_connect, decode_counted,  # noqa: F401
                                 make_socket, new_context, recv_frames, send_frames, send_message, wait_readable)

__all__ = ["Client", "CurveKeys", "ParamsPublisher", "ParamsSubscriber", "SequenceTracker", "Server",
           "SocketOptions", "bind_or_connect", "create_curve_keys", "curve_client", "curve_keys_from_files",
           "curve_server", "decode_counted", "make_socket", "new_context", "recv_frames", "send_frames",
           "send_message", "start_authenticator", "wait_readable"]


class Server:
  """ROUTER that binds: receives requests from many DEALER clients and replies to each by identity."""

  def __init__(self, ctx: zmq.Context, endpoint: str, limits: codec.Limits = codec.Limits(), metrics: Any = None,
               opts: SocketOptions = SocketOptions(), curve: "CurveKeys | None" = None):
    self.sock = make_socket(ctx, zmq.ROUTER, opts)
    if curve is not None:
      curve_server(self.sock, curve)
    self.sock.bind(endpoint)
    self.limits, self.metrics = limits, metrics
    self.decode_errors: collections.Counter = collections.Counter()
    self.lost_replies = 0

  def recv(self, timeout_s: float) -> tuple[bytes, codec.Message] | None:
    """Next valid request as (peer identity, message); None when nothing valid arrived within the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
      frames = recv_frames(self.sock, deadline - time.monotonic(), n_route=1)
      if frames is None:
        return None
      msg = decode_counted(frames[1:], self.limits, self.decode_errors, self.metrics, "server")
      if msg is not None:
        return frames[0], msg

  def recv_batch(self, max_items: int, timeout_s: float) -> list[tuple[bytes, codec.Message]]:
    """Waits up to `timeout_s` for a first request, then takes whatever else is already queued (<= max_items)."""
    first = self.recv(timeout_s)
    out = [first] if first else []
    while first and len(out) < max_items:
      nxt = self.recv(0.0)
      if nxt is None:
        break
      out.append(nxt)
    return out

  def reply(self, peer: bytes, msg: codec.Message) -> bool:
    """False (and counted in `lost_replies`) when the peer is gone or its queue is full."""
    try:
      send_message(self.sock, msg, route=[peer], flags=zmq.NOBLOCK, metrics=self.metrics)
      return True
    except zmq.ZMQError as e:
      if e.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
        raise
      self.lost_replies += 1
      return False

  def close(self) -> None:
    self.sock.close()


class Client:
  """DEALER that connects: `request` sends and waits for the reply carrying the same `request_id` field."""

  def __init__(self, ctx: zmq.Context, endpoint: str, limits: codec.Limits = codec.Limits(), metrics: Any = None,
               opts: SocketOptions = SocketOptions(), curve: "CurveKeys | None" = None):
    self.sock = make_socket(ctx, zmq.DEALER, opts)
    if curve is not None:
      curve_client(self.sock, curve)
    self.sock.connect(endpoint)
    self.limits, self.metrics = limits, metrics
    self.decode_errors: collections.Counter = collections.Counter()
    self.stale_replies = 0
    self.timeouts = 0

  def request(self, msg: codec.Message, timeout_s: float) -> codec.Message | None:
    """None on timeout; replies to earlier, timed-out requests are dropped and counted in `stale_replies`."""
    want = msg.fields.get("request_id", msg.seq)
    send_message(self.sock, msg, metrics=self.metrics)
    deadline = time.monotonic() + timeout_s
    while True:
      frames = recv_frames(self.sock, deadline - time.monotonic())
      if frames is None:
        self.timeouts += 1
        return None
      reply = decode_counted(frames, self.limits, self.decode_errors, self.metrics, "client")
      if reply is None:
        continue
      if reply.fields.get("request_id", reply.seq) == want:
        return reply
      self.stale_replies += 1

  def close(self) -> None:
    self.sock.close()


class ParamsPublisher:
  """PUB that binds and publishes versioned Params; a small SNDHWM because only the newest matters."""

  def __init__(self, ctx: zmq.Context, endpoint: str, metrics: Any = None, sndhwm: int = 4,
               curve: "CurveKeys | None" = None):
    self.sock = make_socket(ctx, zmq.PUB, dataclasses.replace(SocketOptions(), sndhwm=sndhwm))
    if curve is not None:
      curve_server(self.sock, curve)
    self.sock.bind(endpoint)
    self.metrics = metrics

  def publish(self, msg: codec.Message) -> int:
    return send_message(self.sock, msg, metrics=self.metrics)

  def close(self) -> None:
    self.sock.close()


class ParamsSubscriber:
  """SUB that keeps only the newest version: `poll` drains the queue and returns the newest message whose
  `version_field` is above the last one returned (None otherwise), so repeats and older versions are no-ops."""

  def __init__(self, ctx: zmq.Context, endpoint: str, version_field: str = "params_version",
               limits: codec.Limits = codec.Limits(), metrics: Any = None, rcvhwm: int = 4,
               curve: "CurveKeys | None" = None):
    self.sock = make_socket(ctx, zmq.SUB, dataclasses.replace(SocketOptions(), rcvhwm=rcvhwm))
    if curve is not None:
      curve_client(self.sock, curve)
    self.sock.setsockopt(zmq.SUBSCRIBE, b"")
    self.sock.connect(endpoint)
    self.version_field, self.limits, self.metrics = version_field, limits, metrics
    self.version = -1
    self.dropped = 0
    self.decode_errors: collections.Counter = collections.Counter()

  def poll(self, timeout_s: float) -> codec.Message | None:
    newest = None
    frames = recv_frames(self.sock, timeout_s)
    while frames is not None:
      msg = decode_counted(frames, self.limits, self.decode_errors, self.metrics, "params")
      v = msg.fields.get(self.version_field) if msg is not None else None
      if isinstance(v, int) and v > max(self.version, -1 if newest is None else newest.fields[self.version_field]):
        self.dropped += newest is not None
        newest = msg
      elif msg is not None:
        self.dropped += 1
      frames = recv_frames(self.sock, 0.0)
    if newest is not None:
      self.version = newest.fields[self.version_field]
    return newest

  def close(self) -> None:
    self.sock.close()
