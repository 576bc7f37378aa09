"""Scores of a policy as the reports and benchmarks print them: paper 002's Table 2 columns per split.

  rows = summary_rows(per_agent, ("all", "moving"))        # per-agent episode metrics -> {split: row}
  rows = eval_rows(agent, params, scenes, env_cfg, seed)    # greedy evaluation (done signals off), then the rows

A row: failure, collision, offroad, offroute, red_light_run, stop_line_violation, goal_reached (rates), the failure
attribution rates (episode.ATTRIBUTION_METRICS), agents, progress_ratio and episodic_reward (means), and the failure
rate's 95% Wilson interval `failure_ci95`. EVAL_KEYS are the ones a training history records per evaluation.
"""

from __future__ import annotations

EVAL_KEYS = ("goal_reached", "collision", "offroad", "offroute", "failure", "progress_ratio")


def _row(a: dict) -> dict:
  """One split of episode.summarize -> paper 002's Table 2 columns, goal, progress ratio, the failure attribution
  rates (episode.ATTRIBUTION_METRICS), and the failure rate's 95% Wilson interval."""
  from shared.sim import episode

  row = {k: a[k]["rate"] for k in ("failure", "collision", "offroad", "offroute", "red_light_run",
                                   "stop_line_violation", "goal_reached")}
  row.update({k: a[k]["rate"] for k in episode.ATTRIBUTION_METRICS if k in a})  # what the failures are made of
  ci = episode.wilson_interval(a["failure"]["count"], a["failure"]["total"])
  row.update(agents=a["agents"], progress_ratio=a["progress_ratio"]["mean"],
             episodic_reward=a["episodic_reward"]["mean"], failure_ci95=None if ci is None else list(ci))
  return row


def summary_rows(per_agent: dict, splits=("all",)) -> dict:
  """{split: row} over the evaluated agents of each split (episode.SPLITS: all, moving, parked) of per-agent
  metrics, from one episode.summarize: paper 002's Table 2 columns, goal, progress ratio."""
  from shared.sim import episode

  summary = episode.summarize(per_agent)
  return {k: _row(summary[k]) for k in splits}


def summary_row(per_agent: dict, split: str = "all") -> dict:
  """summary_rows of one split."""
  return summary_rows(per_agent, (split,))[split]


def eval_rows(agent, params, scenarios, env_cfg, seed: int, splits=("all",)) -> dict:
  """Greedy evaluation (done signals off) of `params` on a list of scenes -> summary_rows of `splits`."""
  import jax

  from shared import evaluation

  res = evaluation.evaluate_scenes(agent.policy_fn(greedy=True), params, scenarios, env_cfg,
                                   jax.random.PRNGKey(seed), batch_size=min(4, len(scenarios)))
  return summary_rows(res["per_agent"], splits)


def eval_row(agent, params, scenarios, env_cfg, seed: int) -> dict:
  """eval_rows over all agents."""
  return eval_rows(agent, params, scenarios, env_cfg, seed)["all"]


__all__ = ["EVAL_KEYS", "eval_row", "eval_rows", "summary_row", "summary_rows"]
