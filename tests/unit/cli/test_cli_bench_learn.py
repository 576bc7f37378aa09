"""`drivelab bench learn`'s plot: one panel per part, the real parts' selection evaluations and chosen checkpoint."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from services.cli import bench_learn, learn_report  # noqa: E402


def _real(agents: str) -> dict:
  curve = [{"phase": "bc", "agent_steps": 10 * i, "accuracy": 0.1 * i} for i in range(5)]
  curve += [{"phase": "ppo", "agent_steps": 10 * i, "goal_rate": 0.5, "ref_kl": 0.01 * i} for i in range(5)]
  evals = [{"agent_steps": 20, "failure": 0.25, "progress_ratio": 0.9}, {"agent_steps": 40, "failure": 0.0,
                                                                          "progress_ratio": 1.8}]
  return {"agents": agents, "curve": curve,
          "table2": {"bc+ppo_selected": {"agent_steps": 40, "training_scene_evals": evals}}}


def test_plot_has_a_panel_per_real_part(tmp_path, monkeypatch):
  saved = []
  monkeypatch.setattr(plt.Figure, "savefig", lambda self, path, **kw: saved.append(self))
  result = {"synthetic": {"curve": [{"agent_steps": 1, "goal_rate": 0.2}],
                          "held_out_evals": [{"agent_steps": 1, "goal_reached": 0.3, "collision": 0.1,
                                              "offroad": 0.0}]},
            "real": _real("sdc"), "real_multi": _real("moving")}
  learn_report.plot(result, str(tmp_path / "learn.png"))
  titles = [ax.get_title() for ax in saved[0].axes]
  assert titles == ["synthetic, PPO from scratch, all vehicles", "real scenes, SDC: BC then PPO",
                    "real scenes, moving vehicles: BC then PPO"]
  multi = saved[0].axes[2]
  failure = next(line for line in multi.get_lines() if line.get_label().startswith("ppo: failure"))
  assert list(failure.get_ydata()) == [0.25, 0.0]
  progress = next(line for line in multi.get_lines() if line.get_label().startswith("ppo: progress"))
  assert list(progress.get_ydata()) == [0.6, 1.0]  # clipped at 1.5, then / 1.5
  kl = next(line for line in multi.get_lines() if line.get_label().startswith("ppo: KL to BC"))
  assert list(kl.get_ydata()) == [0.0, 0.01, 0.02, 0.03, 0.04]


def _run(seed: int, fail: float) -> dict:
  row = lambda f: {"train": {"failure": f, "progress_ratio": 1.0 + f},
                   "held_out": {"failure": 1.0, "progress_ratio": 2.0}}
  return {"seed": seed, "split_seed": 0,
          "table2": {"bc": row(fail), "bc+ppo": row(fail / 2), "bc+ppo_selected": row(0.0)}}


def test_seed_spread_and_its_panel(tmp_path, monkeypatch):
  spread = learn_report.seed_spread({"real": [_run(0, 0.25), _run(1, 0.5)], "real_multi": [_run(0, 0.1), _run(1, 0.3)]})
  bc = spread["real"]["bc"]["train"]
  assert spread["real"]["seeds"] == [0, 1] and spread["real"]["split_seed"] == 0
  assert bc["failure"] == [0.25, 0.5] and bc["mean_failure"] == 0.375
  assert (bc["min_failure"], bc["max_failure"]) == (0.25, 0.5) and bc["mean_progress_ratio"] == 1.375
  assert spread["real_multi"]["bc+ppo"]["train"]["failure"] == [0.05, 0.15]
  assert spread["real_multi"]["bc"]["held_out"]["mean_failure"] == 1.0
  saved = []
  monkeypatch.setattr(plt.Figure, "savefig", lambda self, path, **kw: saved.append(self))
  learn_report.plot({"real": _real("sdc"), "real_multi": _real("moving"), "real_seeds": spread}, str(tmp_path / "x"))
  ax = saved[0].axes[3]
  assert ax.get_title() == "training-scene failure, seeds [0, 1]"
  dots = [list(line.get_ydata()) for line in ax.get_lines()]
  assert dots[0] == [0.25, 0.5] and dots[3] == [0.1, 0.3]  # SDC bc, moving bc
  assert [round(p.get_height(), 3) for p in ax.patches][:3] == [0.375, 0.188, 0.0]


def test_eval_due_by_iterations_and_by_agent_steps():
  from shared.training.recipes import eval_due

  # by iterations: the first, then every 3rd after it
  assert [eval_due(it, 0, 0, 3, 0)[0] for it in range(1, 8)] == [True, False, False, True, False, False, True]
  # by agent steps: blocks of 100 steps; iterations of 40 steps each
  block, seen = 0, []
  for it in range(1, 11):
    due, block = eval_due(it, 40 * it, block, 0, 100)
    seen.append(due)
  # steps 40 (first), 80, 120 (block 1), 160, 200 (block 2), 240, 280, 320 (block 3), 360, 400 (block 4)
  assert seen == [True, False, True, False, True, False, False, True, False, True]
  # one big iteration crossing two blocks evaluates once
  assert eval_due(2, 250, 0, 0, 100) == (True, 2)


def test_table2_markdown_rows_attribution_and_spread():
  cells = lambda f, n: {"failure": f, "collision": f, "offroad": 0.0, "offroute": 0.0, "red_light_run": 0.0,
                        "stop_line_violation": 0.0, "progress_ratio": 1.05, "agents": n,
                        "collision_with_controlled": f, "rear_ended_by_log": 0.0, "failed_after_goal": None}
  part = {"seed": 0, "scenes": {"train": 8, "held_out": 2},
          "table2": {"bc": {"train": cells(0.25, 8), "held_out": cells(0.5, 2), "agent_steps": 96000},
                     "log": {"all": cells(0.0, 10)}}}
  result = {"command": "drivelab bench learn --quick", "provenance": {"commit": "abcdef1234567"},
            "synthetic": {"target": {"goal_rate": 0.95, "max_collision_plus_offroad": 0.03}, "agent_steps": 5,
                          "reached": {"agent_steps": 300000, "wall_s": 50.0}},
            "real": part, "real_seeds": learn_report.seed_spread({"real": [_run(0, 0.25), _run(1, 0.5)]})}
  md = learn_report.table2_markdown(result)
  assert md.startswith("# `drivelab bench learn --quick` at abcdef1234")
  assert "reached at 300,000 agent steps, 50.0 s" in md
  assert "## Real scenes, self-driving car controlled" in md and "moving vehicles controlled" not in md
  lines = md.splitlines()
  bc = [line for line in lines if line.startswith("| bc |")]
  # training then held-out: failure, 5 Table 2 columns, progress, 3 attribution columns (None -> "-"), steps
  assert bc[0] == ("| bc | 8 | 25.0% | 25.0% | 0.0% | 0.0% | 0.0% | 0.0% | 105.0% | 25.0% | 0.0% | - | 96,000 |")
  assert bc[1].startswith("| bc | 2 | 50.0% |")
  assert sum(line.startswith("| log |") for line in lines) == 1  # the log row has no held-out split of its own
  assert "| SDC | bc | 25.0%, 50.0% | 37.5% | 1.375 |" in lines
