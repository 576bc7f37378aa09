"""A/B in one process: the fused trainer's iteration time (real scenes from ../shared/data, the self-driving car
controlled, quick recipe's tiny MLP, 4 scenes per iteration) with acting rows (M = 1) against the old layout where
the policy and the update ran on every object slot (M forced to O = max_objects). Interleaved repeats, medians.

  JAX_PLATFORMS=cpu .venv/bin/python benchmarks/scripts/rows_ab.py [MAX_OBJECTS] [OUT.json]
"""
import os, sys, time, json, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import jax
from services.cli import bench_learn as bl, train_cmd
from shared import evaluation
from shared.algos import fused
from shared.sim import rows as rows_lib
from shared.scenes import types
from shared.training import recipes
s = recipes.settings(True)
max_objects = int(sys.argv[1]) if len(sys.argv) > 1 else 64
caps = types.SceneConfig(max_objects=max_objects, max_road_points=3000)
scenes, metas, _ = train_cmd.load_scenes(bl.os.path.normpath(bl.REAL_DIR), None, 0, caps)
agent = bl._agent(s)
env_cfg = train_cmd.train_env_config("sdc")
orig = rows_lib.num_rows
res = {}
for algo in ("ppo", "bc"):
  cfg = recipes.bench_config(s, algo, env_cfg, 1e-4, 4)
  fns = {}
  for mode in ("rows", "all_slots"):
    rows_lib.num_rows = orig if mode == "rows" else (lambda cm, mc, o: o)
    carry = fused.init_carry(agent, cfg, scenes, jax.random.PRNGKey(0))
    fn = fused.make_train_iteration(agent, cfg)
    carry, m = fn(carry); jax.block_until_ready(m)  # compile (num_rows is read while tracing)
    fns[mode] = [fn, carry, []]
  rows_lib.num_rows = orig
  for rep in range(8):
    for mode in ("rows", "all_slots"):
      fn, carry, ts = fns[mode]
      t0 = time.perf_counter(); carry, m = fn(carry); jax.block_until_ready(m); ts.append(time.perf_counter() - t0)
      fns[mode][1] = carry
  res[algo] = {mode: round(statistics.median(v[2]) * 1e3, 1) for mode, v in fns.items()}
  res[algo]["speedup"] = round(res[algo]["all_slots"] / res[algo]["rows"], 2)
from services.cli import provenance
out = {"benchmark": "rows_ab", "command": " ".join(["python"] + sys.argv), "git_commit": provenance.git_commit(),
       "machine": provenance.machine(), "utc": provenance.utc_now(), "load_avg_1m_after": os.getloadavg()[0],
       "max_objects": max_objects, "ms_per_iteration_median": res}
print(json.dumps(out["ms_per_iteration_median"]))
if len(sys.argv) > 2:
  provenance.write_result(sys.argv[2], out)
