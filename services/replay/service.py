"""Replay: Trajectory messages in (simulators, credits), ReplayBatch out (learner, credits), newest version in (PUB).

The table is shared.replay.FifoQueue (on-policy: each item is used once). One item = one Trajectory's arrays
(T, B, ...) plus its params version. Backpressure, end to end: replay takes a Trajectory off the socket only while
the queue has room, and a simulator sends only against replay's credits, so a slow learner makes simulators wait
instead of growing any queue. A sample of `sample_items` items becomes one ReplayBatch (T, sample_items * B, ...);
items older than the newest params by more than `max_staleness_versions`, or older than the learner's
`min_data_version` (a warm start's params are version 1: data acted with version 0 came from a random policy), are
masked out (valid=False), counted (dropped{what="stale_item"|"before_warm_start"}).

The expert table (shared.replay.UniformBuffer) keeps the scene loader's ExpertTrajectories for the imitation
learners. With the stack's algo "bc" (DRIVELAB_ALGO) the learner's ReplayBatches come from it instead (table
"expert": `sample_items` messages drawn uniformly, (T_log, sample_items * B, ...) with reward/done/terminated), and
the simulators' Trajectories, which BC does not use, are consumed and counted (`dropped_total{what=
"unused_trajectory"}`) so the simulators keep running.
Links: binds trajectories and expert (ROUTER consumers); connects to replay_samples (learner) and params.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import jax
import numpy as np

from services.common import runtime
from services.replay import config as config_lib
from shared.algos import registry
from shared.replay import buffers
from shared.wire import arena as arena_lib
from shared.wire import codec, flow

log = logging.getLogger(__name__)
VERSION_KEY = "params_version"


@dataclasses.dataclass
class Links:
  """Attributes: trajectories (flow.CreditConsumer, ROUTER), samples (flow.CreditProducer, DEALER),
  params (transport.ParamsSubscriber), expert (flow.CreditConsumer, ROUTER)."""

  trajectories: Any
  samples: Any
  params: Any
  expert: Any = None


def to_item(msg: codec.Message) -> dict[str, np.ndarray]:
  """Trajectory -> one queue item with a leading axis of 1."""
  item = {k: np.asarray(v)[None] for k, v in msg.arrays.items()}
  item[VERSION_KEY] = np.asarray([msg.fields["params_version"]], np.int32)
  return item


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
  """Thin shell around shared.replay.FifoQueue."""

  def __init__(self, cfg: config_lib.ReplayConfig, rt: runtime.Runtime, links: Links):
    self.cfg, self.rt, self.links = cfg, rt, links
    self.table = buffers.FifoQueue(cfg.capacity, cfg.sample_items)
    self.state: buffers.BufferState | None = None
    self.shapes: dict | None = None
    self._insert = jax.jit(self.table.insert, donate_argnums=0)
    self._sample = jax.jit(self.table.sample, donate_argnums=0)
    self.newest_version = 0
    self.inserted = 0
    self.rejected = 0
    self.stale = 0
    self.before_warm_start = 0
    self.sent = 0
    self.size = 0  # items in the table, as a plain int other threads may read
    self.expert_table = buffers.UniformBuffer(cfg.expert_capacity, cfg.sample_items)
    self.expert_state: buffers.BufferState | None = None
    self.expert_shapes: dict | None = None
    self.expert_inserted = 0
    self._expert_insert = jax.jit(self.expert_table.insert, donate_argnums=0)
    self._expert_sample = jax.jit(self.expert_table.sample, donate_argnums=0)
    self.imitation = registry.get(rt.common.algo).tables == ("expert",)
    self.min_data_version = 0  # the learner's floor (a warm start's version): older data is masked

  def _poll_params(self) -> None:
    msg = self.links.params.poll(0.0)
    if msg is not None:
      self.newest_version = int(msg.fields["params_version"])
      self.min_data_version = int(msg.fields.get("min_data_version", 0))
      self.rt.metrics.params_version.set(self.newest_version)

  def _insert_one(self, msg: codec.Message) -> None:
    item = to_item(msg)
    shapes = {k: (v.shape, v.dtype.str) for k, v in item.items()}
    if self.state is None:
      self.shapes = shapes
      self.state = self.table.init(jax.tree.map(lambda a: a[0], item), jax.random.PRNGKey(0))
    if shapes != self.shapes:  # a producer with other caps: say so once per message, keep serving
      self.rejected += 1
      self.rt.metrics.decode_error("item_shape")
      log.warning("event=reject reason=item_shape producer=%s", msg.producer)
      return
    self.state = self._insert(self.state, item)
    self.inserted += 1

  def _receive_expert(self) -> None:
    msg = self.links.expert.recv(0.0) if self.links.expert is not None else None
    if msg is None:
      return
    if msg.schema != "ExpertTrajectories":
      self.rt.metrics.decode_error("wrong_schema")
      return
    item = {k: np.asarray(v)[None] for k, v in msg.arrays.items()}
    shapes = {k: (v.shape, v.dtype.str) for k, v in item.items()}
    if self.expert_state is None:
      self.expert_shapes = shapes
      self.expert_state = self.expert_table.init(jax.tree.map(lambda a: a[0], item), jax.random.PRNGKey(1))
    if shapes != self.expert_shapes:
      self.rt.metrics.decode_error("item_shape")
      return
    self.expert_state = self._expert_insert(self.expert_state, item)
    self.expert_inserted += 1
    self.rt.metrics.queue_depth.labels(queue="expert").set(self.expert_table.size(self.expert_state))

  def _receive(self) -> None:
    if self.state is not None and not self.table.can_insert(self.state, 1):
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
    with self.rt.metrics.time("insert"):
      self._insert_one(msg)

  def _send_expert_sample(self) -> None:
    """BC: uniform draws from the expert table; the Trajectory table is drained unused (counted)."""
    if self.state is not None and self.table.can_sample(self.state) and not self.table.can_insert(self.state, 1):
      self.state, _ = self._sample(self.state)
      self.rt.dropped.labels(what="unused_trajectory").inc(self.cfg.sample_items)
    if (self.expert_state is None or not self.expert_table.can_sample(self.expert_state)
        or not self.links.samples.wait_credit(0.0)):
      return
    with self.rt.metrics.time("sample"):
      self.expert_state, sample = self._expert_sample(self.expert_state)
      arrays = to_batch_arrays(jax.tree.map(np.asarray, sample))
    ok = self.links.samples.send_fields("ReplayBatch", arrays=arrays, timeout_s=0.0, table="expert")
    self.sent += int(ok)
    if not ok:
      self.rt.dropped.labels(what="sampled_item_unsent").inc(self.cfg.sample_items)

  def _send_sample(self) -> None:
    if self.imitation:
      self._send_expert_sample()
      return
    if self.state is None or not self.table.can_sample(self.state) or not self.links.samples.wait_credit(0.0):
      return
    with self.rt.metrics.time("sample"):
      self.state, sample = self._sample(self.state)
      sample = jax.tree.map(np.asarray, sample)
      versions = sample[VERSION_KEY]
      arrays = to_batch_arrays(sample)
    early = versions < self.min_data_version  # acted before a warm start's params arrived (random version 0)
    fresh = (versions >= self.newest_version - self.cfg.max_staleness_versions) & ~early
    if not fresh.all():
      self.stale += int((~fresh & ~early).sum())
      self.rt.dropped.labels(what="stale_item").inc(int((~fresh & ~early).sum()))
      self.rt.dropped.labels(what="before_warm_start").inc(int(early.sum()))
      self.before_warm_start += int(early.sum())
      b = arrays["valid"].shape[1] // len(fresh)
      mask = np.repeat(fresh, b)[None, :]
      if type(arrays["valid"].base) is arena_lib.ArenaBuffer:  # K > 1: in place keeps the batch one frame
        np.logical_and(arrays["valid"], mask, out=arrays["valid"])
      else:  # K = 1: a view of the sampled buffer, not ours to write
        arrays["valid"] = arrays["valid"] & mask
    ok = self.links.samples.send_fields("ReplayBatch", arrays=arrays, timeout_s=0.0, table="trajectories",
                                        params_version=int(versions.min()),
                                        staleness_versions=int(self.newest_version - versions.min()))
    self.sent += int(ok)
    if not ok:  # the learner vanished between the credit and the send: those items are gone, say so
      self.rt.dropped.labels(what="sampled_item_unsent").inc(len(fresh))

  def run_once(self) -> None:
    self._poll_params()
    self._receive()
    self._receive_expert()
    self._send_sample()
    self.size = 0 if self.state is None else self.table.size(self.state)
    self.rt.metrics.queue_depth.labels(queue="trajectories").set(self.size)
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
