"""Simulator: scene batches in (broker, credits), Trajectory out (replay, credits), params in (learner PUB).

Per loop iteration: take the newest params; if the episode is over, load the next ScenarioBatch; run one unroll
(fused: policy inside the jitted scan; service: one ActRequest/ActReply round trip per step through the broker's
inference load balancer); send it as one Trajectory. A Trajectory that gets no credit within `send_timeout_s` is
dropped and counted (`drivelab_dropped_total{what="trajectory_no_credit"}`; `trajectory_stopping` for the one a
stopping simulator abandons), never queued without bound.

Links: connects to scenes (broker), act (broker, service mode), trajectories (replay), params (learner).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Sequence

import numpy as np

from services.common import runtime, scenario_codec
from shared.acting import policy_net
from services.simulator import config as config_lib
from shared.acting import engine as engine_lib
from shared.wire import flow, schemas, transport

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Links:
  """The sockets a simulator uses (tests pass their own)."""

  scenes: Any  # flow.CreditConsumer (DEALER) on the broker's scene backend
  trajectories: Any  # flow.CreditProducer (DEALER) toward replay
  params: Any  # transport.ParamsSubscriber
  act: Any = None  # transport.Client toward the broker's inference frontend (service mode)


def env_config(cfg: config_lib.SimulatorConfig):
  from shared.sim import env

  return env.EnvConfig(max_controlled=cfg.max_controlled, control_mode=cfg.control_mode)


def trajectory_arrays(rec: dict[str, np.ndarray], bootstrap_feat) -> dict[str, np.ndarray]:
  """An unroll's records (engine keys, (T, B, ...)) -> the Trajectory message's arrays; `bootstrap_feat` (B, F) is
  s_T, the features after the last step (the engine's `feat` right after the unroll), which the learner's value
  bootstraps from; terminated steps do not bootstrap."""
  arrays = {"obs/flat": rec["obs"], "action": rec["action"], "reward": rec["reward"], "done": rec["done"],
            "valid": rec["valid"], "log_prob": rec["log_prob"], "value": rec["value"]}
  if "terminated" in rec:
    arrays.update({"terminated": rec["terminated"], "bootstrap_obs/flat": np.asarray(bootstrap_feat)[None]})
  return arrays


class Simulator:
  """Thin shell: decode, call the engine (shared.sim), encode."""

  def __init__(self, cfg: config_lib.SimulatorConfig, rt: runtime.Runtime, links: Links, engine):
    self.cfg, self.rt, self.links, self.engine = cfg, rt, links, engine
    self.params, self.params_version = engine.policy.acting_params(None)  # version 0 until the learner's arrive
    self.newest_version = 0
    self.loaded = False
    self.request_id = 0
    self.sent = 0
    self.dropped = 0

  # PARAMS
  def _poll_params(self) -> None:
    got = runtime.take_params(self.links.params, self.rt.metrics)
    if got is not None:
      self.params, self.params_version = self.engine.policy.acting_params(*got)
      if self.params_version != got[1]:
        log.warning("event=params_mismatch version=%d action=version_0", got[1])
      log.debug("event=params version=%d", self.params_version)

  # SCENES
  def _load_next(self) -> bool:
    msg = self.links.scenes.recv(timeout_s=0.5)
    if msg is None:
      return False
    with self.rt.metrics.time("load_scenes"):
      self.engine.load(scenario_codec.arrays_to_scenario(msg.arrays))
    self.links.scenes.ack()  # hand the credit back now, so the next batch arrives while this one runs
    self.loaded = True
    return True

  # ACT
  def _unroll_service(self, params: dict) -> dict[str, np.ndarray]:
    records = []
    for _ in range(self.cfg.unroll_length):
      feat, mask = np.asarray(self.engine.feat), self.engine.acting()
      reply = None
      while reply is None and not self.rt.stop.is_set():
        self.request_id += 1
        req = schemas.make("ActRequest", self.rt.producer_id, self.request_id, self.rt.epoch,
                           arrays={"obs/flat": feat, "mask": mask}, request_id=self.request_id,
                           params_version=self.params_version)
        reply = self.links.act.request(req, self.cfg.act_timeout_s)
      if reply is None:
        break
      self.newest_version = max(self.newest_version, int(reply.fields["params_version"]))
      records.append(self.engine.step(reply.arrays["action"], reply.arrays["log_prob"],
                                      reply.arrays.get("value", np.zeros(len(feat), np.float32))))
    if len(records) < self.cfg.unroll_length:  # stopping mid-unroll: a short Trajectory would not fit replay
      return {}
    return engine_lib.stack_records(records)

  def _unroll(self) -> dict[str, np.ndarray]:
    if self.cfg.mode == "service":
      return self._unroll_service(self.params)
    return self.engine.collect(self.params)

  # TRAJECTORY
  def _send(self, rec: dict[str, np.ndarray]) -> None:
    steps = int(rec["valid"].sum())
    agents = max(int(rec["valid"].any(0).sum()), 1)
    arrays = trajectory_arrays(rec, self.engine.feat)
    version = self.params_version if self.cfg.mode == "fused" else self.newest_version
    deadline = time.monotonic() + self.cfg.send_timeout_s
    ok = False
    while not ok and time.monotonic() < deadline and not self.rt.stop.is_set():  # short waits: SIGTERM stays prompt
      ok = self.links.trajectories.send_fields(
          "Trajectory", arrays=arrays, timeout_s=0.25, params_version=version, env_steps=steps,
          episode_return_mean=float(rec["reward"].sum() / agents), dt_s=0.1)
    if ok:
      self.sent += 1
      self.rt.metrics.agent_steps.inc(steps)
    else:
      reason = "stopping" if self.rt.stop.is_set() else "no_credit"
      self.dropped += 1
      self.rt.dropped.labels(what=f"trajectory_{reason}").inc()
      log.warning("event=trajectory_dropped reason=%s steps=%d", reason, steps)

  def run_once(self) -> None:
    self._poll_params()
    if not self.loaded or self.engine.episode_over():
      self.loaded = False
      if not self._load_next():
        return
    with self.rt.metrics.time("unroll"):
      rec = self._unroll()
    if rec:
      self._send(rec)
    self.rt.metrics.params_version_lag.set(max(self.newest_version - self.params_version, 0))
    self.rt.heartbeat(sent=self.sent, dropped=self.dropped, params_version=self.params_version)

  def close(self) -> None:
    for link in (self.links.scenes, self.links.trajectories, self.links.params, self.links.act):
      if link is not None:
        link.close()


def bootstrap(cfg: config_lib.SimulatorConfig, rt: runtime.Runtime, engine=None) -> Simulator:
  client = rt.curve(bind=False)  # CURVE keys, or None when curve_dir is unset
  c, m = rt.common, rt.metrics
  links = Links(
      scenes=runtime.credit_consumer(rt, "scenes", window=cfg.scene_window, curve=client),
      trajectories=flow.CreditProducer(rt.ctx, runtime.endpoint(c, "trajectories"), bind=False,
                                       producer_id=rt.producer_id, epoch=rt.epoch, metrics=m, curve=client),
      params=runtime.watch_params(rt, curve=client),
      act=(transport.Client(rt.ctx, runtime.endpoint(c, "act"), metrics=m, curve=client)
           if cfg.mode == "service" else None))
  # Behind the broker each simulator sees only a share of a loader's sequence; gaps are counted at the broker.
  links.scenes.tracker = transport.SequenceTracker()
  if engine is None:
    env_cfg = env_config(cfg)
    engine = engine_lib.Engine(env_cfg, cfg.unroll_length, seed=cfg.seed + os.getpid(),
                               policy=policy_net.from_common(c, env_cfg))
  return Simulator(cfg, rt, links, engine)


def main(argv: Sequence[str] | None = None) -> int:
  cfg, common = config_lib.load(argv)
  return runtime.run_main("simulator", cfg, common, bootstrap)
