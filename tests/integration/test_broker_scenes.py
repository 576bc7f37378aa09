"""The broker service's scenes side on real ZeroMQ over 127.0.0.1: batches reach two consumers round robin, each
once, and go out as the very frames they came in."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.broker import config as broker_config, service as broker_service
from services.common import runtime
from services.stack import supervisor
from shared.wire import codec, schemas, transport


@pytest.fixture()
def scenes_broker(tmp_path):
  """The broker service in a thread and a zmq context: yields (common, broker, ctx)."""
  common = runtime.CommonConfig(metrics_port=0, port_offset=supervisor.find_port_offset(), run_dir=str(tmp_path))
  rt = runtime.Runtime("broker", common)
  broker = broker_service.bootstrap(broker_config.BrokerConfig(), rt)
  thread = threading.Thread(target=rt.run, args=(broker,), daemon=True)
  thread.start()
  ctx = transport.new_context()
  yield common, broker, ctx
  rt.stop.set()
  thread.join(10)
  ctx.destroy(linger=0)


def test_broker_balances_scenes_over_two_consumers_and_keeps_flow(scenes_broker):
  """The broker service's scenes side: 20 messages from a loader reach two window-1 consumers round robin, and the
  broker forwards each exactly once."""
  from shared.wire import flow

  common, broker, ctx = scenes_broker
  consumers = [flow.CreditConsumer(ctx, runtime.endpoint(common, "scenes"), bind=False, window=1) for _ in range(2)]
  prod = flow.CreditProducer(ctx, runtime.endpoint(common, "scenes_in"), producer_id="loader", epoch=0)
  counts, sent = [0, 0], 0
  try:
    deadline = time.monotonic() + 15
    while (sent < 20 or sum(counts) < 20) and time.monotonic() < deadline:
      if sent < 20 and prod.send_fields("Heartbeat", timeout_s=0.01, component="x", status="ok", time_s=1.0 * sent):
        sent += 1
      for i, c in enumerate(consumers):
        counts[i] += c.recv(0.01) is not None
    assert sum(counts) == 20 and min(counts) >= 5, counts
    assert broker.scenes_forwarded == 20
  finally:
    for s in consumers + [prod]:
      s.close()


def test_broker_forwards_scene_frames_as_they_came(scenes_broker):
  """A batch built in one wire arena is header + one frame; the broker validates it and forwards those very bytes
  in that framing (encoding it again would split the large array into its own frame and copy the small ones)."""
  from shared.wire import arena as arena_lib, flow

  common, broker, ctx = scenes_broker
  cons = flow.CreditConsumer(ctx, runtime.endpoint(common, "scenes"), bind=False, window=1)
  prod = flow.CreditProducer(ctx, runtime.endpoint(common, "scenes_in"), producer_id="loader", epoch=0)
  try:
    arena = arena_lib.Arena({"obs/flat": ((4, 16, 1024), np.float32), "action": ((4, 16), np.int32),
                             "reward": ((4, 16), np.float32), "done": ((4, 16), bool), "valid": ((4, 16), bool)})
    arena["obs/flat"][:] = np.arange(4 * 16 * 1024, dtype=np.float32).reshape(4, 16, 1024)
    arena["valid"][:] = True
    msg = schemas.make("Trajectory", "loader", 0, 0, dict(arena.arrays), params_version=0, env_steps=64)
    sent = [bytes(memoryview(f)) for f in codec.encode(msg)]
    assert len(sent) == 2 and len(codec.encode(codec.decode(sent))) == 3  # re-encoding would change the framing
    assert prod.send(msg, timeout_s=10.0)
    got = cons.recv(10.0)
    assert got is not None
    deadline = time.monotonic() + 5  # the broker counts the batch just after sending it
    while broker.scenes_forwarded < 1 and time.monotonic() < deadline:
      time.sleep(0.01)
    assert broker.scenes_forwarded == 1
    assert [bytes(memoryview(f)) for f in cons.last_frames] == sent
    np.testing.assert_array_equal(got.arrays["obs/flat"], arena["obs/flat"])
  finally:
    for s in (cons, prod):
      s.close()
