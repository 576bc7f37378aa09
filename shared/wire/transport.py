"""ZeroMQ plumbing: sockets with safe options, framed send/receive with timeouts, request/reply, versioned params.

Rules (DESIGN.md "Facts measured"): one context per process created AFTER fork (`new_context()`); every socket gets
LINGER, HWMs, ZMTP heartbeats (500 ms / 1500 ms) and MAXMSGSIZE; ROUTERs get ROUTER_MANDATORY so replies to a
vanished peer fail loudly; every receive takes a timeout (poller) and never blocks forever; every message carries
(producer, epoch, seq) and receivers count gaps with `SequenceTracker`.

Receivers never raise on bad input: a message that fails `codec.decode` is counted (`decode_errors[reason]` and,
when a `StandardMetrics` is passed, `drivelab_decode_errors_total{reason}`) and dropped.

  ctx = new_context()
  srv = Server(ctx, registry.endpoint("act", host="*"));  cli = Client(ctx, registry.endpoint("act"))
  reply = cli.request(schemas.make("ActRequest", "sim-0", seq=7, arrays={"obs/x": x}, request_id=7), 1.0)
  pub = ParamsPublisher(ctx, ep); sub = ParamsSubscriber(ctx, ep); newest = sub.poll(0.1)   # None if nothing newer
Credit flow control (CreditProducer / CreditConsumer / CreditBroker) lives in `shared.wire.flow`; CURVE helpers
(`curve_keys_from_files`, `curve_server`, `curve_client`, `start_authenticator`) are at the bottom of this module.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np
import zmq
import zmq.auth

from shared.wire import codec

log = logging.getLogger(__name__)
# Plain ints: or-ing pyzmq's enum flags costs microseconds per frame.
_SNDMORE, _NOBLOCK, _POLLIN, _RCVMORE = int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.POLLIN), int(zmq.RCVMORE)


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
    n = f.nbytes if type(f) is np.ndarray else memoryview(f).nbytes
    sock.send(f, flags | _SNDMORE if i < last else flags, copy=n < codec.ZERO_COPY_MIN_BYTES)
    total += n if i >= n_route else 0
  return total


def send_message(sock: zmq.Socket, msg: codec.Message, route: list[bytes] = (), flags: int = 0,
                 metrics: Any = None) -> int:
  nbytes = send_frames(sock, codec.encode(msg), route, flags)
  if metrics is not None:
    metrics.count_out(msg.schema, nbytes)
  return nbytes


def recv_frames(sock: zmq.Socket, timeout_s: float, n_route: int = 0) -> list | None:
  """One multipart message within `timeout_s` (None on timeout). The first `n_route` + 1 frames (ROUTER identity
  frames, then the header) arrive as bytes, the rest as zero-copy zmq.Frame: pass n_route=1 on a ROUTER, 0 on
  DEALER/PULL/SUB (a wrong n_route copies the first array frame)."""
  if not sock.poll(int(max(timeout_s, 0.0) * 1000), _POLLIN):
    return None
  frames = [sock.recv(_NOBLOCK)]
  while sock.getsockopt(_RCVMORE):
    frames.append(sock.recv(copy=len(frames) <= n_route))
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
  """PUB that binds and publishes versioned Params (or Control); a small SNDHWM because only the newest matters."""

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


# CURVE -------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CurveKeys:
  """Attributes: server_public, server_secret (None on clients), client_public, client_secret (z85 bytes),
  public_keys_dir (the folder the authenticator trusts)."""

  server_public: bytes
  server_secret: bytes | None
  client_public: bytes
  client_secret: bytes | None
  public_keys_dir: str


def create_curve_keys(directory: str) -> CurveKeys:
  """Writes server/client keypairs (zmq.auth certificate files) into `directory`/{public,private}."""
  pub, priv = os.path.join(directory, "public"), os.path.join(directory, "private")
  os.makedirs(pub, exist_ok=True)
  os.makedirs(priv, mode=0o700, exist_ok=True)
  for name in ("server", "client"):
    p, s = zmq.auth.create_certificates(priv, name)
    os.replace(p, os.path.join(pub, os.path.basename(p)))
  return curve_keys_from_files(directory)


def curve_keys_from_files(directory: str) -> CurveKeys:
  """Loads keys written by `create_curve_keys` (or zmq.auth): private/{server,client}.key_secret,
  public/*.key. A missing secret file leaves that secret None (a client host holds no server secret)."""
  pub, priv = os.path.join(directory, "public"), os.path.join(directory, "private")

  def load(name: str) -> tuple[bytes, bytes | None]:
    secret_file = os.path.join(priv, f"{name}.key_secret")
    if os.path.exists(secret_file):
      return zmq.auth.load_certificate(secret_file)
    return zmq.auth.load_certificate(os.path.join(pub, f"{name}.key"))

  sp, ss = load("server")
  cp, cs = load("client")
  return CurveKeys(sp, ss, cp, cs, pub)


def start_authenticator(ctx: zmq.Context, keys: CurveKeys) -> Any:
  """Starts a ThreadAuthenticator accepting clients whose public keys sit in `keys.public_keys_dir`.
  Call before binding; call `.stop()` at shutdown."""
  from zmq.auth.thread import ThreadAuthenticator

  auth = ThreadAuthenticator(ctx)
  auth.start()
  auth.configure_curve(domain="*", location=keys.public_keys_dir)
  return auth


def curve_server(sock: zmq.Socket, keys: CurveKeys) -> None:
  sock.curve_secretkey = keys.server_secret
  sock.curve_publickey = keys.server_public
  sock.curve_server = True


def curve_client(sock: zmq.Socket, keys: CurveKeys) -> None:
  sock.curve_secretkey = keys.client_secret
  sock.curve_publickey = keys.client_public
  sock.curve_serverkey = keys.server_public
