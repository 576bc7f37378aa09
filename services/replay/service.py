"""Replay: Trajectory messages in (simulators, credits), ReplayBatch out (learner, credits), newest version in (PUB).

The tables are the algorithm's (shared.algos.registry: `replay`, the stack's DRIVELAB_ALGO), host-side numpy
(shared.replay.tables): "onpolicy" (FIFO, each Trajectory used once), "offpolicy" (uniform ring over Trajectories),
"expert" (uniform ring over the scene loaders' ExpertTrajectories; kept whatever the algorithm, so expert data that
arrives is never lost, and served when the algorithm declares it). One ReplayBatch takes each declared table's share
of `sample_items` items, (T, K * B, ...) per table side by side; with one table its arrays keep their names, with
several each is prefixed "<table>/". The wire's `table` field names what it holds ("trajectories" for onpolicy).
Backpressure, end to end: replay takes a Trajectory off the socket only while the FIFO has room, and a simulator
sends only against replay's credits, so a slow learner makes simulators wait instead of growing any queue.
Trajectory items older than the newest params by more than `max_staleness_versions` (onpolicy), or older than the
learner's `min_data_version` (a warm start's params are version 1: data acted with version 0 came from a random
policy), are masked out (valid=False) and counted (dropped{what="stale_item"|"before_warm_start"}). Trajectories
of an algorithm that keeps none (BC) are consumed and counted (dropped{what="unused_trajectory"}), so the
simulators keep running.
Links: binds trajectories and expert (ROUTER consumers); connects to replay_samples (learner) and params.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from services.common import runtime
from services.replay import config as config_lib
from shared.algos import api, registry
from shared.replay import tables as tables_lib
from shared.wire import arena as arena_lib
from shared.wire import codec, flow

log = logging.getLogger(__name__)
VERSION_KEY = tables_lib.VERSION_KEY
WIRE_NAME = {"onpolicy": "trajectories", "offpolicy": "offpolicy", "expert": "expert"}
TRAJECTORY_TABLES = ("onpolicy", "offpolicy")


@dataclasses.dataclass
class Links:
  """Attributes: trajectories (flow.CreditConsumer, ROUTER), samples (flow.CreditProducer, DEALER),
  params (transport.ParamsSubscriber), expert (flow.CreditConsumer, ROUTER)."""

  trajectories: Any
  samples: Any
  params: Any
  expert: Any = None


def to_batch_arrays(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """(K, T, B, ...) per array -> (T, K * B, ...): the K trajectories side by side. For K > 1 that is a copy, made
  into one wire arena (shared.wire.arena) so the ReplayBatch goes out as one zero-copy frame; for K = 1, views."""
  sample = {k: np.asarray(v) for k, v in sample.items() if k != VERSION_KEY}
  shape = lambda v: (v.shape[1], v.shape[0] * v.shape[2]) + v.shape[3:]
  if not sample or next(iter(sample.values())).shape[0] == 1:
    return {k: v.reshape(shape(v)) for k, v in sample.items()}
  arena = arena_lib.Arena({k: (shape(v), v.dtype) for k, v in sample.items()})
  for k, v in sample.items():
    out = arena[k]
    np.copyto(out.reshape((v.shape[1], v.shape[0]) + v.shape[2:]), np.swapaxes(v, 0, 1))
  return dict(arena.arrays)


class Replay:
  """Thin shell around the algorithm's shared.replay.tables."""

  def __init__(self, cfg: config_lib.ReplayConfig, rt: runtime.Runtime, links: Links):
    self.cfg, self.rt, self.links = cfg, rt, links
    draws = registry.get(rt.common.algo).replay
    self.sampler = tables_lib.Sampler(draws, cfg.sample_items)
    kept = tuple(draws) + (() if "expert" in self.sampler.counts else (api.Draw("expert"),))
    self.tables = tables_lib.make_tables(kept, cfg.capacity, cfg.expert_capacity)
    self.fifo = self.tables.get("onpolicy")
    self.newest_version, self.min_data_version = 0, 0  # the learner's newest params and its floor (warm start)
    self.inserted = self.rejected = self.stale = self.before_warm_start = self.sent = self.expert_inserted = 0
    self.size = 0  # items in the trajectory tables, as a plain int other threads may read

  def _poll_params(self) -> None:
    msg = self.links.params.poll(0.0)
    if msg is not None:
      self.newest_version = int(msg.fields["params_version"])
      self.min_data_version = int(msg.fields.get("min_data_version", 0))
      self.rt.metrics.params_version.set(self.newest_version)

  def _insert(self, names: Sequence[str], msg: codec.Message, item: dict) -> bool:
    """`item` into every table of `names`, or into none when it does not fit them (said once per message)."""
    if not all(self.tables[n].accepts(item) for n in names):
      self.rejected += 1
      self.rt.metrics.decode_error("item_shape")
      log.warning("event=reject reason=item_shape producer=%s", msg.producer)
      return False
    for n in names:
      self.tables[n].insert(item)
    return True

  def _receive(self) -> None:
    if self.fifo is not None and not self.fifo.can_insert():
      # Full: hold the credit back so the simulators wait, and block (briefly) on what frees room, the learner's
      # next credit, rather than spin: a spinning replay took most of a core from the learner (bench stack).
      self.links.samples.wait_credit(0.02)
      return
    msg = self.links.trajectories.recv(0.02)
    if msg is None:
      return
    if msg.schema != "Trajectory":
      self.rt.metrics.decode_error("wrong_schema")
      return
    names = [n for n in TRAJECTORY_TABLES if n in self.tables]
    if not names:  # the algorithm learns from no Trajectory
      self.rt.dropped.labels(what="unused_trajectory").inc()
      return
    with self.rt.metrics.time("insert"):
      item = dict(msg.arrays, **{VERSION_KEY: np.int32(msg.fields["params_version"])})
      self.inserted += int(self._insert(names, msg, item))

  def _receive_expert(self) -> None:
    msg = self.links.expert.recv(0.0) if self.links.expert is not None else None
    if msg is None:
      return
    if msg.schema != "ExpertTrajectories":
      self.rt.metrics.decode_error("wrong_schema")
      return
    self.expert_inserted += int(self._insert(["expert"], msg, dict(msg.arrays)))

  def _mask_old(self, name: str, arrays: dict, versions: np.ndarray) -> None:
    """valid = False (in place when the batch is one arena) for items acted before the warm start or too stale."""
    early = versions < self.min_data_version  # acted before a warm start's params arrived (random version 0)
    fresh = ~early
    if name == "onpolicy":
      fresh &= versions >= self.newest_version - self.cfg.max_staleness_versions
    if fresh.all():
      return
    self.stale += int((~fresh & ~early).sum())
    self.rt.dropped.labels(what="stale_item").inc(int((~fresh & ~early).sum()))
    self.rt.dropped.labels(what="before_warm_start").inc(int(early.sum()))
    self.before_warm_start += int(early.sum())
    mask = np.repeat(fresh, arrays["valid"].shape[1] // len(fresh))[None, :]
    if type(arrays["valid"].base) is arena_lib.ArenaBuffer:  # K > 1: in place keeps the batch one frame
      np.logical_and(arrays["valid"], mask, out=arrays["valid"])
    else:  # K = 1: a view of the sampled copy
      arrays["valid"] = arrays["valid"] & mask

  def _send_sample(self) -> None:
    if not self.sampler.ready(self.tables) or not self.links.samples.wait_credit(0.0):
      return
    fields, out, oldest = {}, {}, None
    with self.rt.metrics.time("sample"):
      parts = self.sampler.sample(self.tables)
      for name, part in parts.items():
        arrays = to_batch_arrays(part)
        if name in TRAJECTORY_TABLES:
          self._mask_old(name, arrays, part[VERSION_KEY])
          oldest = int(part[VERSION_KEY].min()) if oldest is None else min(oldest, int(part[VERSION_KEY].min()))
        out.update(arrays if len(parts) == 1 else {f"{name}/{k}": v for k, v in arrays.items()})
    if oldest is not None:
      fields = {"params_version": oldest, "staleness_versions": int(self.newest_version - oldest)}
    table = "+".join(WIRE_NAME[n] for n in parts)
    ok = self.links.samples.send_fields("ReplayBatch", arrays=out, timeout_s=0.0, table=table, **fields)
    self.sent += int(ok)
    if not ok:  # the learner vanished between the credit and the send: those items are gone, say so
      self.rt.dropped.labels(what="sampled_item_unsent").inc(sum(self.sampler.counts.values()))

  def run_once(self) -> None:
    self._poll_params()
    self._receive()
    self._receive_expert()
    self._send_sample()
    self.size = sum(self.tables[n].size for n in TRAJECTORY_TABLES if n in self.tables)
    for name, table in self.tables.items():
      self.rt.metrics.queue_depth.labels(queue=WIRE_NAME[name]).set(table.size)
    self.rt.heartbeat(inserted=self.inserted, sent=self.sent, size=self.size, stale=self.stale,
                      before_warm_start=self.before_warm_start)

  def close(self) -> None:
    for link in (self.links.trajectories, self.links.samples, self.links.params, self.links.expert):
      link.close()


def bootstrap(cfg: config_lib.ReplayConfig, rt: runtime.Runtime) -> Replay:
  server = rt.curve(bind=True)  # CURVE keys, or None when curve_dir is unset
  client = rt.curve(bind=False)
  c, m = rt.common, rt.metrics
  links = Links(
      trajectories=runtime.credit_consumer(rt, "trajectories", window=cfg.window, bind=True, curve=server),
      samples=flow.CreditProducer(rt.ctx, runtime.endpoint(c, "replay_samples"), bind=False,
                                  producer_id=rt.producer_id, epoch=rt.epoch, metrics=m, curve=client),
      params=runtime.watch_params(rt, curve=client),
      expert=runtime.credit_consumer(rt, "expert", window=2, bind=True, curve=server))
  return Replay(cfg, rt, links)


def main(argv: Sequence[str] | None = None) -> int:
  cfg, common = config_lib.load(argv)
  return runtime.run_main("replay", cfg, common, bootstrap)
