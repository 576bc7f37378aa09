"""`drivelab bench learn`'s report: the seed spread of the failure rates, the learning-curve figure and paper 002's
Table 2 as Markdown, all read from the result dict that `services.cli.bench_learn` builds (learn.json)."""

from __future__ import annotations

# Paper 002's Table 2 columns (failure first), as the episode metrics name them.
TABLE2 = ("failure", "collision", "offroad", "offroute", "red_light_run", "stop_line_violation")
# What the failures are made of (shared.sim.episode.ATTRIBUTION_METRICS), beside the Table 2 columns.
ATTRIBUTION = (("collision_with_controlled", "collided w/ controlled"), ("rear_ended_by_log", "rear-ended by log"),
               ("failed_after_goal", "failed after goal"))


SPREAD_ROWS = ("bc", "bc+ppo", "bc+ppo_selected")


def seed_spread(runs: dict[str, list[dict]]) -> dict:
  """{part: {"seeds": [...], row: {split: {"failure": [per seed], "progress_ratio": [...], "mean_failure",
  "min_failure", "max_failure", "mean_progress_ratio"}}}} over the real_part results of several training seeds."""
  out = {}
  for key, parts in runs.items():
    part = {"seeds": [r["seed"] for r in parts], "split_seed": parts[0]["split_seed"]}
    for row in SPREAD_ROWS:
      part[row] = {}
      for split in ("train", "held_out"):
        fail = [r["table2"][row][split]["failure"] for r in parts]
        prog = [r["table2"][row][split]["progress_ratio"] for r in parts]
        part[row][split] = {"failure": fail, "progress_ratio": prog, "mean_failure": sum(fail) / len(fail),
                            "min_failure": min(fail), "max_failure": max(fail),
                            "mean_progress_ratio": sum(prog) / len(prog)}
    out[key] = part
  return out


def _plot_spread(ax, spread: dict) -> None:
  """Training-scene failure rate per training seed (dots) and their mean (bar) for each part and row."""
  labels, x = [], 0
  for key, name in (("real", "SDC"), ("real_multi", "moving")):
    part = spread.get(key)
    if not part:
      continue
    for row in SPREAD_ROWS:
      fail = part[row]["train"]["failure"]
      ax.bar(x, sum(fail) / len(fail), color="C0" if key == "real" else "C1", alpha=0.35)
      ax.plot([x] * len(fail), fail, "k.", ms=8)
      labels.append(f"{name}\n{row.replace('bc+ppo_selected', 'selected')}")
      x += 1
  ax.set_xticks(range(len(labels)), labels, fontsize=8)
  seeds = next(iter(spread.values()))["seeds"]
  ax.set(title=f"training-scene failure, seeds {seeds}", ylabel="failure rate (dots: seeds; bars: mean)",
         ylim=(0, 1))


def _plot_real(ax, real: dict) -> None:
  for phase, key in (("bc", "accuracy"), ("ppo", "goal_rate"), ("ppo", "ref_kl")):
    c = [r for r in real["curve"] if r["phase"] == phase and key in r]
    if c:
      ax.plot([r["agent_steps"] for r in c], [r[key] for r in c],
              label=f"{phase}: {'KL to BC' if key == 'ref_kl' else key} (training)")
  sel = real["table2"].get("bc+ppo_selected", {}).get("training_scene_evals", [])
  if sel:
    ax.plot([r["agent_steps"] for r in sel], [r["failure"] for r in sel], "s--",
            label="ppo: failure (train scenes, greedy)")
    ax.plot([r["agent_steps"] for r in sel], [min(r["progress_ratio"], 1.5) / 1.5 for r in sel], "o:",
            label="ppo: progress ratio / 1.5 (train scenes, greedy)")
    chosen = real["table2"]["bc+ppo_selected"]["agent_steps"]
    ax.axvline(chosen, color="grey", lw=0.8, label=f"selected checkpoint ({chosen:,} steps)")
  who = {"sdc": "SDC", "moving": "moving vehicles"}.get(real["agents"], "all vehicles")
  ax.set(title=f"real scenes, {who}: BC then PPO", xlabel="agent steps (per phase)", ylim=(0, 1))
  ax.legend(fontsize=8)


def plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  spread = result.get("real_seeds")
  fig, axes = plt.subplots(1, 4 if spread else 3, figsize=(24 if spread else 18, 4.5))
  syn = result.get("synthetic")
  if syn:
    ax = axes[0]
    c = syn["curve"]
    ax.plot([r["agent_steps"] for r in c], [r["goal_rate"] for r in c], alpha=0.4, label="training rollouts (sampled)")
    e = syn["held_out_evals"]
    ax.plot([r["agent_steps"] for r in e], [r["goal_reached"] for r in e], "o-", label="held-out goal (greedy)")
    ax.plot([r["agent_steps"] for r in e], [r["collision"] + r["offroad"] for r in e], "s--",
            label="held-out collision + off-road")
    ax.set(title="synthetic, PPO from scratch, all vehicles", xlabel="agent steps", ylabel="rate", ylim=(0, 1))
    ax.legend()
  for ax, key in ((axes[1], "real"), (axes[2], "real_multi")):
    if result.get(key):
      _plot_real(ax, result[key])
  if spread:
    _plot_spread(axes[3], spread)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _pct(v) -> str:
  return "-" if v is None else f"{100 * v:.1f}%"


def table2_markdown(result: dict) -> str:
  """Paper 002's Table 2 for each real part (training and held-out scenes), the seed spread of the failure rate,
  and the synthetic target, as Markdown (written beside learn.json as learn.md, and printed)."""
  out = [f"# `{result['command']}` at {str(result['provenance'].get('commit'))[:10]}", ""]
  syn = result.get("synthetic")
  if syn:
    reached = syn.get("reached")
    target = syn["target"]
    out += [f"Synthetic, PPO from scratch, all vehicles: target (held-out goal >= {target['goal_rate']:.0%}, "
            f"collision + off-road <= {target['max_collision_plus_offroad']:.0%})"
            + (f" reached at {reached['agent_steps']:,} agent steps, {reached['wall_s']} s." if reached else
               f" not reached in {syn['agent_steps']:,} agent steps."), ""]
  cols = [("failure", "failure")] + [(k, k.replace("_", " ")) for k in TABLE2[1:]] + [("progress_ratio", "progress")]
  for key, who in (("real", "self-driving car"), ("real_multi", "moving vehicles")):
    part = result.get(key)
    if not part:
      continue
    t = part["table2"]
    out += [f"## Real scenes, {who} controlled (seed {part['seed']}; {part['scenes']['train']} training, "
            f"{part['scenes']['held_out']} held-out scenes; goal: drive-on)", ""]
    if part.get("trained_on"):
      out += [f"Trained on: BC {part['trained_on']['bc']} vehicles, PPO {part['trained_on']['ppo']} vehicles "
              "(sdc: the self-driving car; moving: every vehicle that moves in its log).", ""]
    for split in ("train", "held_out"):
      head = ["row", "agents"] + [c for _, c in cols] + [c for _, c in ATTRIBUTION] + ["agent steps"]
      out += [f"{'Training' if split == 'train' else 'Held-out'} scenes:", "", "| " + " | ".join(head) + " |",
              "|" + "---|" * len(head)]
      for row in ("bc", "bc+ppo", "bc+ppo_selected", "log", "expert-grid"):
        r = t.get(row)
        if r is None:
          continue
        cells = r[split] if split in r else (r["all"] if split == "train" else None)
        if cells is None:
          continue
        steps = r.get("agent_steps")
        out.append("| " + " | ".join([row, str(cells["agents"])] + [_pct(cells.get(k)) for k, _ in cols]
                                     + [_pct(cells.get(k)) for k, _ in ATTRIBUTION]
                                     + ["-" if steps is None else f"{steps:,}"]) + " |")
      out.append("")
    out.append("(log / expert-grid: every scene, training and held-out together.)")
    out.append("")
  spread = result.get("real_seeds")
  if spread:
    out += [f"## Training-scene failure over seeds {next(iter(spread.values()))['seeds']}", "",
            "| part | row | per seed | mean | progress ratio (mean) |", "|---|---|---|---|---|"]
    for key, who in (("real", "SDC"), ("real_multi", "moving")):
      for row in SPREAD_ROWS:
        if key in spread:
          r = spread[key][row]["train"]
          out.append(f"| {who} | {row} | {', '.join(_pct(f) for f in r['failure'])} | {_pct(r['mean_failure'])} | "
                     f"{r['mean_progress_ratio']:.3f} |")
    out.append("")
  return "\n".join(out)
