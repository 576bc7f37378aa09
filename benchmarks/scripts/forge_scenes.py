"""A stranger on the scenes port of a live stack (what `drivelab up --simulators 2` starts): a plain DEALER forges a
credit grant of 10^9 (15 s), then a hello declaring a window of 10^9 followed by 100 more grants (15 s). Counts the
ScenarioBatches it receives and those the two simulators receive meanwhile, and the broker's refusal counters.

  JAX_PLATFORMS=cpu .venv/bin/python benchmarks/scripts/forge_scenes.py [OUT.json]
"""
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import msgpack  # noqa: E402
import zmq  # noqa: E402

from services.cli import bench_stack, provenance  # noqa: E402
from services.common import runtime  # noqa: E402
from services.stack import supervisor  # noqa: E402
from shared.wire import flow  # noqa: E402

BIG = 10**9


def ctrl(op, n, window=None):
  d = {"op": op, "n": n} if window is None else {"op": op, "n": n, "window": window}
  return flow.CTRL + msgpack.packb(d)


def main(out: str) -> None:
  with tempfile.TemporaryDirectory(prefix="forge-") as run_dir, \
       bench_stack.running_stack(supervisor.StackConfig(simulators=2, run_dir=run_dir), 300.0) as sup:
    sims = [c for c in sup.children if c.service == "simulator"]
    broker = next(c for c in sup.children if c.service == "broker")
    scrape = lambda c: supervisor.scrape_metrics(c.metrics_port, 2.0)
    batches = lambda: {c.name: scrape(c).get('drivelab_messages_in_total{schema="ScenarioBatch"}', 0.0) for c in sims}
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
      sock.connect(f"tcp://127.0.0.1:{runtime.link_port('scenes', sup.port_offset)}")

      def count(seconds):
        n = nbytes = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
          if sock.poll(100):
            frames = sock.recv_multipart()
            if not frames[0].startswith(flow.CTRL):
              n, nbytes = n + 1, nbytes + sum(len(f) for f in frames)
        return {"batches": n, "bytes": nbytes}

      result = {"benchmark": "forge_scenes", "command": " ".join([sys.executable] + sys.argv),
                "git_commit": provenance.git_commit(), "machine": provenance.machine(), "utc": provenance.utc_now(),
                "max_consumer_window": 8, "seconds_per_phase": 15}
      before = batches()
      sock.send(ctrl("credit", BIG))
      result["forged_credit"] = count(15)
      mid = batches()
      result["simulators_during_forged_credit"] = {k: mid[k] - before[k] for k in mid}
      sock.send(ctrl("hello", BIG, BIG))
      for _ in range(100):
        sock.send(ctrl("credit", BIG))
      result["forged_hello"] = count(15)
      end = batches()
      result["simulators_during_forged_hello"] = {k: end[k] - mid[k] for k in end}
      result["broker_credit_refused"] = {k: v for k, v in scrape(broker).items() if "credit_refused" in k}
    finally:
      sock.close(linger=0)
      ctx.term()
  print(json.dumps(result, indent=1))
  provenance.write_result(out, result)


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/forge_scenes.json")
