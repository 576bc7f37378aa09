"""The training loop of `drivelab train` (and of `make run`'s training phase): one phase of the fused trainer with
checkpoints, a metrics history, and periodic greedy evaluation on held-out scenes shown in the progress bar.

History lines (run_dir/metrics_history.jsonl): one per iteration {phase, iteration, agent_steps, wall_s, losses,
rates}; every `eval_every` iterations and at the end of the phase one more with kind "eval" and the held-out
metrics as eval/<key> for EVAL_KEYS (greedy policy, done signals off; services/evaluator/plots.py draws them).
"""

from __future__ import annotations

import json
import os

from shared.training.scores import EVAL_KEYS, eval_row, eval_rows, summary_row, summary_rows


def _eval_status(row: dict | None) -> str:
  if row is None:
    return "held-out: pending"
  return (f"held-out goal {row['eval/goal_reached']:.2f} col {row['eval/collision']:.2f} "
          f"off {row['eval/offroad']:.2f}")


def train_phase(agent, cfg, scenarios, total_steps: int, run_dir: str, seed: int, params=None,
                checkpoint_every: int = 20, show_progress: bool = True, t_offset: float = 0.0,
                held_out=None, eval_every: int = 0, max_seconds: float | None = None, reference=None):
  """Runs (or resumes) one phase with shared.training.driver; returns (params, agent_steps, wall_s resumed).
  History lines are appended to the run. `reference`: the frozen policy of PPO's KL-to-reference term
  (PPOConfig.ref_kl_coef > 0), e.g. the BC phase's params (on a resume, the restored BC phase's).

  With `held_out` scenes and `eval_every` > 0, the params are evaluated greedily on them every `eval_every`
  iterations and at the end (a history line with kind "eval", shown in the bar); evaluation time is not counted
  in the wall time. `max_seconds` ends the phase after that much training time (resumed time included; the
  compiling first iteration of this process not).
  """
  import jax

  from services.cli import progress
  from shared.training import driver

  history = open(os.path.join(run_dir, "metrics_history.jsonl"), "a")
  state = {"eval": None}
  wall = lambda clock: clock.train_s + clock.compile_s + t_offset  # resumed + this call's time, compile included

  def write(row):
    history.write(json.dumps(row) + "\n")
    history.flush()

  def on_iteration(it, steps, metrics, clock):
    write({"phase": cfg.algo, "iteration": it, "agent_steps": steps, "wall_s": round(wall(clock), 3),
           **{k: round(v, 6) for k, v in metrics.items() if k != "agent_steps"}})  # this batch's: a float

  def on_eval(params, it, steps, clock):
    row = eval_row(agent, jax.device_get(params), held_out, cfg.env, seed)
    state["eval"] = {"phase": cfg.algo, "kind": "eval", "iteration": it, "agent_steps": steps,
                     "wall_s": round(wall(clock), 3), **{f"eval/{k}": round(float(row[k]), 6) for k in EVAL_KEYS}}
    write(state["eval"])

  evaluating = bool(held_out and eval_every)
  status = (lambda: _eval_status(state["eval"])) if evaluating else None
  ckpts = driver.Checkpoints(os.path.join(run_dir, "checkpoints", cfg.algo), checkpoint_every)
  try:
    with progress.training_bar(total_steps, ckpts.agent_steps_done(), show_progress, status) as bar:
      hooks = driver.Hooks(on_iteration=on_iteration, eval_due=lambda it, steps: it % eval_every == 0,
                           on_eval=on_eval if evaluating else None, progress=bar)
      out = driver.train(agent, cfg, scenarios, seed, driver.Budget(agent_steps=total_steps, seconds=max_seconds),
                         hooks, params, reference, ckpts)
  finally:
    history.close()
  return out.params, out.agent_steps, out.resumed_s


__all__ = ["EVAL_KEYS", "eval_row", "eval_rows", "summary_row", "summary_rows", "train_phase"]
