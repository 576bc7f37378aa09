"""`drivelab train` pieces: summary rows, periodic held-out evaluation in the history and the bar, the report's
evaluation curves, and reloading the exact synthetic scenes a run used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.cli import main, train_cmd, train_loop
from services.evaluator import plots, records
from shared.scenes import types


def _per_agent(**cols):
  """Per-agent columns for 1 scene x 4 objects, object 3 not evaluated."""
  n = (1, 4)
  base = {k: np.zeros(n, bool) for k in ("evaluated", "moving", "failure", "collision", "offroad", "offroute",
                                          "crash", "goal_reached", "red_light_run", "stop_line_violation",
                                          "progress_valid")}
  base.update({k: np.zeros(n, np.float32) for k in ("episodic_reward", "progress_m", "path_m", "progress_ratio",
                                                     "ade_m", "fde_m")})
  base.update({k: np.zeros(n, np.int32) for k in ("offroad_steps", "first_crash_step", "goal_step")})
  base["evaluated"][0, :3] = True
  for k, v in cols.items():
    base[k] = np.asarray([v], base[k].dtype)
  return base


def test_summary_row_rates_over_evaluated_agents():
  pa = _per_agent(goal_reached=[1, 1, 0, 1], collision=[0, 1, 0, 1], failure=[0, 1, 1, 1], offroad=[0, 0, 1, 1],
                  moving=[1, 1, 1, 1], progress_valid=[1, 1, 0, 1], progress_ratio=[1.0, 0.5, 9.0, 9.0],
                  episodic_reward=[1, -1, -1, 1])
  row = train_cmd.summary_row(pa)
  assert row["agents"] == 3  # the 4th object is not evaluated
  assert row["goal_reached"] == pytest.approx(2 / 3)
  assert row["collision"] == pytest.approx(1 / 3) and row["offroad"] == pytest.approx(1 / 3)
  assert row["failure"] == pytest.approx(2 / 3)
  assert row["progress_ratio"] == pytest.approx(0.75)  # mean over agents with a valid ratio only
  assert row["episodic_reward"] == pytest.approx(-1 / 3)


def test_summary_row_of_the_moving_split_leaves_parked_agents_out():
  pa = _per_agent(moving=[1, 0, 1, 1], failure=[0, 1, 1, 0], offroad=[0, 1, 0, 0], collision=[0, 0, 1, 0],
                  progress_valid=[1, 1, 1, 1], progress_ratio=[1.0, 0.0, 0.5, 7.0])
  moving = train_cmd.summary_row(pa, "moving")
  assert moving["agents"] == 2  # objects 0 and 2 (1 is parked, 3 not evaluated)
  assert moving["failure"] == pytest.approx(0.5) and moving["offroad"] == 0.0
  assert moving["progress_ratio"] == pytest.approx(0.75)
  parked = train_cmd.summary_row(pa, "parked")
  assert parked["agents"] == 1 and parked["offroad"] == 1.0
  assert train_cmd.summary_row(pa)["agents"] == 3


def test_eval_status_line():
  assert train_loop._eval_status(None) == "held-out: pending"
  row = {"eval/goal_reached": 0.875, "eval/collision": 0.0625, "eval/offroad": 0.0}
  assert train_loop._eval_status(row) == "held-out goal 0.88 col 0.06 off 0.00"


def test_learning_curves_draw_eval_rows_in_one_panel(tmp_path, monkeypatch):
  history = [{"phase": "ppo", "iteration": i, "agent_steps": 100 * i, "wall_s": i, "loss": 1.0 / i} for i in (1, 2, 3)]
  history.append({"phase": "ppo", "kind": "eval", "iteration": 3, "agent_steps": 300, "wall_s": 3.0,
                  "eval/goal_reached": 0.5, "eval/collision": 0.25, "eval/offroad": 0.0})
  assert plots._numeric_keys(history, "agent_steps") == ["wall_s", "loss"]  # no eval/* or iteration panels
  drawn = []
  monkeypatch.setattr(plots, "_eval_panel", lambda ax, h, x: drawn.append((x, [r for r in h if "kind" in r])))
  out = plots.learning_curves(history, str(tmp_path / "c.png"))
  assert out and (tmp_path / "c.png").stat().st_size > 1000
  assert drawn == [("agent_steps", history[3:])]
  monkeypatch.undo()
  assert plots.learning_curves(history[:3], str(tmp_path / "d.png"))  # no eval rows: no eval panel, no error


def test_records_reload_the_synthetic_scenes_a_run_used():
  caps = types.SceneConfig(max_objects=12, max_road_points=2000, num_timesteps=41)
  scenes, metas, source = train_cmd.load_scenes("synthetic", 2, 7, caps, vehicles=(4, 6))
  assert source == {"scenes": "synthetic", "num": 2, "seed": 7, "vehicles": [4, 6]}
  record = {"source": source, "config": {"scenes": {k: getattr(caps, k) for k in (
      "max_objects", "max_road_points", "max_tl_lanes", "num_timesteps", "init_step")}}}
  again, again_metas = records.load_scenes(record)
  assert [m.scenario_id for m in again_metas] == [m.scenario_id for m in metas]
  for a, b in zip(again, scenes):
    np.testing.assert_array_equal(np.asarray(a.objects.x), np.asarray(b.objects.x))


def test_bad_eval_every_exits_2(capsys):
  args = main.build_parser("*").parse_args(["train", "--eval-every", "-1", "--no-progress"])
  assert args.func(args) == 2
  assert "--eval-every" in capsys.readouterr().out


def test_ref_kl_needs_bc_pretraining_exits_2(capsys):
  args = main.build_parser("*").parse_args(["train", "--ref-kl", "0.5", "--no-progress"])
  assert args.func(args) == 2
  assert "--ref-kl" in capsys.readouterr().out


@pytest.mark.slow
def test_bc_then_ppo_with_kl_to_the_bc_policy(tmp_path):
  """--pretrain bc --ref-kl: the PPO phase's loss carries the KL to the BC phase's params (logged as ref_kl: zero
  at the first minibatch, where the params are BC's, so small but not zero over the epochs)."""
  run = tmp_path / "run"
  argv = ["train", "--pretrain", "bc", "--ref-kl", "0.5", "--scenes", "synthetic", "--num", "3", "--seed", "3",
          "--steps", "1", "--preset", "tiny", "--num-timesteps", "21", "--max-objects", "12", "--max-road-points",
          "2000", "--eval-every", "0", "--scenes-per-iter", "2", "--minibatches", "2", "--run-dir", str(run),
          "--no-progress", "--no-eval"]
  args = main.build_parser("*").parse_args(argv)
  assert args.func(args) == 0
  rows = [json.loads(line) for line in (run / "metrics_history.jsonl").read_text().splitlines()]
  assert [r["phase"] for r in rows] == ["bc", "ppo"]
  assert "ref_kl" not in rows[0] and 0.0 < rows[1]["ref_kl"] < 0.5
  assert json.loads((run / "policy.json").read_text())["ref_kl"] == 0.5


@pytest.mark.slow
def test_train_writes_periodic_held_out_evaluations(tmp_path):
  """Two PPO iterations of the tiny net with --eval-every 1: two eval lines after their training lines."""
  run = tmp_path / "run"
  argv = ["train", "--scenes", "synthetic", "--num", "4", "--seed", "3", "--steps", "1", "--preset", "tiny",
          "--num-timesteps", "21", "--max-objects", "12", "--max-road-points", "2000", "--eval-every", "1",
          "--scenes-per-iter", "2", "--minibatches", "2", "--held-out-fraction", "0.25", "--run-dir", str(run),
          "--no-progress", "--no-eval"]
  args = main.build_parser("*").parse_args(argv)
  assert args.func(args) == 0
  rows = [json.loads(line) for line in (run / "metrics_history.jsonl").read_text().splitlines()]
  evals = [r for r in rows if r.get("kind") == "eval"]
  assert len(rows) == 2 and len(evals) == 1  # --steps 1: one iteration, evaluated as the last one
  assert evals[0]["iteration"] == rows[0]["iteration"] == 1
  for key in train_cmd.EVAL_KEYS:
    v = evals[0][f"eval/{key}"]
    assert 0.0 <= v <= (10.0 if key == "progress_ratio" else 1.0)


def test_demo_training_section_lists_evaluations_and_curve():
  from services.cli import demo_train

  rate = lambda c, n: {"rate": c / n, "count": c, "total": n}
  t = dict(agent_steps=12345, seconds=200.5, budget_s=180, net="mlp/tiny", scenes={"train": 18, "held_out": 6},
           evaluations=[{"agent_steps": 1000, "eval/goal_reached": 0.5, "eval/collision": 0.125, "eval/offroad": 0.0,
                         "eval/progress_ratio": 0.9}],
           final={"held_out": {"agents": 8, "goal_reached": rate(7, 8), "collision": rate(1, 8),
                               "offroad": rate(0, 8), "failure": rate(1, 8)}},
           run_dir="train", curve="train/report/img/learning_curves.png", report=None)
  md = "\n".join(demo_train.report_md(t))
  assert "12,345 agent steps" in md and "the 180 s budget" in md
  assert "| 1,000 | 0.500 | 0.125 | 0.000 | 0.90 |" in md
  assert "| held_out | 8 | 87.5% (7/8) | 12.5% (1/8) | 0.0% (0/8) | 12.5% (1/8) |" in md
  assert md.rstrip().endswith("![learning curves](train/report/img/learning_curves.png)")
