"""Learner: ReplayBatch in (replay, credits) -> one pure `update_step` -> Params out (PUB, versioned).

The process only pulls data, calls `update_step(state, batch) -> (state, metrics)` and publishes (STYLE.md 2).
Until the PPO issue lands the algorithm is `services.learner.policy` (PPO-clip on a linear policy); version 0 is
zeros everywhere, and every update publishes version + 1. Params are also re-published every
`publish_interval_s` (PUB/SUB drops what a subscriber missed while joining; the newest version wins). Checkpoints
are atomic (write, then rename) and a restart resumes from them. EvalReports from the evaluator are logged and
already exported by the evaluator itself.

Links: binds replay_samples (ROUTER consumer), params (PUB) and eval (ROUTER consumer).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from services.common import runtime
from services.learner import config as config_lib
from services.learner import policy
from shared.sim import actions
from shared.wire import codec, flow, schemas, transport

log = logging.getLogger(__name__)
BATCH_KEYS = {"obs": "obs/flat", "action": "action", "reward": "reward", "done": "done", "valid": "valid",
              "log_prob": "log_prob", "value": "value"}


@dataclasses.dataclass
class Links:
  """Attributes: samples (flow.CreditConsumer, ROUTER), params (transport.ParamsPublisher),
  eval_in (flow.CreditConsumer, ROUTER)."""

  samples: Any
  params: Any
  eval_in: Any


def checkpoint_path(run_dir: str) -> str:
  return os.path.join(run_dir, "checkpoints", "params.npz")


def save_checkpoint(path: str, params: dict, version: int) -> None:
  """Atomic: a reader sees the old file or the new one, never half of one."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, __version__=np.int64(version), **{k: np.asarray(v) for k, v in params.items()})
  os.replace(tmp, path)


def load_checkpoint(path: str) -> tuple[dict, int]:
  with np.load(path, allow_pickle=False) as z:
    return {k: np.asarray(z[k]) for k in z.files if k != "__version__"}, int(z["__version__"])


class Learner:
  """Thin shell around `policy.make_update_step`."""

  def __init__(self, cfg: config_lib.LearnerConfig, rt: runtime.Runtime, links: Links):
    self.cfg, self.rt, self.links = cfg, rt, links
    self.hp = policy.LearnerHyper(learning_rate=cfg.learning_rate, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda)
    self.update_step = policy.make_update_step(self.hp)
    self.state: policy.TrainingState | None = None
    self.version = 0
    self.seq = 0
    self._last_publish = 0.0
    self.num_actions = actions.num_actions(actions.ActionGridConfig())
    self.ckpt = checkpoint_path(rt.common.run_dir)
    if cfg.resume and os.path.exists(self.ckpt):
      params, self.version = load_checkpoint(self.ckpt)
      self.state = policy.init_state(params, self.hp)
      log.info("event=resume version=%d path=%s", self.version, self.ckpt)

  def _batch(self, msg: codec.Message) -> dict[str, np.ndarray]:
    return {k: np.asarray(msg.arrays[name]) for k, name in BATCH_KEYS.items()}

  def _publish(self) -> None:
    if self.state is None:
      return
    self._last_publish = time.monotonic()
    params = {k: np.asarray(v) for k, v in self.state.params.items()}
    self.seq += 1
    msg = schemas.make("Params", self.rt.producer_id, self.seq, self.rt.epoch, arrays=params,
                       params_version=self.version, learner_step=int(self.state.step), algo=self.rt.common.algo)
    self.links.params.publish(msg)
    self.rt.metrics.params_version.set(self.version)

  def _learn(self, msg: codec.Message) -> None:
    batch = self._batch(msg)
    if self.state is None:
      self.state = policy.init_state(policy.init_params(batch["obs"].shape[-1], self.num_actions), self.hp)
    with self.rt.metrics.time("update"):
      self.state, metrics = self.update_step(self.state, batch)
      metrics = jax.tree.map(float, metrics)
    self.version += 1
    for name, value in metrics.items():
      self.rt.metrics.learner_loss.labels(name=name).set(value)
    self.rt.metrics.params_version_lag.set(self.version - int(msg.fields.get("params_version", self.version)))
    self._publish()
    if self.cfg.checkpoint_every and self.version % self.cfg.checkpoint_every == 0:
      save_checkpoint(self.ckpt, self.state.params, self.version)

  def _eval_report(self, msg: codec.Message) -> None:
    """Logs the report; its numbers are "<agents>/<metric>" keys (see services.evaluator.service.flatten)."""
    numbers = {k: v for k, v in msg.fields["metrics"].items()
               if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    log.info("event=eval_report params_version=%d split=%s %s", msg.fields["params_version"], msg.fields["split"],
             " ".join(f"{k}={v:.4g}" for k, v in numbers.items() if k.startswith("all/")))

  def run_once(self) -> None:
    msg = self.links.samples.recv(0.05)
    if msg is not None and msg.schema == "ReplayBatch":
      self._learn(msg)
    elif msg is not None:
      self.rt.metrics.decode_error("wrong_schema")
    report = self.links.eval_in.recv(0.0)
    if report is not None and report.schema == "EvalReport":
      self._eval_report(report)
    if time.monotonic() - self._last_publish > self.cfg.publish_interval_s:
      self._publish()
    self.rt.heartbeat(params_version=self.version)

  def close(self) -> None:
    if self.state is not None and self.cfg.checkpoint_every:
      save_checkpoint(self.ckpt, self.state.params, self.version)
    for link in (self.links.samples, self.links.params, self.links.eval_in):
      link.close()


def bootstrap(cfg: config_lib.LearnerConfig, rt: runtime.Runtime) -> Learner:
  server = rt.curve(bind=True)  # CURVE keys, or None when curve_dir is unset
  c, m = rt.common, rt.metrics
  links = Links(
      samples=flow.CreditConsumer(rt.ctx, runtime.endpoint(c, "replay_samples", bind=True), bind=True,
                                  window=cfg.window, metrics=m, curve=server),
      params=transport.ParamsPublisher(rt.ctx, runtime.endpoint(c, "params", bind=True), metrics=m, curve=server),
      eval_in=flow.CreditConsumer(rt.ctx, runtime.endpoint(c, "eval", bind=True), bind=True, window=2, metrics=m,
                                  curve=server))
  return Learner(cfg, rt, links)


def main(argv: Sequence[str] | None = None) -> int:
  cfg, common = config_lib.load(argv)
  return runtime.run_main("learner", cfg, common, bootstrap)
