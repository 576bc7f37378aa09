"""Scene loader: scenes (synthetic or files) -> padded, batched ScenarioBatch messages -> the broker, by credit.

Scenes are made once at start (shared.scenes.source: generated, or read from a folder or shard) and cycled in
shuffled batches (`dataset.batch_iterator`); the next batch is built while the current one waits for credit, so a
batch is ready the moment a simulator asks (the papers' "next batch preloaded"). A batch that finds no credit within
`send_timeout_s` is kept and offered again: nothing accepted from disk is dropped.

With `emit_expert`, each batch's logged behaviour (closed-loop grid expert of shared.sim.rollout: actions plus
observations, rewards and episode ends, to the log's end) also goes to replay's expert table as one
ExpertTrajectories message: what the BC learner (`--algo bc`) trains on.
Links: connects to scenes_in (broker) and, with expert trajectories on, expert (replay).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterator, Sequence

import numpy as np

from services.common import runtime, scenario_codec
from services.scene_loader import config as config_lib
from shared.scenes import dataset, types
from shared.scenes import source as scene_source
from shared.wire import flow

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Links:
  """Attributes: scenes_out (flow.CreditProducer, DEALER toward the broker's scenes_in), expert_out
  (flow.CreditProducer toward replay's expert link, when expert trajectories are on)."""

  scenes_out: Any
  expert_out: Any = None


def scene_config(cfg: config_lib.SceneLoaderConfig) -> types.SceneConfig:
  return types.SceneConfig(max_objects=cfg.max_objects, max_road_points=cfg.max_road_points,
                           max_tl_lanes=cfg.max_tl_lanes)


def load_scenes(spec: str, cfg: config_lib.SceneLoaderConfig) -> tuple[list[types.Scenario], list[types.SceneMeta]]:
  """All scenes of `spec` (shared.scenes.source: "synthetic", "synthetic:N", a folder or a shard), padded to the
  configured caps: `num_synthetic` generated, or at most `limit` read (0: all). Raises SystemExit with one line."""
  num = cfg.num_synthetic if scene_source.is_synthetic(spec) else cfg.limit or None
  try:
    src = scene_source.parse(spec, num=num, seed=cfg.seed)
  except ValueError as e:
    raise SystemExit(f"scene_loader: {e}") from None
  loaded = scene_source.load(src, scene_config(cfg))
  if not loaded.scenarios:
    raise SystemExit(f"scene_loader: no loadable scenes in {spec} ({loaded.skipped} skipped)")
  return loaded.scenarios, loaded.metas


class SceneLoader:
  """Thin shell: batch_iterator -> scenario_codec -> credit send."""

  def __init__(self, cfg: config_lib.SceneLoaderConfig, rt: runtime.Runtime, links: Links,
               batches: Iterator[tuple[types.Scenario, np.ndarray]], metas: list[types.SceneMeta], expert=None):
    self.cfg, self.rt, self.links, self.batches, self.metas = cfg, rt, links, batches, metas
    self.expert = expert  # simulator Engine replaying the log with the grid expert (None: no expert output)
    self.next_batch: tuple[dict, list] | None = None
    self.sent = 0
    self.expert_sent = 0

  def _prepare(self) -> tuple[dict, list]:
    batch, idx = next(self.batches)
    meta = [{"name": self.metas[i].name, "scenario_id": self.metas[i].scenario_id} for i in idx]
    if self.expert is not None:
      self._send_expert(batch, [m["scenario_id"] for m in meta])
    return scenario_codec.scenario_to_arrays(batch), meta

  def _send_expert(self, batch: types.Scenario, scenario_ids: list[str]) -> None:
    """One ExpertTrajectories per batch; skipped and counted when replay grants no credit (scenes come first)."""
    with self.rt.metrics.time("expert"):
      self.expert.load(batch)
      rec = self.expert.expert()
    ok = self.links.expert_out.send_fields(
        "ExpertTrajectories", arrays={k: rec[k] for k in ("action", "valid", "reward", "done", "terminated")}
        | {"obs/flat": rec["obs"]},
        timeout_s=0.0, scenario_ids=scenario_ids, dt_s=0.1)
    self.expert_sent += int(ok)
    if not ok:
      self.rt.dropped.labels(what="expert_no_credit").inc()

  def run_once(self) -> None:
    if self.next_batch is None:
      with self.rt.metrics.time("prepare_batch"):
        self.next_batch = self._prepare()
    arrays, meta = self.next_batch
    ok = self.links.scenes_out.send_fields("ScenarioBatch", arrays=arrays, timeout_s=self.cfg.send_timeout_s,
                                           num_scenes=len(meta), meta=meta)
    if ok:
      self.sent += 1
      self.next_batch = None
    self.rt.metrics.queue_depth.labels(queue="scene_batches_ready").set(int(self.next_batch is not None))
    self.rt.heartbeat(sent=self.sent)

  def close(self) -> None:
    self.links.scenes_out.close()
    if self.links.expert_out is not None:
      self.links.expert_out.close()


def bootstrap(cfg: config_lib.SceneLoaderConfig, rt: runtime.Runtime, scenes=None) -> SceneLoader:
  client = rt.curve(bind=False)  # CURVE keys, or None when curve_dir is unset
  scenarios, metas = scenes if scenes is not None else load_scenes(rt.common.scenes, cfg)
  log.info("event=scenes_loaded count=%d source=%s", len(scenarios), rt.common.scenes)
  batches = dataset.batch_iterator(scenarios, cfg.batch_size, seed=cfg.seed + os.getpid(), with_indices=True)
  links = Links(scenes_out=flow.CreditProducer(rt.ctx, runtime.endpoint(rt.common, "scenes_in"), bind=False,
                                               producer_id=rt.producer_id, epoch=rt.epoch, metrics=rt.metrics,
                                               curve=client))
  expert = None
  if cfg.emit_expert:
    from shared.acting import policy_net
    from shared.acting import engine as engine_lib
    from shared.sim import env

    links.expert_out = flow.CreditProducer(rt.ctx, runtime.endpoint(rt.common, "expert"), bind=False,
                                           producer_id=rt.producer_id, epoch=rt.epoch, metrics=rt.metrics,
                                           curve=client)
    env_cfg = env.EnvConfig(max_controlled=cfg.expert_max_controlled, done_on_collision=False,
                            done_on_offroad=False)
    expert = engine_lib.Engine(env_cfg, unroll_length=1, seed=cfg.seed,
                               policy=policy_net.from_common(rt.common, env_cfg))
  return SceneLoader(cfg, rt, links, batches, metas, expert)


def main(argv: Sequence[str] | None = None) -> int:
  cfg, common = config_lib.load(argv)
  return runtime.run_main("scene_loader", cfg, common, bootstrap)
