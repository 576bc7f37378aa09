"""Forged flow-control claims on every credit link buy a stranger at most one window, and the stack's own peers keep
their share. Real ZeroMQ on 127.0.0.1; the stranger is a plain DEALER speaking the control frames by hand.

  scenes        the broker service (ROUTER producer): a forged grant of 10^9 gets nothing, a forged hello at most
                `max_consumer_window` batches, while two simulator-like consumers keep receiving; with CURVE the
                stranger (no key) gets nothing at all.
  act_backend   the broker service and a real inference worker: a stranger repeating "ready" and never answering
                holds at most `inference_slots` requests; the simulators' requests keep being answered.
  the ROUTER-consumer links (scenes_in, trajectories, expert, replay_samples, eval): forged grants are ignored, and
                data pushed without credit is dropped and counted, while a real producer on the same link loses
                nothing.
"""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from services.broker import config as broker_config, service as broker_service
from services.common import runtime
from shared.acting import policy_net
from services.inference import config as inference_config, service as inference_service
from services.stack import supervisor
from shared.wire import codec, flow, registry, schemas, transport

BIG = 10**9


def _ctrl(op: str, n: int, window: int | None = None) -> bytes:
  d = {"op": op, "n": n} if window is None else {"op": op, "n": n, "window": window}
  return flow.CTRL + msgpack.packb(d)


def _send(sock: zmq.Socket, frame: bytes) -> None:
  """Non-blocking: a DEALER with no completed handshake (CURVE refused it) would otherwise block forever."""
  try:
    sock.send(frame, zmq.NOBLOCK)
  except zmq.Again:
    pass


def _drain(sock: zmq.Socket, seconds: float) -> int:
  """Data messages (anything but a control frame) a raw socket receives within `seconds`."""
  n, deadline = 0, time.monotonic() + seconds
  while time.monotonic() < deadline:
    frames = transport.recv_frames(sock, 0.05)
    if frames is not None and not bytes(frames[0]).startswith(flow.CTRL):
      n += 1
  return n


def _refused(rt: runtime.Runtime, reason: str) -> float:
  return rt.registry.get_sample_value("drivelab_credit_refused_total", {"reason": reason}) or 0.0


@pytest.fixture()
def stack_broker(tmp_path, request):
  """The broker service in a thread (max_consumer_window 4), plus a scene-loader-like producer feeding scenes_in
  as fast as credit allows. Yields (common, broker Runtime, client CURVE keys or None)."""
  curve_dir = ""
  if getattr(request, "param", "plain") == "curve":
    curve_dir = str(tmp_path / "keys")
    transport.create_curve_keys(curve_dir)
  common = runtime.CommonConfig(metrics_port=0, port_offset=supervisor.find_port_offset(), run_dir=str(tmp_path),
                                curve_dir=curve_dir, net="mlp", preset="tiny")
  rt = runtime.Runtime("broker", common)
  svc = broker_service.bootstrap(broker_config.BrokerConfig(max_consumer_window=4), rt)
  keys = transport.curve_keys_from_files(curve_dir) if curve_dir else None
  stop = threading.Event()
  ctx = transport.new_context()

  def load():
    prod = flow.CreditProducer(ctx, runtime.endpoint(common, "scenes_in"), producer_id="loader", epoch=1,
                               curve=keys, hello_interval_s=0.2)
    i = 0
    while not stop.is_set():
      i += prod.send_fields("Heartbeat", timeout_s=0.05, component="scene_loader", status="ok", time_s=float(i))
    prod.close()

  threads = [threading.Thread(target=rt.run, args=(svc,), daemon=True), threading.Thread(target=load, daemon=True)]
  for th in threads:
    th.start()
  yield common, rt, keys
  stop.set()
  rt.stop.set()
  for th in threads:
    th.join(10)
  ctx.destroy(linger=0)


@pytest.mark.parametrize("stack_broker", ["plain", "curve"], indirect=True)
def test_forged_grants_on_the_scenes_link_get_at_most_one_window(stack_broker):
  common, rt, keys = stack_broker
  ctx = transport.new_context()
  sims = [flow.CreditConsumer(ctx, runtime.endpoint(common, "scenes"), bind=False, window=1, curve=keys,
                              hello_interval_s=0.2) for _ in range(2)]
  got = [0, 0]
  stop = threading.Event()

  def simulate(i: int):
    while not stop.is_set():
      got[i] += sims[i].recv(0.05) is not None

  threads = [threading.Thread(target=simulate, args=(i,), daemon=True) for i in range(2)]
  for th in threads:
    th.start()
  stranger = transport.make_socket(ctx, zmq.DEALER)  # no CURVE keys: what anyone on the network can open
  stranger.connect(runtime.endpoint(common, "scenes"))
  try:
    time.sleep(0.5)
    _send(stranger, _ctrl("credit", BIG))  # the forged grant: no hello, so no credit
    forged_grant = _drain(stranger, 1.5)
    _send(stranger, _ctrl("hello", BIG, BIG))  # a forged hello: its window is capped at the broker's bound
    for _ in range(50):
      _send(stranger, _ctrl("credit", BIG))  # and every further grant beyond that window is refused
    forged_hello = _drain(stranger, 3.0)
    before = list(got)
    time.sleep(1.0)
    stop.set()
    for th in threads:
      th.join(5)
    assert forged_grant == 0
    if keys is not None:  # CURVE: a peer without a trusted key never gets through the handshake
      assert forged_hello == 0
    else:
      assert 1 <= forged_hello <= 4
      assert _refused(rt, "unknown_peer") >= BIG
      assert _refused(rt, "over_window") > 0
    # the simulators kept their share, during the forgery and after it
    assert min(before) >= 10 and min(g - b for g, b in zip(got, before)) >= 5, (before, got)
  finally:
    stop.set()
    stranger.close(linger=0)
    for s in sims:
      s.close()
    ctx.destroy(linger=0)


def test_forged_ready_on_act_backend_holds_at_most_the_slots(tmp_path):
  common = runtime.CommonConfig(metrics_port=0, port_offset=supervisor.find_port_offset(), run_dir=str(tmp_path),
                                net="mlp", preset="tiny")
  rts = {n: runtime.Runtime(n, common) for n in ("broker", "inference")}
  broker = broker_service.bootstrap(broker_config.BrokerConfig(inference_slots=2), rts["broker"])
  threads = [threading.Thread(target=rts["broker"].run, args=(broker,), daemon=True)]
  threads[0].start()
  ctx = transport.new_context()
  ready = schemas.make("Heartbeat", "stranger", 0, component="inference", status="ready", time_s=0.0)
  stranger = transport.make_socket(ctx, zmq.DEALER)
  stranger.connect(runtime.endpoint(common, "act_backend"))
  clients = [transport.Client(ctx, runtime.endpoint(common, "act")) for _ in range(6)]
  f = policy_net.from_common(common).num_features
  try:
    worker = inference_service.bootstrap(inference_config.InferenceConfig(), rts["inference"])
    threads.append(threading.Thread(target=rts["inference"].run, args=(worker,), daemon=True))
    threads[-1].start()

    failures = []

    def assert_(ok: bool) -> None:
      if not ok:
        failures.append("a warm-up request was not answered")

    def ask(i: int, rid: int, timeout_s: float) -> bool:
      req = schemas.make("ActRequest", f"sim-{i}", rid, arrays={"obs/flat": np.zeros((3, f), np.float32)},
                         request_id=rid)
      return clients[i].request(req, timeout_s) is not None

    # The real worker is up and has compiled both batch shapes it will see (one request: 3 rows, padded to 4; its
    # two slots at once: 6, padded to 8), so a compile under load cannot time requests out below.
    warm = [threading.Thread(target=lambda i=i: assert_(ask(i, 0, 120.0))) for i in range(2)]
    for th in warm:
      th.start()
    for th in warm:
      th.join()
    assert not failures, failures
    for _ in range(20):  # "ready" over and over: were each one a fresh window, it would take every request
      transport.send_message(stranger, ready)
    answered, stolen = [0] * len(clients), 0

    def simulate(i: int):  # the simulators ask at once, so requests queue up and every "ready" peer gets some
      answered[i] = sum(ask(i, rid, 10.0) for rid in range(1, 5))  # a stolen request costs its client 10 s

    sims = [threading.Thread(target=simulate, args=(i,)) for i in range(len(clients))]
    for th in sims:
      th.start()
    while any(th.is_alive() for th in sims):
      for _ in range(3):
        transport.send_message(stranger, ready)
      stolen += _drain(stranger, 0.01)
    stolen += _drain(stranger, 0.5)
    assert stolen <= 2, stolen  # inference_slots
    assert stolen >= 1  # it did take requests: the bound, not luck, kept it at two
    assert sum(answered) >= 6 * 4 - stolen, answered
    assert _refused(rts["broker"], "ready_while_busy") > 0
  finally:
    for rt in rts.values():
      rt.stop.set()
    for th in threads:
      th.join(10)
    stranger.close(linger=0)
    for cli in clients:
      cli.close()
    ctx.destroy(linger=0)


CONSUMER_LINKS = sorted(n for n, lk in registry.LINKS.items() if lk.pattern == "credit" and not lk.producer_binds)


@pytest.mark.parametrize("link", CONSUMER_LINKS)
def test_data_beyond_credit_on_a_consumer_link_is_dropped_and_counted(link):
  """A ROUTER consumer (as replay, the learner and the broker's frontend bind them): a forged grant changes
  nothing and data pushed without a hello is dropped and counted, while a real producer on the same link loses
  nothing. (A peer that says hello is a producer like any other; only CURVE keeps strangers off a link.)"""
  from shared.telemetry import metrics as tm

  reg = tm.new_registry()
  m = tm.standard_metrics(reg)
  ctx = transport.new_context()
  offset = supervisor.find_port_offset()
  window = 2
  cons = flow.CreditConsumer(ctx, registry.endpoint(link, host="*", port_offset=offset), window=window, metrics=m)
  prod = flow.CreditProducer(ctx, registry.endpoint(link, port_offset=offset), producer_id="real", epoch=1)
  stranger = transport.make_socket(ctx, zmq.DEALER)
  stranger.connect(registry.endpoint(link, port_offset=offset))
  try:
    _send(stranger, _ctrl("credit", BIG))
    junk = codec.encode(schemas.make("Heartbeat", "stranger", 0, component="x", status="ok", time_s=0.0))
    for _ in range(40):
      transport.send_frames(stranger, junk)
    real_sent, got = 0, {"real": 0, "stranger": 0}
    deadline = time.monotonic() + 10
    while (real_sent < 20 or got["real"] < 20) and time.monotonic() < deadline:
      if real_sent < 20 and prod.send_fields("Heartbeat", timeout_s=0.01, component="x", status="ok",
                                             time_s=float(real_sent)):
        real_sent += 1
      msg = cons.recv(0.01)
      if msg is not None:
        got[msg.producer] += 1
    assert _drain(stranger, 0.2) == 0  # a consumer sends no data, whatever credit it is granted
    assert got["real"] == 20 and cons.tracker.gaps == 0
    assert got["stranger"] == 0
    assert reg.get_sample_value("drivelab_credit_refused_total", {"reason": "uncredited_data"}) == 40
  finally:
    for s in (cons, prod):
      s.close()
    stranger.close(linger=0)
    ctx.destroy(linger=0)


def test_anything_but_control_frames_sent_to_a_producer_is_counted():
  """A ROUTER producer (the broker's scenes port) reads only control frames: malformed frames count by their codec
  reason, a well-formed message (wrong direction) as unexpected_data; a control frame that is not msgpack is
  malformed too. Credit still flows to its real consumer."""
  from shared.telemetry import metrics as tm

  reg = tm.new_registry()
  m = tm.standard_metrics(reg)
  ctx = transport.new_context()
  offset = supervisor.find_port_offset()
  prod = flow.CreditProducer(ctx, registry.endpoint("scenes", host="*", port_offset=offset), bind=True,
                             producer_id="broker", metrics=m)
  cons = flow.CreditConsumer(ctx, registry.endpoint("scenes", port_offset=offset), bind=False, window=1)
  stranger = transport.make_socket(ctx, zmq.DEALER)
  stranger.connect(registry.endpoint("scenes", port_offset=offset))
  try:
    good = codec.encode(schemas.make("Heartbeat", "stranger", 0, component="x", status="ok", time_s=0.0))
    for frames in ([b"\xc1garbage"], [msgpack.packb({"magic": "nope"})], good, [flow.CTRL + b"\xc1"]):
      transport.send_frames(stranger, frames)
    assert prod.send_fields("Heartbeat", timeout_s=5.0, component="b", status="ok", time_s=1.0)
    assert cons.recv(5.0) is not None
    deadline = time.monotonic() + 5
    while sum(prod.decode_errors.values()) < 4 and time.monotonic() < deadline:
      prod.wait_credit(0.05)
    value = lambda reason: reg.get_sample_value("drivelab_decode_errors_total", {"reason": reason})
    assert value("header_msgpack") == 2 and value("bad_magic") == 1 and value("unexpected_data") == 1
  finally:
    for s in (prod, cons):
      s.close()
    stranger.close(linger=0)
    ctx.destroy(linger=0)
