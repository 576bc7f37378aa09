"""`drivelab bench sim`: simulator step cost by batch size and controlled agents, its parts, and a brute-force
off-road baseline.

Full step = dynamics + observations and metrics of the controlled objects + reward (+ the road-candidate refresh
of the controlled objects every `candidate_refresh_steps` steps), run as `rollout_batch` inside one `lax.scan` under
jit with random grid actions that depend on the observation (through a sum that never changes them), so XLA cannot
drop the observation as dead code.
Scenes (shared.scenes.source): the real ones in a folder or shard (tiled to fill the batch; bad files are skipped
and logged) and/or synthetic ones. Every batch size is timed on the largest batch's scenes (batch b as largest / b
batches in turn, same steps each) and reports the means (ms per step, controlled agents), so per-agent-step costs
compare like with like across batch sizes. Agents: the controlled set is chosen once for the largest count and cut
down per case, so every case shares one compiled program (observations and metrics are computed for max_controlled
rows: the cost does not depend on how many are controlled, agent-steps/s does).
Components (each alone, in a scan of the same length, batch 1 and the smallest batch > 1): dynamics, observations
(the env's: controlled objects only; and of every object), metrics (the env's: controlled objects only, with their
box gaps; and of every object, as log replay computes them), the candidate refresh (per call: the env's, of the
controlled objects; and of every object), our off-road check, and Waymax's brute-force off-road check over every
road point.
Timing: every full-step case is compiled and warmed up first, then timed in rounds that run each case once (batch
sizes interleaved in time; medians per case), so load changes hit every batch size alike.
Results (with command line, git commit, machine, UTC time, load averages) go to --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import resource
import statistics
import sys
import time

import numpy as np

from services.cli import provenance

REAL_DIR = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gpudrive_womd"


def _jax():
  import jax
  import jax.numpy as jnp
  return jax, jnp


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_scenes(spec: str, scene_cfg, count: int):
  """A list of numpy Scenarios of a scene spec (shared.scenes.source): every scene of a folder or shard, or `count`
  synthetic ones from seed 0 ('synthetic:N' says N itself). FileNotFoundError (one line) when there are none."""
  from shared.scenes import source as scene_source
  try:
    src = scene_source.parse(spec, num=count if scene_source.is_synthetic(spec) else None, seed=0)
  except ValueError as e:
    raise FileNotFoundError(f"bench sim: {e}") from None
  loaded = scene_source.load(src, scene_cfg)
  if not loaded.scenarios:
    raise FileNotFoundError(f"bench sim: no loadable scenes in {spec} ({loaded.skipped} skipped)")
  return loaded.scenarios


def _timed(fn, args, repeats: int):
  """(compile seconds, median run seconds) of jit(fn)(*args)."""
  compile_s, runs = _timed_each(fn, [args], repeats)
  return compile_s, runs[0]


def _timed_each(fn, arg_sets, repeats: int):
  """(compile seconds, [median run seconds per argument set]) of jit(fn) compiled once (the sets share shapes),
  each set warmed up, then timed `repeats` times in turn (interleaved, so load changes hit every set alike)."""
  jax, _ = _jax()
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*arg_sets[0]).compile()
  compile_s = time.perf_counter() - t0
  for args in arg_sets:
    jax.block_until_ready(compiled(*args))  # warm-up
  runs = [[] for _ in arg_sets]
  for _ in range(repeats):
    for i, args in enumerate(arg_sets):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      runs[i].append(time.perf_counter() - t0)
  return compile_s, [statistics.median(r) for r in runs]


def _batch(scenes, size: int, start: int = 0):
  """The scenes start, start + 1, ... (tiled) stacked into a batch of `size`."""
  from shared.scenes import types
  jax, jnp = _jax()
  return jax.tree.map(jnp.asarray, types.stack([scenes[(start + i) % len(scenes)] for i in range(size)]))


def _full_step_cases(scenes, label, batch_sizes, agents, steps, cfg, repeats):
  """One row per (batch size, agents). Every case is compiled and warmed up first, then timed in `repeats` rounds
  that run every case once each (batch sizes interleaved in time), so a change of load during the run hits every
  batch size alike and the per-agent-step costs of different batch sizes compare within one round."""
  from shared.sim import actions, env, rollout
  jax, jnp = _jax()
  n_act = actions.num_actions(cfg.actions)
  from shared.sim import observations

  def policy(params, obs, rng):  # random actions, tied to the observation so it is computed (never changes them)
    tie = (jnp.sum(observations.flatten(obs)) > 1e30).astype(jnp.int32)
    return jax.random.randint(rng, obs.ego.shape[:1], 0, n_act) + tie
  largest = max(batch_sizes)
  reset = jax.jit(lambda s: env.reset_batch(s, jax.random.PRNGKey(0), cfg))
  run = lambda st: rollout.rollout_batch(policy, None, st, steps, cfg, jax.random.PRNGKey(1))[1].reward
  cases = []
  for b in batch_sizes:
    # Every batch size runs the largest batch's scenes: batch b as largest / b batches in turn (same steps each;
    # means reported), so the per-agent figures of all batch sizes cover the same scenes and controlled objects.
    starts = list(range(0, largest, b))
    batches = [reset(_batch(scenes, b, start)) for start in starts]
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(batches[0]).compile()  # one program per batch size, shared by every agent count
    comp = time.perf_counter() - t0
    for j, a in enumerate(agents):
      # Keep the first `a` controlled objects of each scene (same compiled program for every a).
      cut = [s.replace(controlled=s.controlled & (jnp.cumsum(s.controlled, axis=1) <= a)) for s in batches]
      for st in cut:
        jax.block_until_ready(compiled(st))  # warm-up
      cases.append({"b": b, "a": a, "fn": compiled, "cut": cut, "compile_s": comp if j == 0 else 0.0,
                    "n_ctrl": statistics.mean(float(st.controlled.sum(1).mean()) for st in cut),
                    "rss_growth": _rss_mb() - rss0 if j == 0 else 0.0, "secs": [[] for _ in cut]})
  for r in range(repeats):
    for c in cases:
      for i, st in enumerate(c["cut"]):
        t0 = time.perf_counter()
        jax.block_until_ready(c["fn"](st))
        c["secs"][i].append(time.perf_counter() - t0)
    print(f"{label}: timing round {r + 1}/{repeats} done", flush=True)
  rows = []
  for c in cases:
    b, n_ctrl = c["b"], c["n_ctrl"]
    sec = statistics.mean(statistics.median(s) for s in c["secs"])
    lo, hi = (statistics.mean(f(s) for s in c["secs"]) for f in (min, max))  # the spread over the rounds
    ms = sec / steps * 1e3
    rows.append({"scenes": label, "batch_size": b, "agents_requested": c["a"], "agents_controlled_mean": n_ctrl,
                 "scenes_timed": len(c["cut"]) * b,
                 "steps": steps, "compile_s": round(c["compile_s"], 2), "ms_per_step": round(ms, 3),
                 "ms_per_scene_step": round(ms / b, 4),
                 "agent_steps_per_s": round(b * n_ctrl * steps / sec, 1),
                 "us_per_agent_step": round(sec / (b * n_ctrl * steps) * 1e6, 2),
                 "us_per_agent_step_range": [round(t / (b * n_ctrl * steps) * 1e6, 2) for t in (lo, hi)],
                 "peak_rss_mb": round(_rss_mb(), 1), "compile_rss_growth_mb": round(c["rss_growth"], 1)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def _component_fns(cfg, steps):
  """name -> fn(states) running that part alone `steps` times in a scan (state nudged each step so XLA cannot
  hoist the work out of the loop)."""
  from shared.sim import dynamics, env, geometry, metrics, observations
  jax, jnp = _jax()

  def scan(body):
    def run(st):
      def f(c, i):
        s = st.replace(objects=st.objects.replace(x=st.objects.x + i.astype(jnp.float32) * 1e-4))
        return c + sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(body(s))), None
      return jax.lax.scan(f, jnp.float32(0), jnp.arange(steps))[0]
    return run

  one = lambda f: lambda s: jax.vmap(f)(s)
  def controlled_metrics(s):  # what the env computes: the controlled rows' box gaps (M, O), then their metrics
    o, log = s.objects, s.scenario.objects
    rows = observations.controlled_rows(s.controlled, cfg.max_controlled)[0]
    boxes = (o.x, o.y, o.yaw, log.length, log.width)
    trig = (jnp.cos(o.yaw), jnp.sin(o.yaw))
    gap = geometry.sat_gap(tuple(b[rows] for b in boxes), boxes, tuple(a[rows] for a in trig), trig)
    return metrics.step_metrics_rows(s, s, rows, cfg.metrics, gap, trig)[0]

  corners = lambda s: geometry.box_corners(s.objects.x, s.objects.y, s.objects.yaw, s.scenario.objects.length,
                                           s.scenario.objects.width)
  return {
      "dynamics": scan(one(lambda s: dynamics.bicycle_step(s.objects, jnp.ones_like(s.objects.x), 0.1 * jnp.ones_like(
          s.objects.x), cfg.dynamics, s.scenario.objects.length).x)),
      "observations": scan(one(lambda s: observations.flatten(env.observe(s, cfg)))),
      "observations_every_object": scan(one(lambda s: observations.flatten(observations.observe(s, cfg.obs)))),
      "metrics": scan(one(lambda s: jax.tree.map(jnp.sum, controlled_metrics(s)))),
      "metrics_every_object": scan(one(lambda s: jax.tree.map(jnp.sum, metrics.step_metrics(s, s, cfg.metrics)))),
      "candidate_refresh_per_call": scan(one(lambda s: env.refresh_controlled_candidates(s, cfg).road_cache)),
      "candidate_refresh_every_object_per_call": scan(one(lambda s: env.refresh_candidates(s, cfg).road_cache)),
      "offroad_ours": scan(one(lambda s: geometry.cached_edge_signed_distance(s.road_cache, corners(s)))),
      "offroad_brute_force_waymax_style": scan(one(lambda s: geometry.brute_force_edge_distance(
          s.scenario.roads, corners(s)))),
  }


def _components(scenes, batch_sizes, steps, cfg, repeats, full_rows):
  from shared.sim import env
  jax, _ = _jax()
  rows = []
  for b in batch_sizes:
    states = jax.jit(lambda s: env.reset_batch(s, jax.random.PRNGKey(0), cfg))(_batch(scenes, b))
    full = next((r["ms_per_step"] for r in full_rows if r["batch_size"] == b), None)
    for name in _component_fns(cfg, 1):
      n = max(2, steps // 10) if "brute" in name else steps  # the baseline is slow: fewer steps, same per-step unit
      fn = _component_fns(cfg, n)[name]
      comp, sec = _timed(fn, (states,), repeats)
      ms = sec / n * 1e3
      rows.append({"batch_size": b, "component": name, "ms_per_step": round(ms, 3), "compile_s": round(comp, 2),
                   "ratio_to_full_step": round(ms / full, 3) if full else None})
      print(json.dumps(rows[-1]), flush=True)
  ours = {r["batch_size"]: r["ms_per_step"] for r in rows if r["component"] == "offroad_ours"}
  for r in rows:
    if r["component"] == "offroad_brute_force_waymax_style":
      r["ratio_to_offroad_ours"] = round(r["ms_per_step"] / ours[r["batch_size"]], 1)
  return rows


def _machine() -> dict:
  jax, _ = _jax()
  return provenance.machine(jax=jax.__version__, jax_backend=jax.default_backend(), numpy=np.__version__)


def _goals(rows: list[dict]) -> dict:
  """The issue's targets: <= 2 ms at batch 1 and <= 10 ms at batch 16 with up to 64 agents; us per agent-step
  falling with the batch (strictly, and which rises from one batch size to the next exceed the timing spread: the
  rounds' min-max ranges of the two do not overlap)."""
  out = {}
  for label in sorted({r["scenes"] for r in rows}):
    most = max(x["agents_requested"] for x in rows)
    mine = [r for r in rows if r["scenes"] == label and r["agents_requested"] == most]
    by_b = {r["batch_size"]: r for r in mine}
    per = [by_b[b]["us_per_agent_step"] for b in sorted(by_b)]
    spans = [by_b[b].get("us_per_agent_step_range", [p, p]) for b, p in zip(sorted(by_b), per)]
    out[label] = {
        "batch1_ms_per_step": by_b.get(1, {}).get("ms_per_step"), "batch1_target_ms": 2.0,
        "batch16_ms_per_step": by_b.get(16, {}).get("ms_per_step"), "batch16_target_ms": 10.0,
        "us_per_agent_step_by_batch": dict(zip(map(str, sorted(by_b)), per)),
        "per_agent_cost_falls_with_batch": all(a >= b for a, b in zip(per, per[1:])),
        # a rise from one batch size to the next whose ranges over the timing rounds overlap is within the noise
        "rises_beyond_timing_spread": [f"{b0}->{b1}" for (b0, b1), a, b, sa, sb in zip(
            zip(sorted(by_b), sorted(by_b)[1:]), per, per[1:], spans, spans[1:]) if b > a and sb[0] > sa[1]],
    }
  return out


def run(args: argparse.Namespace) -> int:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from shared.scenes import source as scene_source
  from shared.scenes import types
  from shared.sim import env
  if args.quick:
    args.batch_sizes, args.steps, args.repeats = "1,16", min(args.steps, 20), min(args.repeats, 2)
  batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x]
  agents = [int(x) for x in args.agents.split(",") if x]
  scene_cfg = types.SceneConfig(max_objects=args.max_objects, max_road_points=args.max_road_points)
  cfg = env.EnvConfig(max_controlled=max(agents), done_on_collision=False, done_on_offroad=False,
                      stop_at_goal=False, rows_only=args.rows_only)
  other = provenance.OtherCpu()
  result = {"benchmark": "sim", "command": " ".join(["drivelab"] + sys.argv[1:]),
            "git_commit": provenance.git_commit(),
            "machine": _machine(), "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "scene_config": {"max_objects": args.max_objects, "max_road_points": args.max_road_points},
            "env": {"candidate_refresh_steps": cfg.candidate_refresh_steps,
                    "num_road_candidates": cfg.num_road_candidates, "done_signals": False,
                    "rows_only": cfg.rows_only},
            "steps": args.steps, "repeats": args.repeats, "full_step": [], "components": [], "skipped": []}
  sources = [s for s in args.scenes.split(",") if s]
  real_scenes = None
  for source in sources:
    label = "synthetic" if scene_source.is_synthetic(source) else "real"
    try:
      scenes = _load_scenes(source, scene_cfg, min(max(batch_sizes), 8))
    except (ImportError, FileNotFoundError, RuntimeError) as e:  # e.g. the generator not there yet
      result["skipped"].append(f"{source}: {e}")
      print(f"skipping {source}: {e}", flush=True)
      continue
    real_scenes = scenes if label == "real" or real_scenes is None else real_scenes
    result["full_step"] += _full_step_cases(scenes, label, batch_sizes, agents, args.steps, cfg, args.repeats)
  if real_scenes is not None and not args.no_components:
    comp_b = [1] + [b for b in batch_sizes if b > 1][:1]
    real_rows = [r for r in result["full_step"] if r["agents_requested"] == max(agents)]
    result["components"] = _components(real_scenes, comp_b, args.steps, cfg, args.repeats, real_rows)
  load1 = list(os.getloadavg())
  result["machine"]["loadavg_end_1_5_15min"] = load1
  # Noise: other processes' share of the CPUs during the run (the load average counts this run's own threads too,
  # so it is recorded but not used).
  share = other.share()
  result["machine"]["other_processes_cpu_share"] = share
  result["noisy"] = share is None or share > 0.1
  result["note"] = (f"other processes used {share:.0%} of the CPUs during the run: timings are upper bounds"
                    if result["noisy"] and share is not None else
                    "other processes' CPU use unknown (no /proc/stat)" if share is None else
                    f"machine quiet during the run (other processes: {share:.0%} of the CPUs)")
  result["goals"] = _goals(result["full_step"])
  print(json.dumps(result["goals"], indent=2))
  provenance.write_result(args.out, result)
  return 0


def register(subparsers) -> None:
  p = subparsers.add_parser("sim", help="simulator step cost by batch size and agents, its parts, off-road baseline")
  p.add_argument("--scenes", default=f"{REAL_DIR},synthetic",
                 help="comma-separated: scene folders or shards and/or 'synthetic' / 'synthetic:N' (default: the real "
                      "scenes and synthetic)")
  p.add_argument("--batch-sizes", default="1,16,64,256", help="comma-separated batch sizes")
  p.add_argument("--agents", default="1,64", help="comma-separated controlled agents per scene (<= 64)")
  p.add_argument("--steps", type=int, default=80, help="steps per rollout (WOMD: 80 from t=10)")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
  p.add_argument("--max-objects", type=int, default=128, help="SceneConfig.max_objects")
  p.add_argument("--max-road-points", type=int, default=20000, help="SceneConfig.max_road_points")
  p.add_argument("--no-components", action="store_true", help="skip the per-component timings")
  p.add_argument("--rows-only", action="store_true",
                 help="EnvConfig.rows_only: compile the controlled-rows branches alone (no every-object fallback; "
                      "every scene here has 1..max_controlled controlled): same step cost, shorter compile")
  p.add_argument("--quick", action="store_true", help="batch sizes 1,16, 20 steps, 2 repeats (for make bench)")
  p.add_argument("--out", default="benchmarks/results/sim.json", help="JSON result file")
  p.set_defaults(func=run)
