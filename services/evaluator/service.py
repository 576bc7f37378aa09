"""Evaluator: a greedy episode with done signals off on a scene batch from the broker, with the newest params, every
`interval_s` when the params changed (every third interval regardless); the summary goes to the learner
(EvalReport, credits), to run_dir/eval/*.json and to drivelab_eval_metric{metric,split}.

Metrics are shared.sim.episode's (failure, collision, offroad, offroute, goal_reached, red_light_run,
stop_line_violation rates; progress ratio, episodic reward, ADE/FDE means) for all / moving / parked agents among
those controlled at the start; Prometheus gets drivelab_eval_metric{metric="collision", split="train/moving"}.
Links: connects to scenes (broker), params (learner PUB), eval (learner).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

import jax


from services.common import runtime, scenario_codec
from shared.acting import policy_net
from services.evaluator import config as config_lib
from shared import evaluation
from shared.sim import episode
from shared.wire import flow, transport

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Links:
  """Attributes: scenes (flow.CreditConsumer, DEALER), params (transport.ParamsSubscriber),
  reports (flow.CreditProducer toward the learner's eval link)."""

  scenes: Any
  params: Any
  reports: Any


def flatten(summary: dict) -> dict[str, float]:
  """episode.summarize output -> {"<agents>/<metric>": rate or mean} (undefined values left out)."""
  out = {}
  for agents, metrics in summary.items():
    out[f"{agents}/agents"] = float(metrics["agents"])
    for name, v in metrics.items():
      if isinstance(v, dict):
        value = v.get("rate", v.get("mean"))
        if value is not None:
          out[f"{agents}/{name}"] = float(value)
  return out


class Scorer:
  """The stack's policy network, scored greedily by shared.evaluation (done signals off) on a batch of scenes."""

  def __init__(self, env_cfg, policy: policy_net.PolicyNet, seed: int = 0):
    self.env_cfg, self.policy, self.rng = env_cfg, policy, jax.random.PRNGKey(seed)

  def evaluate(self, params, scenario) -> dict:
    """Per-agent episode metrics {field: (S, O)} of `params` (flat) on a Scenario batch (numpy, leading S)."""
    self.rng, key = jax.random.split(self.rng)
    out = evaluation.evaluate(self.policy.greedy_policy(), params, scenario, self.env_cfg, key)
    return evaluation.episode_fields(out.per_agent)


class Evaluator:
  """Thin shell: decode scenes, score them (Scorer), encode the report."""

  def __init__(self, cfg: config_lib.EvaluatorConfig, rt: runtime.Runtime, links: Links, scorer: Scorer):
    self.cfg, self.rt, self.links, self.scorer = cfg, rt, links, scorer
    self.params, self.params_version = scorer.policy.acting_params(None)  # version 0 until the learner's arrive
    self._last_eval = time.monotonic()
    self._last_version = 0
    self.reports = 0

  def _poll_params(self) -> None:
    got = runtime.take_params(self.links.params, self.rt.metrics)
    if got is not None:
      self.params, self.params_version = self.scorer.policy.acting_params(*got)

  def _evaluate(self) -> dict | None:
    msg = self.links.scenes.recv(0.5)
    if msg is None:
      return None
    scenario = scenario_codec.arrays_to_scenario(msg.arrays)
    with self.rt.metrics.time("evaluate"):
      return episode.summarize(self.scorer.evaluate(self.params, scenario))

  def _report(self, summary: dict) -> None:
    split, metrics = self.cfg.split, flatten(summary)
    for key, value in metrics.items():
      agents, name = key.split("/", 1)
      self.rt.metrics.eval_metric.labels(metric=name, split=f"{split}/{agents}").set(value)
    report = {"params_version": self.params_version, "split": split, "metrics": metrics, "summary": summary,
              "time_s": time.time()}
    out_dir = os.path.join(self.rt.common.run_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"eval_{self.reports:05d}_v{self.params_version}.json")
    with open(path + ".tmp", "w") as f:
      json.dump(report, f, indent=1)
    os.replace(path + ".tmp", path)
    self.links.reports.send_fields("EvalReport", timeout_s=1.0, params_version=self.params_version, split=split,
                                   metrics=metrics)
    self.reports += 1
    log.info("event=eval params_version=%d %s", self.params_version,
             " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("all/")))

  def _due(self) -> bool:
    """Every interval when the params changed, every third interval regardless: an unchanged policy is not
    re-scored often, and during start-up the evaluator leaves the cores to the simulators and the learner."""
    waited = time.monotonic() - self._last_eval
    changed = self.params_version != self._last_version
    return waited >= self.cfg.interval_s and (changed or waited >= 3 * self.cfg.interval_s)

  def run_once(self) -> None:
    self._poll_params()
    if not self._due():
      self.rt.stop.wait(0.1)
      return
    summary = self._evaluate()
    if summary is not None:
      self._last_eval, self._last_version = time.monotonic(), self.params_version
      self._report(summary)
    self.rt.heartbeat(reports=self.reports, params_version=self.params_version)

  def close(self) -> None:
    for link in (self.links.scenes, self.links.params, self.links.reports):
      link.close()


def bootstrap(cfg: config_lib.EvaluatorConfig, rt: runtime.Runtime, scorer: Scorer | None = None) -> Evaluator:
  client = rt.curve(bind=False)  # CURVE keys, or None when curve_dir is unset
  c, m = rt.common, rt.metrics
  links = Links(
      scenes=runtime.credit_consumer(rt, "scenes", window=1, curve=client),
      params=runtime.watch_params(rt, curve=client),
      reports=flow.CreditProducer(rt.ctx, runtime.endpoint(c, "eval"), bind=False, producer_id=rt.producer_id,
                                  epoch=rt.epoch, metrics=m, curve=client))
  links.scenes.tracker = transport.SequenceTracker()  # behind the broker: gaps are counted at the broker
  return Evaluator(cfg, rt, links, scorer if scorer is not None else make_scorer(cfg, c))


def make_scorer(cfg: config_lib.EvaluatorConfig, common: runtime.CommonConfig | None = None) -> Scorer:
  """Greedy actions of the stack's policy network, done signals off (shared.evaluation switches them off)."""
  from shared.sim import env

  env_cfg = env.EnvConfig(max_controlled=cfg.max_controlled, control_mode=cfg.control_mode,
                          done_on_collision=False, done_on_offroad=False)
  pn = policy_net.from_common(common if common is not None else runtime.CommonConfig(), env_cfg)
  return Scorer(env_cfg, pn, cfg.seed)


def main(argv: Sequence[str] | None = None) -> int:
  cfg, common = config_lib.load(argv)
  return runtime.run_main("evaluator", cfg, common, bootstrap)
