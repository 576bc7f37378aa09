"""Learner: ReplayBatch in (replay, credits) -> one pure `update(state, batch)` -> Params out (PUB, versioned).

`--algo NAME` (a common setting: replay keeps the tables that algorithm declares) picks a bundle of
shared.algos.registry, bound to the stack's policy network by services.learner.algo; its update is the fused path's
own. PPO takes V-trace targets by default (the simulators act with params that lag the learner's); BC clones the
scene loaders' logged expert actions from replay's expert table.
Versions: version 0 is the params every process computes on its own (`PolicyNet.init_flat`); every update publishes
version + 1, flattened to "/"-joined keys, and params are re-published every `publish_interval_s` (the newest
version wins). Checkpoints (shared.training.checkpoint) hold {"train": state} under run_dir/checkpoints/<algo>,
every `checkpoint_every` updates and at shutdown; a restart resumes from the newest, bit for bit.
run_dir/policy.json says how to rebuild the network (what `drivelab eval` reads).
Fine-tuning: `--init-from DIR` (a BC run) starts from that checkpoint's params as version 1, published with
min_data_version 1, so replay masks data acted with the random version 0 (dropped{what="before_warm_start"});
`--ref-kl-coef C` adds C * KL(pi_init || pi) for a bundle with a reference policy (PPO).
Scale-out: `--num-processes N --process-id I --coordinator HOST:PORT` joins N learners (each with its own replay)
through jax.distributed; the update then averages gradients over every process's devices.
Metrics: drivelab_learner_loss{name}, params_version, params_version_lag, drivelab_learner_updates_total,
drivelab_learner_samples_total, drivelab_learner_updates_per_second.
Links: binds replay_samples (ROUTER consumer), params (PUB) and eval (ROUTER consumer).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Sequence

import jax
import prometheus_client

from services.common import runtime
from shared.acting import policy_net
from services.learner import algo as algo_lib
from shared.training import checkpoint
from services.learner import config as config_lib
from shared.wire import codec, schemas, transport

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Links:
  """Attributes: samples (flow.CreditConsumer, ROUTER), params (transport.ParamsPublisher),
  eval_in (flow.CreditConsumer, ROUTER)."""

  samples: Any
  params: Any
  eval_in: Any


def checkpoint_dir(run_dir: str, algo: str) -> str:
  return os.path.join(run_dir, "checkpoints", algo)


class Learner:
  """Thin shell around `LearnerAlgo.update`."""

  def __init__(self, cfg: config_lib.LearnerConfig, rt: runtime.Runtime, links: Links,
               policy: policy_net.PolicyNet | None = None):
    self.cfg, self.rt, self.links = cfg, rt, links
    self.algo_name = rt.common.algo
    self.algo = algo_lib.make(policy or policy_net.from_common(rt.common), self.algo_name, cfg)
    self.ckpt_dir = checkpoint_dir(rt.common.run_dir, self.algo_name)
    self.state = self.algo.init_state()
    self.version, self.samples, self.seq, self._last_publish = 0, 0, 0, 0.0
    self.min_data_version = 0  # data collected with older params is not learned from (replay masks it)
    self.published: dict | None = None  # the flat params last published (host numpy)
    self._metrics()
    if cfg.init_from:
      init = self._init_params(cfg.init_from)
      self.state = self.algo.place(self.algo.algorithm.with_policy_params(self.state, init))
      self.version = self.min_data_version = 1  # not version 0, which every process computes (random) on its own
      if cfg.ref_kl_coef > 0:  # the frozen reference of the KL term: the params fine-tuning starts from
        self.algo = dataclasses.replace(self.algo, reference=jax.tree.map(jax.numpy.asarray, init))
    elif cfg.ref_kl_coef > 0:
      raise SystemExit("learner: ref_kl_coef > 0 needs init_from (the reference policy's checkpoint)")
    if cfg.resume:
      self._resume()
    checkpoint.write_json(os.path.join(rt.common.run_dir, "policy.json"),
                          dict(policy_net.policy_meta(self.algo.policy), algo=self.algo_name, source="stack"))

  def _init_params(self, where: str) -> Any:
    """The params of the newest checkpoint in `where` (checkpoint.policy_params_from); SystemExit with one line."""
    try:
      params, path, version = checkpoint.policy_params_from(where, algo_lib.host(self.algo.policy_params(self.state)))
    except ValueError as e:
      raise SystemExit(f"learner: init_from {e} ({self.rt.common.net}, {self.rt.common.preset})") from None
    log.info("event=init_from dir=%s version=%d ref_kl_coef=%g", path, version, self.cfg.ref_kl_coef)
    return params

  def _metrics(self) -> None:
    r = self.rt.registry
    self.updates_total = prometheus_client.Counter("drivelab_learner_updates", "Learner updates done", registry=r)
    self.samples_total = prometheus_client.Counter("drivelab_learner_samples", "Valid samples learned from",
                                                   registry=r)
    self.updates_per_s = prometheus_client.Gauge("drivelab_learner_updates_per_second",
                                                 "Updates per second (moving average)", registry=r)
    self._rate, self._last_update_s = 0.0, None

  def _resume(self) -> None:
    restored = checkpoint.restore_latest(self.ckpt_dir, algo_lib.host({"train": self.state}))
    if restored is None:
      return
    tree, self.version, extra = restored
    self.state = self.algo.place(tree["train"])
    self.samples = int(extra.get("samples", 0))
    self.min_data_version = int(extra.get("min_data_version", 0))
    log.info("event=resume version=%d step=%d dir=%s", self.version, int(tree["train"].step), self.ckpt_dir)

  def save(self) -> None:
    # Every replica saves (the states are identical), so each restarts from its own run_dir; on a shared run_dir
    # the atomic rename makes concurrent writes of the same checkpoint harmless.
    checkpoint.save(self.ckpt_dir, algo_lib.host({"train": self.state}), self.version,
                    extra={"samples": self.samples, "algo": self.algo_name,
                           "min_data_version": self.min_data_version}, keep=self.cfg.keep_checkpoints)

  def params_flat(self) -> dict:
    return policy_net.to_flat(algo_lib.host(self.algo.policy_params(self.state)))

  def _publish(self) -> None:
    self._last_publish = time.monotonic()
    self.seq += 1
    # A host copy the next (donating) update cannot delete: other threads (tests, tools) read this, never state.
    self.published = self.params_flat()
    msg = schemas.make("Params", self.rt.producer_id, self.seq, self.rt.epoch, arrays=self.published,
                       params_version=self.version, learner_step=int(algo_lib.host(self.state.step)),
                       algo=self.algo_name, min_data_version=self.min_data_version)
    self.links.params.publish(msg)
    self.rt.metrics.params_version.set(self.version)

  def learn(self, msg: codec.Message) -> dict[str, float]:
    """One update on one ReplayBatch; returns its metrics (floats)."""
    batch = self.algo.prepare(msg.arrays)
    with self.rt.metrics.time("update"):
      self.state, metrics = self.algo.update(self.state, batch)
      metrics = {k: float(v) for k, v in algo_lib.host(metrics).items()}
    self.version += 1
    self.samples += int(metrics.get("samples", 0))
    for name, value in metrics.items():
      self.rt.metrics.learner_loss.labels(name=name).set(value)
    self.updates_total.inc()
    self.samples_total.inc(metrics.get("samples", 0))
    now = time.monotonic()
    if self._last_update_s is not None:  # exponential moving average of the update rate
      self._rate = 0.8 * self._rate + 0.2 / max(now - self._last_update_s, 1e-6)
      self.updates_per_s.set(self._rate)
    self._last_update_s = now
    self.rt.metrics.params_version_lag.set(self.version - int(msg.fields.get("params_version", self.version)))
    self._publish()
    if self.cfg.checkpoint_every and self.version % self.cfg.checkpoint_every == 0:
      self.save()
    return metrics

  def _eval_report(self, msg: codec.Message) -> None:
    """Logs the report; its numbers are "<agents>/<metric>" keys (see services.evaluator.service.flatten)."""
    numbers = {k: v for k, v in msg.fields["metrics"].items()
               if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    log.info("event=eval_report params_version=%d split=%s %s", msg.fields["params_version"], msg.fields["split"],
             " ".join(f"{k}={v:.4g}" for k, v in numbers.items() if k.startswith("all/")))

  def run_once(self) -> None:
    msg = self.links.samples.recv(0.05)
    if msg is not None and msg.schema == "ReplayBatch":
      metrics = self.learn(msg)
      log.debug("event=update version=%d %s", self.version, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    elif msg is not None:
      self.rt.metrics.decode_error("wrong_schema")
    report = self.links.eval_in.recv(0.0)
    if report is not None and report.schema == "EvalReport":
      self._eval_report(report)
    if time.monotonic() - self._last_publish > self.cfg.publish_interval_s:
      self._publish()
    self.rt.heartbeat(params_version=self.version, updates_per_s=f"{self._rate:.2f}")

  def close(self) -> None:
    log.info("event=final params_version=%d samples=%d algo=%s", self.version, self.samples, self.algo_name)
    if self.cfg.checkpoint_every and self.version > self.min_data_version:  # an update was done
      self.save()
    for link in (self.links.samples, self.links.params, self.links.eval_in):
      link.close()


def bootstrap(cfg: config_lib.LearnerConfig, rt: runtime.Runtime) -> Learner:
  algo_lib.join(cfg)  # the other learner replicas, before any JAX computation
  server = rt.curve(bind=True)  # CURVE keys, or None when curve_dir is unset
  c, m = rt.common, rt.metrics
  links = Links(
      samples=runtime.credit_consumer(rt, "replay_samples", window=cfg.window, bind=True, curve=server),
      params=transport.ParamsPublisher(rt.ctx, runtime.endpoint(c, "params", bind=True), metrics=m, curve=server),
      eval_in=runtime.credit_consumer(rt, "eval", window=2, bind=True, curve=server))
  return Learner(cfg, rt, links)


def main(argv: Sequence[str] | None = None) -> int:
  cfg, common = config_lib.load(argv)
  return runtime.run_main("learner", cfg, common, bootstrap)
