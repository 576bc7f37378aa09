"""`drivelab bench learn`'s plot: one panel per part, the real parts' selection evaluations and chosen checkpoint."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from services.cli import bench_learn  # noqa: E402


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
  bench_learn.plot(result, str(tmp_path / "learn.png"))
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
