"""The training loop of `drivelab train` (and of `make run`'s training phase): one phase of the fused trainer with
checkpoints, a metrics history, and periodic greedy evaluation on held-out scenes shown in the progress bar.

History lines (run_dir/metrics_history.jsonl): one per iteration {phase, iteration, agent_steps, wall_s, losses,
rates}; every `eval_every` iterations and at the end of the phase one more with kind "eval" and the held-out
metrics as eval/<key> for EVAL_KEYS (greedy policy, done signals off; services/evaluator/plots.py draws them).
"""

from __future__ import annotations

import json
import os

EVAL_KEYS = ("goal_reached", "collision", "offroad", "offroute", "failure", "progress_ratio")


def _ckpt_template(carry):
  return {"train": carry.train, "rng": carry.rng, "iteration": carry.iteration}


def _row(a: dict) -> dict:
  """One split of episode.summarize -> paper 002's Table 2 columns, goal, progress ratio, the failure attribution
  rates (episode.ATTRIBUTION_METRICS), and the failure rate's 95% Wilson interval (with tens of agents, one failure more or less moves the rate by several points)."""
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


def _eval_status(row: dict | None) -> str:
  if row is None:
    return "held-out: pending"
  return (f"held-out goal {row['eval/goal_reached']:.2f} col {row['eval/collision']:.2f} "
          f"off {row['eval/offroad']:.2f}")


def train_phase(agent, cfg, scenarios, total_steps: int, run_dir: str, seed: int, params=None,
                checkpoint_every: int = 20, show_progress: bool = True, t_offset: float = 0.0,
                held_out=None, eval_every: int = 0, max_seconds: float | None = None, reference=None):
  """Runs (or resumes) one phase; returns (params, agent_steps, wall_s). History lines are appended to the run.
  `reference`: the frozen policy of PPO's KL-to-reference term (PPOConfig.ref_kl_coef > 0), e.g. the BC phase's
  params (on a resume, the restored BC phase's).

  With `held_out` scenes and `eval_every` > 0, the params are evaluated greedily on them every `eval_every`
  iterations and at the end (a history line with kind "eval", shown in the bar); evaluation time is not counted
  in the wall time. `max_seconds` ends the phase after that much training time (resumed time included; the
  compiling first iteration of this process not).
  """
  import time as time_lib

  import jax

  from shared.training import checkpoint
  from shared.algos import fused

  ckpt_dir = os.path.join(run_dir, "checkpoints", cfg.algo)
  carry = fused.init_carry(agent, cfg, scenarios, jax.random.PRNGKey(seed), params, reference)
  done_steps, wall0 = 0, 0.0
  restored = checkpoint.restore_latest(ckpt_dir, jax.device_get(_ckpt_template(carry)))
  if restored is not None:
    tree, _, extra = restored
    carry = carry.replace(**jax.tree.map(jax.numpy.array, tree))
    done_steps, wall0 = int(extra["agent_steps"]), float(extra.get("wall_s", 0.0))
  iteration_fn = fused.make_train_iteration(agent, cfg)
  history = open(os.path.join(run_dir, "metrics_history.jsonl"), "a")
  state = {"eval": None, "eval_s": 0.0, "compile_s": None}

  def write(row):
    history.write(json.dumps(row) + "\n")
    history.flush()

  def evaluate(carry, it, steps, wall):
    t = time_lib.perf_counter()
    row = eval_row(agent, jax.device_get(carry.train.params), held_out, cfg.env, seed)
    state["eval"] = {"phase": cfg.algo, "kind": "eval", "iteration": it, "agent_steps": steps,
                     "wall_s": round(wall, 3), **{f"eval/{k}": round(float(row[k]), 6) for k in EVAL_KEYS}}
    write(state["eval"])
    state["eval_s"] += time_lib.perf_counter() - t

  def on_iteration(carry, metrics, steps, wall):
    it = int(carry.iteration)
    if state["compile_s"] is None:  # this process's first iteration compiles: not training time for max_seconds
      state["compile_s"] = wall
    train_s = wall0 + wall - state["eval_s"] - state["compile_s"]
    wall = wall0 + wall - state["eval_s"] + t_offset
    write({"phase": cfg.algo, "iteration": it, "agent_steps": steps, "wall_s": round(wall, 3),
           **{k: round(v, 6) for k, v in metrics.items() if k != "agent_steps"}})  # this batch's: a float
    out_of_time = max_seconds is not None and train_s >= max_seconds
    last = steps >= total_steps or out_of_time
    if checkpoint_every and (it % checkpoint_every == 0 or last):
      checkpoint.save(ckpt_dir, _ckpt_template(carry), it, {"agent_steps": steps, "wall_s": wall - t_offset})
    if held_out and eval_every and (it % eval_every == 0 or last):
      evaluate(carry, it, steps, wall)
    return not out_of_time

  status = (lambda: _eval_status(state["eval"])) if held_out and eval_every else None
  from services.cli import progress

  try:
    with progress.training_bar(total_steps, done_steps, show_progress, status) as bar:
      carry, steps = fused.run(iteration_fn, carry, total_steps, on_iteration, bar, agent_steps_done=done_steps)
  finally:
    history.close()
  return jax.device_get(carry.train.params), steps, wall0


__all__ = ["EVAL_KEYS", "eval_row", "eval_rows", "summary_row", "summary_rows", "train_phase"]
