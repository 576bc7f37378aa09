"""`drivelab scenes replay DIR|synthetic`: drive every scene with a log-tracking expert and score how close it stays.

Experts: "continuous" replays the inferred continuous actions open-loop (shared.sim.inverse); "grid" picks, every
step, the grid action whose one-step prediction lands nearest the next logged box (closed loop); "log" drives
nobody and scores the same agents on the log itself, the baseline the experts' rates compare with. Controlled
objects: the self-driving car (`--agents sdc`) or every controllable vehicle valid at the init step, up to
`--max-controlled` (`--agents all`). Done signals and stop-at-goal are off (evaluation), so every controlled
object drives the whole horizon.

Per controlled object (shared.sim.episode, the evaluator's definitions): ADE (mean distance to the log over the
simulated steps where the log is valid), end error (FDE, at its last logged step; we also report the share within
2 m), goal reached, and whether it ever overlaps another object, leaves the road or the logged route. Parked vehicles
(logged speed never above 1 m/s in the simulated window) are reported apart from moving ones: most of the log's own
off-road cases are parked cars outside the mapped road edges.
Writes JSON: per-scene and overall {all, moving, parked} groups with rates, counts and totals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from services.cli import provenance, scenes_io
from shared.scenes import source as scene_source
from shared.scenes import types
from shared.sim import env, episode, inverse, rollout

log = logging.getLogger(__name__)

MOVING_SPEED_MPS = 1.0
END_RADIUS_M = 2.0
# Waymax on the same 10 scenes (its published reference figures), for the report.
WAYMAX_REFERENCE = {
    "continuous": {"moving": {"ade_m": 2.9, "end_within_2m": 0.47}, "all": {"ade_m": 1.18, "end_within_2m": 0.79}},
    "grid": {"moving": {"ade_m": 0.23, "end_within_2m": 0.89}, "all": {"ade_m": 0.09, "end_within_2m": 0.96}},
}


def register(subparsers) -> None:
  p = subparsers.add_parser("replay", help="drive scenes with a log-tracking expert; ADE, goal, collision rates")
  p.add_argument("dir", help="folder of scenes, a .dlshard.npz shard, or 'synthetic' (with --num and --seed) or "
                              "'synthetic:N'")
  p.add_argument("--expert", choices=("continuous", "grid", "log"), default="grid",
                 help="grid: closed-loop grid tracking; continuous: open-loop inferred actions; log: no driving, "
                      "the same agents scored on the log itself (its own collision / off-road artefacts)")
  p.add_argument("--agents", choices=("sdc", "all"), default="all")
  p.add_argument("--max-controlled", type=int, default=64, help="controlled objects per scene (1..64)")
  p.add_argument("--batch-size", type=int, default=5, help="scenes simulated together")
  p.add_argument("--num", type=int, default=16, help="synthetic scenes to generate")
  p.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
  p.add_argument("--out", required=True, metavar="FILE.json")
  scenes_io.add_caps_arguments(p)
  p.set_defaults(func=cmd_replay)


def load_scenes(where: str, config: types.SceneConfig, num: int, seed: int):
  """(scenarios, names) of a scene spec (shared.scenes.source): a folder or shard (every scene), or `num` synthetic
  scenes from `seed` ('synthetic'; 'synthetic:N' says N itself). Raises ValueError on a bad spec or missing path."""
  src = scene_source.parse(where, num=num if scene_source.is_synthetic(where) else None, seed=seed)
  loaded = scene_source.load(src, config)
  return loaded.scenarios, [m.name for m in loaded.metas]


def env_config(agents: str, max_controlled: int, init_step: int) -> env.EnvConfig:
  return env.EnvConfig(init_step=init_step, control_mode=agents, max_controlled=max_controlled,
                       done_on_collision=False, done_on_offroad=False, stop_at_goal=False)


def make_runner(expert: str, cfg: env.EnvConfig, num_steps: int):
  """jitted (batch, rng) -> EpisodeMetrics (B, O) of one expert's rollout (controlled objects are `evaluated`)."""
  ep_cfg = episode.EpisodeConfig(init_step=cfg.init_step, moving_speed_mps=MOVING_SPEED_MPS)

  def run(batch, rng):
    state = env.reset_batch(batch, rng, cfg)
    evaluated = state.controlled
    if expert == "log":  # nobody is driven: the same agents are scored on the log itself (its own artefacts)
      state = state.replace(controlled=jnp.zeros_like(state.controlled))
      _, outs = rollout.rollout_act_batch(rollout.grid_expert(cfg), state, num_steps, cfg, rng)
    elif expert == "continuous":
      acts = jax.vmap(lambda s: inverse.infer_expert_actions(s, cfg.dynamics, cfg.actions, cfg.init_step))(batch)
      _, outs = rollout.rollout_act_batch(rollout.continuous_expert, state, num_steps, cfg, rng, aux=acts)
    else:
      _, outs = rollout.rollout_act_batch(rollout.grid_expert(cfg), state, num_steps, cfg, rng)
    # outs leaves are (S, B, ...): score each scene with the time axis first.
    per_scene = lambda m, o, c, sc: episode.episode_metrics(m, o, c, sc, ep_cfg)
    return jax.vmap(per_scene, in_axes=(1, 1, 0, 0))(outs.metrics, outs.objects, evaluated, batch)
  return jax.jit(run)


def summarize(per_agent: dict) -> dict:
  """episode.summarize plus the share of agents ending within 2 m of their last logged position."""
  out = episode.summarize(per_agent)
  ev = per_agent["evaluated"].astype(bool)
  near = per_agent["fde_m"] < END_RADIUS_M
  moving = per_agent["moving"].astype(bool)
  for split, m in (("all", ev), ("moving", ev & moving), ("parked", ev & ~moving)):
    n = int(m.sum())
    out[split]["end_within_2m"] = {"rate": float((near & m).sum() / n) if n else None,
                                   "count": int((near & m).sum()), "total": n}
  return out


def replay(scenarios: list, names: list[str], expert: str, cfg: env.EnvConfig, batch_size: int,
           progress=None) -> dict:
  """Runs the expert on every scene; returns {'scenes': [{name, all, moving, parked}], 'overall': {...}}."""
  T = scenarios[0].objects.x.shape[-1]
  run = make_runner(expert, cfg, T - 1 - cfg.init_step)
  scenes, parts = [], []
  for start in range(0, len(scenarios), batch_size):
    chunk = scenarios[start:start + batch_size]
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one compiled shape; repeats are dropped below
    per_agent = jax.tree.map(np.asarray, run(types.stack(padded), jax.random.PRNGKey(start)))
    for b in range(len(chunk)):
      d = episode.as_dict(jax.tree.map(lambda a, b=b: a[b], per_agent))
      parts.append(d)
      scenes.append(dict(name=names[start + b], **summarize(d)))
      if progress is not None:
        progress(names[start + b])
  overall = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return dict(scenes=scenes, overall=summarize(overall))


def cmd_replay(args: argparse.Namespace) -> int:
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

  config = scenes_io.caps_from_args(args)
  if not 1 <= args.max_controlled <= 64 or args.batch_size < 1:
    raise SystemExit("drivelab: --max-controlled must be in 1..64 and --batch-size >= 1")
  try:
    scenarios, names = load_scenes(args.dir, config, args.num, args.seed)
  except (FileNotFoundError, NotADirectoryError, ValueError) as e:
    print(f"drivelab: {e}", file=sys.stderr)
    return 1
  if not scenarios:
    print(f"drivelab: no scenes loaded from {args.dir}", file=sys.stderr)
    return 1
  log.info("replaying %d scenes with the %s expert", len(scenarios), args.expert)
  cfg = env_config(args.agents, args.max_controlled, config.init_step)
  t0 = time.perf_counter()
  with Progress(TextColumn("[bold]replay {task.fields[expert]}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[scene]}")) as bar:
    task = bar.add_task("replay", total=len(scenarios), expert=args.expert, scene="")
    result = replay(scenarios, names, args.expert, cfg, min(args.batch_size, len(scenarios)),
                    lambda name: bar.update(task, advance=1, scene=name))
  command = (f"drivelab scenes replay {args.dir} --expert {args.expert} --agents {args.agents} "
             f"--max-controlled {args.max_controlled} --max-objects {config.max_objects} "
             f"--max-road-points {config.max_road_points}"
             + (f" --num {args.num} --seed {args.seed}" if scene_source.is_synthetic(args.dir) else ""))
  result.update(command=command, source=str(args.dir), expert=args.expert, agents=args.agents,
                num_scenes=len(scenarios), seconds=round(time.perf_counter() - t0, 2), caps=dataclasses.asdict(config),
                reference_waymax=WAYMAX_REFERENCE.get(args.expert), git_commit=provenance.git_commit(),
                machine=provenance.machine(), utc=provenance.utc_now())
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  _print_summary(result)
  return 0


def _print_summary(result: dict) -> None:
  pct = lambda d: "-" if d["rate"] is None else f"{100 * d['rate']:.1f}%"
  for group in ("all", "moving", "parked"):
    g = result["overall"][group]
    ade = g["ade_m"]["mean"]
    print(f"{group:>6}: n={g['agents']:4d}  ADE {'-' if ade is None else f'{ade:.3f}'} m  "
          f"end<2m {pct(g['end_within_2m'])}  goal {pct(g['goal_reached'])}  collision {pct(g['collision'])}  "
          f"offroad {pct(g['offroad'])}  offroute {pct(g['offroute'])}")
