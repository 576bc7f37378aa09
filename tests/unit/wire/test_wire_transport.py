"""Transport on real ZeroMQ over 127.0.0.1: credit windows, params newest-wins, sequence gaps, CURVE, timeouts."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import zmq

from shared.wire import codec, flow, schemas, transport


@pytest.fixture()
def ctx():
  c = transport.new_context()
  yield c
  c.destroy(linger=0)


def _ep() -> str:
  """A currently free 127.0.0.1 port (so parallel test workers do not collide)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _traj(i: int) -> dict:
  return {"action": np.full((2, 3), i, np.int32), "valid": np.ones((2, 3), bool),
          "reward": np.zeros((2, 3), np.float32), "done": np.zeros((2, 3), bool)}


@pytest.mark.parametrize("work_s,hello_s,n", [(0.01, 1.0, 40), (0.12, 0.03, 8)])  # 2nd: starved producer re-hellos
def test_credit_window_bounds_in_flight_under_slow_consumer(ctx, work_s, hello_s, n):
  ep, window = _ep(), 3
  cons = flow.CreditConsumer(ctx, ep, bind=True, window=window)
  prod = flow.CreditProducer(ctx, ep, bind=False, producer_id="sim-0", epoch=1, hello_interval_s=hello_s)
  done = threading.Event()

  def produce():
    for i in range(n):
      assert prod.send_fields("Trajectory", _traj(i), timeout_s=10.0, params_version=0, env_steps=6)
    done.set()

  t = threading.Thread(target=produce)
  t.start()
  processed, worst = 0, 0
  while processed < n:
    msg = cons.recv(timeout_s=5.0)
    assert msg is not None
    assert int(msg.arrays["action"][0, 0]) == processed  # in order, nothing lost
    time.sleep(work_s)  # slow consumer: the producer could otherwise run far ahead
    worst = max(worst, prod.sent - processed)  # sent but not yet processed (this one included)
    processed += 1
  t.join(10)
  assert done.is_set() and prod.sent == n
  assert 1 <= worst <= window
  assert cons.tracker.gaps == 0 and cons.received == n
  prod.close(); cons.close()


def test_producer_without_consumer_times_out_instead_of_queueing(ctx):
  prod = flow.CreditProducer(ctx, _ep(), bind=False, producer_id="lonely", hello_interval_s=0.05)
  t0 = time.monotonic()
  assert not prod.send_fields("Trajectory", _traj(0), timeout_s=0.3, params_version=0, env_steps=6)
  assert prod.sent == 0 and time.monotonic() - t0 < 2.0
  prod.close()


def test_request_reply_and_timeout(ctx):
  ep = _ep()
  srv, cli = transport.Server(ctx, ep), transport.Client(ctx, ep)
  assert srv.recv(0.05) is None  # times out, never blocks

  def serve_one(delay_s: float):
    peer, req = srv.recv(5.0)
    time.sleep(delay_s)
    rid = req.fields["request_id"]
    srv.reply(peer, schemas.make("ActReply", "inf", rid, arrays={
        "action": np.asarray(req.arrays["obs/x"][:, 0] * 2, np.int32),
        "log_prob": np.zeros(2, np.float32)}, request_id=rid, params_version=7))

  req = lambda rid: schemas.make("ActRequest", "sim", rid, arrays={"obs/x": np.array([[1.0], [2.0]], np.float32)},
                                 request_id=rid)
  t = threading.Thread(target=serve_one, args=(0.5,)); t.start()
  assert cli.request(req(1), timeout_s=0.1) is None and cli.timeouts == 1
  t.join()
  t = threading.Thread(target=serve_one, args=(0.0,)); t.start()
  reply = cli.request(req(2), timeout_s=5.0)
  t.join()
  assert reply.fields["request_id"] == 2 and reply.arrays["action"].tolist() == [2, 4]
  assert cli.stale_replies == 1  # the late reply to request 1 was dropped
  srv.close(); cli.close()


def test_server_counts_bad_messages_without_raising(ctx):
  ep = _ep()
  srv = transport.Server(ctx, ep)
  d = transport.make_socket(ctx, zmq.DEALER); d.connect(ep)
  d.send_multipart([b"\x91\x01", b"junk"])
  d.send_multipart(codec.encode(codec.Message("Heartbeat", 1, "p", 0, 0, {"component": "x"})))
  assert srv.recv(0.5) is None
  assert dict(srv.decode_errors) == {"header_not_map": 1, "missing_field": 1}
  d.close(); srv.close()


def test_router_reply_to_vanished_peer_is_reported(ctx):
  ep = _ep()
  srv = transport.Server(ctx, ep)
  msg = schemas.make("Heartbeat", "s", 0, component="x", status="ok", time_s=0.0)
  assert srv.reply(b"no-such-peer", msg) is False and srv.lost_replies == 1
  srv.close()


def test_params_subscriber_keeps_newest_version(ctx):
  ep = _ep()
  pub = transport.ParamsPublisher(ctx, ep, sndhwm=100)
  sub = transport.ParamsSubscriber(ctx, ep, rcvhwm=100)
  time.sleep(0.3)  # PUB/SUB slow joiner
  for v in (1, 2, 3, 2):
    pub.publish(schemas.make("Params", "learner", v, arrays={"w": np.full(3, v, np.float32)}, params_version=v))
  time.sleep(0.2)
  newest = sub.poll(1.0)
  assert newest.fields["params_version"] == 3 and newest.arrays["w"].tolist() == [3.0, 3.0, 3.0]
  assert sub.dropped == 3  # 1 and 2 superseded, the late 2 is older than what we hold
  pub.publish(schemas.make("Params", "learner", 3, arrays={"w": np.zeros(3, np.float32)}, params_version=3))
  assert sub.poll(0.3) is None and sub.version == 3  # a repeat of the held version is a no-op
  pub.close(); sub.close()


def test_sequence_tracker_counts_gaps_duplicates_and_restarts():
  tr = transport.SequenceTracker()
  seqs = [(0, 0), (0, 1), (0, 4), (0, 3), (0, 5), (1, 0), (1, 2), (0, 9)]
  gaps = [tr.observe("sim", e, s) for e, s in seqs]
  assert gaps == [0, 0, 2, 0, 0, 0, 1, 0]  # 2 and 3 missing at seq 4; epoch 1 restarts; 1 missing at seq 2
  assert (tr.gaps, tr.duplicates, tr.stale) == (3, 1, 1)


def test_consumer_counts_gaps_on_the_wire(ctx):
  ep = _ep()
  cons = flow.CreditConsumer(ctx, ep, bind=True, window=8)
  prod = flow.CreditProducer(ctx, ep, producer_id="sim-1", epoch=5)

  def produce():  # the consumer grants credit only while it receives: run the two sides concurrently
    for seq in (0, 1, 5, 6):
      msg = schemas.make("Heartbeat", "sim-1", seq, epoch=5, component="x", status="ok", time_s=0.0)
      assert prod.send(msg, timeout_s=5.0)

  t = threading.Thread(target=produce)
  t.start()
  got = [cons.recv(5.0).seq for _ in range(4)]
  t.join()
  assert got == [0, 1, 5, 6] and cons.tracker.gaps == 3
  prod.close(); cons.close()


def test_curve_round_trip(ctx, tmp_path):
  keys = transport.create_curve_keys(str(tmp_path))
  auth = transport.start_authenticator(ctx, keys)
  try:
    ep = _ep()
    srv = transport.Server(ctx, ep, curve=keys)
    cli = transport.Client(ctx, ep, curve=transport.curve_keys_from_files(str(tmp_path)))
    cli.sock.send_multipart(codec.encode(schemas.make("Heartbeat", "c", 0, component="x", status="ok",
                                                      time_s=1.5)))
    peer, msg = srv.recv(5.0)
    assert msg.fields["time_s"] == 1.5
    # a client with a key the server does not trust gets nothing through
    rogue = transport.CurveKeys(keys.server_public, None, *zmq.curve_keypair(), keys.public_keys_dir)
    bad = transport.Client(ctx, ep, curve=rogue)
    bad.sock.send_multipart(codec.encode(schemas.make("Heartbeat", "r", 0, component="x", status="ok",
                                                      time_s=0.0)))
    assert srv.recv(0.5) is None
    srv.close(); cli.close(); bad.close()
  finally:
    auth.stop()


def test_metrics_hooks_count_messages_bytes_errors_and_gaps(ctx):
  from shared.telemetry import metrics as tm
  reg = tm.new_registry()
  m = tm.standard_metrics(reg)
  ep = _ep()
  cons = flow.CreditConsumer(ctx, ep, bind=True, window=4, metrics=m)
  prod = flow.CreditProducer(ctx, ep, producer_id="sim-2", epoch=1, metrics=m)
  raw = transport.make_socket(ctx, zmq.DEALER)
  raw.connect(ep)
  raw.send_multipart([codec.encode(codec.Message("Heartbeat", 1, "x", 0, 0, {}))[0], b"junk"])

  def produce():
    for seq in (0, 2):  # seq 1 "lost"
      msg = schemas.make("Trajectory", "sim-2", seq, epoch=1, arrays=_traj(seq), params_version=0, env_steps=6)
      assert prod.send(msg, timeout_s=5.0)

  t = threading.Thread(target=produce)
  t.start()
  got = [cons.recv(5.0) for _ in range(2)]
  t.join()
  assert [g.seq for g in got] == [0, 2]
  value = lambda name, **labels: reg.get_sample_value(name, labels)
  assert value("drivelab_messages_in_total", schema="Trajectory") == 2
  assert value("drivelab_messages_out_total", schema="Trajectory") == 2
  nbytes = 24 + 6 + 24 + 6  # per message: action int32 (2,3) + valid bool (2,3) + reward f32 (2,3) + done bool
  # bytes count whole messages (msgpack header + array frames), the same on both sides
  assert value("drivelab_bytes_out_total") == value("drivelab_bytes_in_total") > 2 * nbytes
  assert value("drivelab_decode_errors_total", reason="frame_count") == 1  # header says 1 frame, 2 came
  assert value("drivelab_sequence_gaps_total") == 1
  raw.close(); prod.close(); cons.close()


def test_credit_window_bounds_in_flight_when_the_producer_binds(ctx):
  """Reversed roles (broker backend): ROUTER producer binds, a slow DEALER consumer connects and grants."""
  ep, window, n = _ep(), 2, 15
  prod = flow.CreditProducer(ctx, ep, bind=True, producer_id="broker", epoch=0)
  cons = flow.CreditConsumer(ctx, ep, bind=False, window=window)
  t = threading.Thread(target=lambda: [prod.send_fields("Heartbeat", timeout_s=10.0, component="b", status="ok",
                                                        time_s=float(i)) for i in range(n)])
  t.start()
  worst = 0
  for processed in range(n):
    msg = cons.recv(timeout_s=5.0)
    assert msg.fields["time_s"] == float(processed)
    time.sleep(0.01)
    worst = max(worst, prod.sent - processed)
  t.join(10)
  assert prod.sent == n and 1 <= worst <= window
  prod.close(); cons.close()


def test_recv_frames_types_and_timeout(ctx):
  """Route frames and the header arrive as bytes, array frames as zero-copy zmq.Frame; a timeout gives None."""
  router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
  router.bind("inproc://recv-frames")
  dealer.connect("inproc://recv-frames")
  assert transport.recv_frames(router, 0.0, n_route=1) is None and transport.recv_frames(router, 0.05) is None
  small = {"action": np.arange(6, dtype=np.int32).reshape(2, 3), "valid": np.ones((2, 3), bool)}
  big = np.arange(codec.ZERO_COPY_MIN_BYTES // 4, dtype=np.float32).reshape(1, -1)
  msg = schemas.make("Trajectory", "t", 0, arrays={**small, "obs/big": big, "reward": np.zeros((2, 3), np.float32),
                                                    "done": np.zeros((2, 3), bool)}, params_version=0, env_steps=6)
  transport.send_message(dealer, msg)
  frames = transport.recv_frames(router, 5.0, n_route=1)
  assert [type(f) for f in frames] == [bytes, bytes, zmq.Frame, zmq.Frame]  # identity, header, big, packed
  out = codec.decode(frames[1:])
  np.testing.assert_array_equal(out.arrays["obs/big"], big)
  assert out.arrays["action"].tolist() == [[0, 1, 2], [3, 4, 5]]
  router.close(0); dealer.close(0)
