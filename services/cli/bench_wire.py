"""`drivelab bench wire`: our codec + transport against raw single-frame ZeroMQ and a numpy memcpy.

For each transport (tcp on 127.0.0.1, ipc in a temp dir) and size, a spawned receiver process measures
(a) ours: encode + send + recv + decode (schema-checked) of a Trajectory-like batch of mixed-dtype arrays summing
to the size, built in one wire arena as the simulator's service path and replay build theirs (shared.wire.arena:
the batch goes as one frame), (a') the same batch as separate numpy arrays (one frame per array of 64 KiB or more,
as the fused simulator's jax outputs go), (b) raw: one preallocated frame of the same bytes, (c) memcpy of the same
bytes in one process, (d) raw with our framing: the very frames (a) sends (the header, then the arena's frame),
sent as they are and counted, not decoded, which isolates what encoding and decoding cost. The goal (>= 0.9 of
raw at 1 MiB and up) is read on (a) against (b); (a') and (a)/(d) are reported beside it.
GB/s is counted at the receiver from its first to its last message, payload bytes only (ours: the arrays, not the
header or packing padding). Fairness: ours and raw go through the same sockets (same options and HWMs), the same
`transport.send_frames` on the sender and the same `transport.wait_readable` on the receiver, interleaved round by
round. Small messages (<= 4 KiB): messages/s one way (PUSH/PULL) and DEALER/ROUTER round trips. Every receive has
a timeout; a stalled case is reported as stalled and its receiver process replaced.
Results (with command line, git commit, machine, UTC time) go to --out (default benchmarks/results/wire.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import sys
import tempfile
import time

import msgpack
import numpy as np
import zmq

from shared.wire import arena as arena_lib
from shared.wire import codec, schemas, transport

from services.cli import provenance

_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_MIX = (("obs/ego", np.float32, 0.45), ("obs/agents", np.float16, 0.2), ("obs/roads", np.float32, 0.2),
        ("action", np.int32, 0.04), ("reward", np.float32, 0.04), ("log_prob", np.float32, 0.04),
        ("value", np.float32, 0.02))
END = b"END"
BEGIN = b"BEGIN:"


def parse_size(s: str) -> int:
  for unit in ("GiB", "MiB", "KiB", "B"):
    if s.endswith(unit):
      return int(float(s[: -len(unit)]) * _UNITS[unit])
  return int(s)


def batch_message(size: int, seq: int = 0, arena: bool = True) -> codec.Message:
  """A valid Trajectory whose arrays sum to exactly `size` bytes (leftover bytes go to obs/pad). `arena`: built in
  one wire arena, as the simulator's service path and replay build theirs (shared.wire.arena); else one separate
  numpy array each."""
  specs, used = {}, 0
  for name, dtype, frac in _MIX:
    n = int(size * frac) // np.dtype(dtype).itemsize
    specs[name] = ((1, n), dtype)
    used += n * np.dtype(dtype).itemsize
  specs["done"] = ((1, 0), bool)
  specs["valid"] = ((1, 0), bool)
  specs["obs/pad"] = ((1, size - used), np.uint8)
  if arena:
    arrays = dict(arena_lib.Arena(specs).arrays)
    for k, a in arrays.items():
      a[...] = 0 if k in ("done", "valid", "obs/pad") else 1
  else:
    arrays = {k: (np.zeros if k in ("done", "valid", "obs/pad") else np.ones)(shape, dt)
              for k, (shape, dt) in specs.items()}
  return schemas.make("Trajectory", "bench", seq, arrays=arrays, params_version=0, env_steps=0)


def _receive_round(sock: zmq.Socket, mode: str, timeout_s: float) -> dict:
  """Counts one round until END; `ours` decodes (schema-checked), `raw` takes one zero-copy frame, `rtt` echoes.
  Both one-way modes wait with the same `transport.wait_readable` and count payload bytes only (ours: the
  arrays, not the header or the packed frame's alignment padding; raw: its one frame), so GB/s compare alike."""
  n, nbytes, t_first, t_last, stalled = 0, 0, 0.0, 0.0, False
  cpu_first = time.process_time()  # process CPU, libzmq I/O threads included: robust to other load
  while True:
    if mode == "raw":  # one zero-copy frame, as the baseline asks
      frames = [sock.recv(copy=False)] if transport.wait_readable(sock, timeout_s) else None
    else:
      frames = transport.recv_frames(sock, timeout_s, n_route=1 if mode == "rtt" else 0)
    if frames is None:
      stalled = True
      break
    body = frames[1:] if mode == "rtt" else frames
    if len(body) == 1 and memoryview(body[0]).nbytes == len(END) and bytes(memoryview(body[0])) == END:
      break
    if mode == "ours":
      payload = codec.decode(body).nbytes
    elif mode == "frames":  # ours's very frames, neither encoded nor decoded: all but the header (the first)
      payload = sum(memoryview(f).nbytes for f in body[1:])
    else:
      payload = sum(memoryview(f).nbytes for f in body)
      if mode == "rtt":
        transport.send_frames(sock, body, route=frames[:1])
    t_last = time.perf_counter()
    if n == 0:
      t_first, cpu_first = t_last, time.process_time()  # the first message only starts the clock
    else:
      nbytes += payload
    n += 1
    frames = body = None  # free this message's buffers before the next arrives, in every mode alike
  return {"n": n, "bytes": nbytes, "secs": t_last - t_first if n > 1 else 0.0, "stalled": stalled,
          "recv_cpu_s": time.process_time() - cpu_first}


def _receiver(pull_ep: str, router_ep: str, result_ep: str, timeout_s: float) -> None:
  """Receiver process: waits for BEGIN{mode} on the PULL socket, runs the round, reports on `result_ep`."""
  ctx = transport.new_context()
  res = transport.make_socket(ctx, zmq.PUSH)
  res.connect(result_ep)
  pull = transport.make_socket(ctx, zmq.PULL, transport.SocketOptions(rcvhwm=16))
  pull.connect(pull_ep)
  router = transport.make_socket(ctx, zmq.ROUTER)
  router.connect(router_ep)
  res.send(b"READY")
  while True:
    frames = transport.recv_frames(pull, 60.0)
    if frames is None or bytes(memoryview(frames[0])) == b"QUIT":
      break
    if len(frames) != 1 or not bytes(memoryview(frames[0])).startswith(BEGIN):
      continue  # leftovers of a stalled round
    mode = bytes(memoryview(frames[0]))[len(BEGIN):].decode()
    res.send(msgpack.packb(_receive_round(router if mode == "rtt" else pull, mode, timeout_s)))
  for s in (res, pull, router):
    s.close(linger=500)
  ctx.term()


class _Peer:
  """A spawned receiver process plus the sender's sockets; restarted after a stall."""

  def __init__(self, ctx: zmq.Context, tr: str, tmp: str, timeout_s: float):
    self.ctx, self.timeout_s = ctx, timeout_s
    opts = transport.SocketOptions(sndhwm=16)
    self.push = transport.make_socket(ctx, zmq.PUSH, opts)
    self.dealer = transport.make_socket(ctx, zmq.DEALER, opts)
    self.res = transport.make_socket(ctx, zmq.PULL)
    for sock in (self.push, self.dealer):
      sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    eps = []
    for tag, sock in (("push", self.push), ("dealer", self.dealer)):
      sock.bind(_endpoint(tr, tmp, f"{tag}{time.monotonic_ns()}"))
      eps.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    res_port = self.res.bind_to_random_port("tcp://127.0.0.1")
    self.proc = mp.get_context("spawn").Process(
        target=_receiver, args=(eps[0], eps[1], f"tcp://127.0.0.1:{res_port}", timeout_s), daemon=True)
    self.proc.start()
    if not self.res.poll(60_000) or self.res.recv() != b"READY":  # spawn + imports take a while on a busy box
      raise RuntimeError("bench receiver did not start within 60 s")

  def round(self, mode: str, seconds: float, make_frames) -> dict:
    sock = self.dealer if mode == "rtt" else self.push
    stalled, i, deadline, cpu0 = False, 0, None, 0.0
    try:
      self.push.send(BEGIN + mode.encode())
      while deadline is None or time.perf_counter() < deadline:
        transport.send_frames(sock, make_frames(i))
        if mode == "rtt" and transport.recv_frames(sock, self.timeout_s) is None:
          stalled = True
          break
        if deadline is None:  # the clock starts once the receiver is there
          deadline, cpu0 = time.perf_counter() + seconds, time.process_time()
        i += 1
      send_cpu = time.process_time() - cpu0
      sock.send(END)
    except zmq.Again:
      stalled = True
    out = self.res.recv() if self.res.poll(int((self.timeout_s + 5) * 1000)) else None
    r = msgpack.unpackb(out) if out else {"n": 0, "bytes": 0, "secs": 0.0, "stalled": True}
    r["stalled"] = bool(r["stalled"] or stalled)
    # CPU microseconds per message on each side (sender counted over the same messages as the receiver)
    r["send_cpu_us"] = send_cpu / max(i - 1, 1) * 1e6 if not r["stalled"] else None
    r["recv_cpu_us"] = r.get("recv_cpu_s", 0.0) / max(r["n"] - 1, 1) * 1e6 if not r["stalled"] else None
    return r

  def close(self) -> None:
    try:
      self.push.send(b"QUIT", zmq.NOBLOCK)
    except zmq.ZMQError:
      pass
    self.proc.join(5)
    if self.proc.is_alive():
      self.proc.kill()
    for s in (self.push, self.dealer, self.res):
      s.close(linger=0)


def _gbps(r: dict) -> float | None:
  return r["bytes"] / r["secs"] / 1e9 if r["secs"] > 0 and not r["stalled"] else None


def _median(xs: list) -> float | None:
  xs = sorted(x for x in xs if x is not None)
  return xs[len(xs) // 2] if xs else None


def _memcpy_gbps(size: int, seconds: float) -> float:
  src, dst = np.ones(size, np.uint8), np.empty(size, np.uint8)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < min(seconds, 0.5) or n < 3:
    np.copyto(dst, src)
    n += 1
  return size * n / (time.perf_counter() - t0) / 1e9


def _endpoint(transport_name: str, tmp: str, tag: str) -> str:
  if transport_name == "ipc":
    return f"ipc://{tmp}/{tag}.sock"
  return "tcp://127.0.0.1:*"  # a free port; the caller reads LAST_ENDPOINT


class _Session:
  """Runs rounds against one receiver per transport, replacing it when a round stalls."""

  def __init__(self, ctx, tr, tmp, timeout_s):
    self.args = (ctx, tr, tmp, timeout_s)
    self.peer = _Peer(*self.args)

  def round(self, mode, seconds, make_frames) -> dict:
    r = self.peer.round(mode, seconds, make_frames)
    if r["stalled"]:
      self.peer.close()
      self.peer = _Peer(*self.args)
    return r

  def close(self):
    self.peer.close()


def _encoder(msg: codec.Message):
  def frames(i: int) -> list:
    msg.seq = i
    return codec.encode(msg)
  return frames


def _throughput(sess: _Session, tr: str, sizes, seconds, repeats) -> list[dict]:
  rows = []
  for size in sizes:
    msg, sep, raw = batch_message(size), batch_message(size, arena=False), np.ones(size, np.uint8)
    fixed = codec.encode(msg)
    runs = {"ours": [], "ours_separate": [], "raw": [], "raw_frames": []}
    stalls, cpu = [], {k: [] for k in runs}
    for _ in range(repeats):  # interleaved, so load from other processes hits all alike
      rs = {"ours": sess.round("ours", seconds / repeats, _encoder(msg)),
            "ours_separate": sess.round("ours", seconds / repeats, _encoder(sep)),
            "raw": sess.round("raw", seconds / repeats, lambda i, raw=raw: [raw]),
            "raw_frames": sess.round("frames", seconds / repeats, lambda i, fixed=fixed: fixed)}
      for k, r in rs.items():
        runs[k].append(_gbps(r))
        if r["send_cpu_us"] is not None:
          cpu[k].append(r["send_cpu_us"] + r["recv_cpu_us"])
        if r["stalled"]:
          stalls.append(k)
    ratio = lambda k: _median([o / r for o, r in zip(runs[k], runs["raw"]) if o and r])
    best = lambda k: max((x for x in runs[k] if x), default=None)
    rows.append({"transport": tr, "size_bytes": size, "arrays": len(msg.arrays),
                 "frames_ours": len(codec.encode(msg)), "frames_ours_separate": len(codec.encode(sep)),
                 "ours_gbps": _median(runs["ours"]), "ours_separate_gbps": _median(runs["ours_separate"]),
                 "raw_gbps": _median(runs["raw"]), "raw_frames_gbps": _median(runs["raw_frames"]),
                 "ratio": ratio("ours"), "ratio_separate": ratio("ours_separate"),
                 "ratio_ours_over_raw_frames": _median([o / r for o, r in zip(runs["ours"], runs["raw_frames"])
                                                        if o and r]),
                 "ours_gbps_best": best("ours"), "raw_gbps_best": best("raw"),
                 "ours_gbps_runs": runs["ours"], "ours_separate_gbps_runs": runs["ours_separate"],
                 "raw_gbps_runs": runs["raw"], "raw_frames_gbps_runs": runs["raw_frames"],
                 "memcpy_gbps": _memcpy_gbps(size, seconds),
                 "ours_cpu_us_per_msg": _median(cpu["ours"]),
                 "ours_separate_cpu_us_per_msg": _median(cpu["ours_separate"]),
                 "raw_cpu_us_per_msg": _median(cpu["raw"]), "stalled": stalls})
  return rows


def _small(sess: _Session, tr: str, seconds, repeats) -> list[dict]:
  rows = []
  hb = schemas.make("Heartbeat", "bench", 0, component="bench", status="ok", time_s=0.0)
  for label, mode, msg in (("one_way_heartbeat", "ours", hb), ("one_way_4KiB_batch", "ours", batch_message(4096)),
                           ("round_trip_heartbeat", "rtt", hb), ("round_trip_4KiB_batch", "rtt",
                                                                 batch_message(4096))):
    runs = [sess.round(mode, seconds / repeats, _encoder(msg)) for _ in range(repeats)]
    rates = [r["n"] / r["secs"] if r["secs"] and not r["stalled"] else None for r in runs]
    cpu = [r["send_cpu_us"] + r["recv_cpu_us"] for r in runs if r["send_cpu_us"] is not None]
    rows.append({"transport": tr, "case": label, "bytes": msg.nbytes, "msgs_per_s": _median(rates),
                 "cpu_us_per_msg": _median(cpu),
                 "msgs_per_s_runs": rates, "stalled": sum(r["stalled"] for r in runs)})
  return rows


def _machine() -> dict:
  return provenance.machine(pyzmq=zmq.pyzmq_version(), libzmq=zmq.zmq_version(), numpy=np.__version__)


def _print(result: dict) -> None:
  from rich.console import Console
  from rich.table import Table

  fmt = lambda v, spec=".2f": "stalled" if v is None else format(v, spec)
  t = Table(title="wire throughput (GB/s at the receiver, median of interleaved rounds; ours = arena-built batch, "
                "separate = one numpy array per field)")
  for col in ("transport", "size", "arrays", "frames", "ours", "separate", "raw zmq", "raw, our frames", "ours/raw",
              "separate/raw", "ours/raw frames", "best ours", "best raw", "memcpy", "CPU us/msg ours", "sep", "raw",
              "stalls"):
    t.add_column(col, justify="right")
  for r in result["throughput"]:
    t.add_row(r["transport"], f"{r['size_bytes']:,}", str(r["arrays"]), f"{r['frames_ours']}/{r['frames_ours_separate']}",
              fmt(r["ours_gbps"]), fmt(r["ours_separate_gbps"]), fmt(r["raw_gbps"]), fmt(r["raw_frames_gbps"]),
              fmt(r["ratio"]), fmt(r["ratio_separate"]), fmt(r["ratio_ours_over_raw_frames"]),
              fmt(r["ours_gbps_best"]), fmt(r["raw_gbps_best"]), fmt(r["memcpy_gbps"]),
              fmt(r["ours_cpu_us_per_msg"], ".0f"), fmt(r["ours_separate_cpu_us_per_msg"], ".0f"),
              fmt(r["raw_cpu_us_per_msg"], ".0f"), ",".join(r["stalled"]))
  s = Table(title="small messages")
  for col in ("transport", "case", "payload B", "msgs/s", "CPU us/msg", "stalls"):
    s.add_column(col, justify="right")
  for r in result["small"]:
    s.add_row(r["transport"], r["case"], str(r["bytes"]), fmt(r["msgs_per_s"], ",.0f"),
              fmt(r["cpu_us_per_msg"], ".0f"), str(r["stalled"]))
  Console(width=160).print(t, s)


def run(args: argparse.Namespace) -> int:
  sizes = [parse_size(x) for x in args.sizes.split(",")]
  transports = [x for x in args.transports.split(",") if x]
  ctx = transport.new_context()
  result = {"benchmark": "wire", "command": " ".join(["drivelab"] + sys.argv[1:]),
            "git_commit": provenance.git_commit(),
            "machine": _machine(), "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds_per_case": args.seconds, "repeats": args.repeats, "throughput": [], "small": []}
  other = provenance.OtherCpu()  # the receiver is a spawned child: its CPU counts as ours once it is joined
  with tempfile.TemporaryDirectory(prefix="drivelab-bench-") as tmp:
    for tr in transports:
      sess = _Session(ctx, tr, tmp, args.timeout)
      try:
        result["throughput"] += _throughput(sess, tr, sizes, args.seconds, args.repeats)
        result["small"] += _small(sess, tr, args.seconds, args.repeats)
      finally:
        sess.close()
  ctx.term()
  result["machine"]["loadavg_end_1_5_15min"] = list(os.getloadavg())
  result["machine"]["other_processes_cpu_share"] = other.share()
  big = [r["ratio"] for r in result["throughput"] if r["size_bytes"] >= (1 << 20)]
  sep = [r["ratio_separate"] for r in result["throughput"] if r["size_bytes"] >= (1 << 20)]
  result["goal"] = {"ours_over_raw_min_at_1MiB_up": min((x for x in big if x), default=None), "target": 0.9,
                    "separate_arrays_over_raw_min_at_1MiB_up": min((x for x in sep if x), default=None)}
  _print(result)
  provenance.write_result(args.out, result)
  return 0


def register(subparsers) -> None:
  p = subparsers.add_parser("wire", help="codec + ZeroMQ throughput against raw ZeroMQ and memcpy")
  p.add_argument("--sizes", default="4KiB,64KiB,1MiB,16MiB", help="comma-separated sizes (B, KiB, MiB, GiB)")
  p.add_argument("--transports", default="tcp,ipc", help="comma-separated: tcp, ipc")
  p.add_argument("--seconds", type=float, default=2.0, help="seconds per case, split over the repeats")
  p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per case (medians reported)")
  p.add_argument("--timeout", type=float, default=3.0, help="receive timeout; a longer silence is a stall")
  p.add_argument("--out", default="benchmarks/results/wire.json", help="JSON result file")
  p.set_defaults(func=run)
