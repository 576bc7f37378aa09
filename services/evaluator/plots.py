"""Report figures: metric bars per evaluation, learning curves from a metrics history, periodic evaluations, and
rollout GIFs (policy vs log) of chosen scenes.

Matplotlib's Agg canvas only (no pyplot, no global backend state), like shared/scenes/render.py. Every function
writes one file and returns its path.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shared.scenes import render, types

BAR_METRICS = (("failure", "failure"), ("collision", "collision"), ("offroad", "off-road"),
               ("offroute", "off-route"), ("goal_reached", "goal reached"))
COLOURS = ("#1f5fbf", "#d62728", "#2ca02c", "#ff7f0e", "#8e44ad", "#17becf", "#7f7f7f", "#bcbd22")
# Keys of a history row that index time rather than measure something.
X_KEYS = ("agent_steps", "env_steps", "step", "update", "params_version", "time_s")


def _figure(w: float, h: float, dpi: int = 100) -> Figure:
  fig = Figure(figsize=(w, h), dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def metric_bars(rows: Sequence[tuple[str, dict]], out_path: str, split: str = "moving") -> str:
  """Grouped bars: rates (%) of BAR_METRICS and the progress ratio, one bar per (label, summary) row."""
  fig = _figure(9.0, 3.8)
  ax_rates, ax_prog = fig.subplots(1, 2, gridspec_kw={"width_ratios": [4, 1.2]})
  width = 0.8 / max(len(rows), 1)
  idx = np.arange(len(BAR_METRICS))
  for i, (label, summary) in enumerate(rows):
    s = summary[split]
    rates = [100.0 * (s[k]["rate"] or 0.0) for k, _ in BAR_METRICS]
    colour = COLOURS[i % len(COLOURS)]
    ax_rates.bar(idx + i * width, rates, width, label=f"{label} (n={s['agents']})", color=colour)
    prog = s["progress_ratio"]["mean"]
    ax_prog.bar(i, 100.0 * (prog if prog is not None else 0.0), 0.8, color=colour)
    if prog is None:  # parked cars have no logged path to make progress along
      ax_prog.text(i, 5.0, "n/a", ha="center", fontsize=8)
  ax_rates.set_xticks(idx + 0.4 - width / 2, [name for _, name in BAR_METRICS])
  ax_rates.set_ylabel("% of agents")
  ax_rates.set_title(f"episode metrics ({split} vehicles)", fontsize=10)
  ax_rates.set_ylim(0.0, 125.0)
  ax_rates.legend(fontsize=7, loc="upper left", ncol=min(3, max(len(rows), 1)))
  ax_prog.axhline(100.0, color="black", lw=0.8, ls="--")
  ax_prog.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=45, ha="right", fontsize=7)
  ax_prog.set_title("progress ratio (%)", fontsize=10)
  fig.tight_layout()
  fig.savefig(out_path)
  return out_path


# Periodic held-out evaluations in a history (rows with kind "eval", see services/cli/train_cmd.py): drawn together
# in the first panel.
EVAL_CURVES = (("eval/goal_reached", "goal reached"), ("eval/collision", "collision"), ("eval/offroad", "off-road"))
NOT_PLOTTED = ("iteration",)


def _numeric_keys(history: Sequence[dict], x_key: str) -> list[str]:
  keys: dict[str, None] = {}
  for row in history:
    for k, v in row.items():
      if (k != x_key and k not in X_KEYS and k not in NOT_PLOTTED and not k.startswith("eval/")
          and isinstance(v, (int, float)) and not isinstance(v, bool)):
        keys.setdefault(k, None)
  return list(keys)


def _eval_panel(ax, history: Sequence[dict], x_key: str | None) -> None:
  """Held-out goal, collision and off-road rates of the periodic evaluations against `x_key`."""
  for colour, (key, label) in zip(COLOURS, EVAL_CURVES):
    pts = [(r.get(x_key, i), r[key]) for i, r in enumerate(history) if isinstance(r.get(key), (int, float))]
    if pts:
      xs, ys = zip(*pts)
      ax.plot(xs, ys, color=colour, lw=1.4, marker="o", ms=3, label=label)
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("held-out evaluation (greedy, done signals off)", fontsize=9)
  ax.set_xlabel(x_key or "row", fontsize=8)
  ax.legend(fontsize=7)


def learning_curves(history: Sequence[dict], out_path: str, max_panels: int = 12) -> str | None:
  """One panel per numeric key of a metrics history (list of dicts) against its first time key, after a first
  panel of the periodic held-out evaluations if the history has any; None if it holds nothing to plot."""
  x_key = next((k for k in X_KEYS if any(k in r for r in history)), None)
  has_eval = any(key in r for r in history for key, _ in EVAL_CURVES)
  keys = ([None] if has_eval else []) + _numeric_keys(history, x_key)[:max_panels - has_eval]
  if not keys:
    return None
  cols = min(3, len(keys))
  nrows = math.ceil(len(keys) / cols)
  fig = _figure(4.0 * cols, 2.6 * nrows)
  axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).reshape(-1)
  for ax, key in zip(axes, keys):
    if key is None:
      _eval_panel(ax, history, x_key)
      continue
    pts = [(r.get(x_key, i), r[key]) for i, r in enumerate(history) if isinstance(r.get(key), (int, float))]
    xs, ys = zip(*pts)
    ax.plot(xs, ys, color=COLOURS[0], lw=1.2, marker="." if len(xs) < 40 else None)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel(x_key or "row", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes[len(keys):]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(out_path)
  return out_path


def rollout_gif(scenario: types.Scenario, meta: types.SceneMeta | None, x: np.ndarray, y: np.ndarray,
                yaw: np.ndarray, out_path: str, stride: int = 3) -> str:
  """GIF of a rollout (filled boxes) over its log (dashed outlines); x, y, yaw: (O, T)."""
  render.render_replay_gif(scenario, out_path, meta=meta, sim_xy_yaw=(x, y, yaw), stride=stride, size_in=5.5,
                           dpi=80)
  return out_path


__all__ = ["metric_bars", "learning_curves", "rollout_gif", "BAR_METRICS", "X_KEYS"]
