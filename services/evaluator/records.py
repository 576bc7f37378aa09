"""Evaluation records and what a run directory holds (the data half of the report; report.py renders it).

A run directory holds:
  evaluations/NNN_<policy>.json   one record per `drivelab eval` (make_record), with per-agent columns
  evaluations/NNN_<policy>.npz    its trajectories x, y, yaw (N scenes, O, T) for the GIFs
  eval/eval_*.json                periodic evaluations written by the evaluator service (optional)
  metrics_history.jsonl           learning metrics, one JSON object per line (optional; rows with kind "eval" are
                                  the trainer's periodic held-out evaluations)
Records compare a policy with the log replay of the same agents ("new failures": agents that fail under the policy
but not in their own log, so log artefacts are never counted as the policy's failures).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import importlib.metadata
import json
import os
import pathlib
import platform

import numpy as np

from shared.scenes import source as scene_source
from shared.scenes import types
from shared.sim import episode

EVAL_DIR, PERIODIC_DIR, REPORT_DIR = "evaluations", "eval", "report"
HISTORY_FILES = ("metrics_history.jsonl", "history.jsonl", "metrics.jsonl")
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "optax", "chex", "matplotlib", "pillow", "drivelab")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def versions() -> dict[str, str | None]:
  out: dict[str, str | None] = {"python": platform.python_version()}
  for p in PACKAGES:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      out[p] = None
  return out


def git_commit(root: pathlib.Path = REPO_ROOT) -> str | None:
  """HEAD's commit, read from .git without running git (None outside a checkout)."""
  try:
    head = (root / ".git" / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
      return head
    ref = head[5:]
    loose = root / ".git" / ref
    if loose.is_file():
      return loose.read_text().strip()
    for line in (root / ".git" / "packed-refs").read_text().splitlines():
      if line.endswith(" " + ref):
        return line.split()[0]
  except OSError:
    pass
  return None


def _jsonable(x):
  if dataclasses.is_dataclass(x):
    return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
  if isinstance(x, (tuple, list)):
    return [_jsonable(v) for v in x]
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, np.generic):
    return x.item()
  return x


def make_record(policy: str, per_agent: dict[str, np.ndarray], metas: list[types.SceneMeta], source: dict,
                env_cfg, scene_cfg: types.SceneConfig, held_out: list[int], split: dict) -> dict:
  """An evaluation record: per-agent columns of the evaluated agents, summaries overall / per split / per scene.

  per_agent: {EpisodeMetrics field: (N, O)}; source: how to reload the scenes (shared.scenes.source.record:
  {"scenes": path or "synthetic", "num", "seed"[, "vehicles"]}); held_out: scene indices of the held-out split;
  split: {"held_out_fraction", "seed"}.
  """
  ev = per_agent["evaluated"].astype(bool)
  scene_idx, obj_idx = np.nonzero(ev)
  agents = {"scene": scene_idx.tolist(), "object": obj_idx.tolist()}
  agents.update({k: v[ev].tolist() for k, v in per_agent.items()})
  held = np.isin(np.arange(len(metas)), held_out)
  per_scene = [{"name": m.name, "scenario_id": m.scenario_id, "split": "held_out" if held[i] else "train",
                "summary": episode.summarize(per_agent, np.arange(len(metas))[:, None] == i)}
               for i, m in enumerate(metas)]
  return {
      "kind": "drivelab-evaluation", "format": 1, "policy": policy, "source": source,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "git_commit": git_commit(), "versions": versions(),
      "config": {"env": _jsonable(env_cfg), "scenes": _jsonable(scene_cfg)},
      "split": dict(split, held_out=[int(i) for i in held_out]),
      "summary": episode.summarize(per_agent),
      "summary_train": episode.summarize(per_agent, ~held[:, None]),
      "summary_held_out": episode.summarize(per_agent, held[:, None]),
      "per_scene": per_scene, "agents": agents,
  }


def _atomic_json(path: str, obj) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(path + ".tmp", path)


def write_evaluation(run_dir: str, record: dict, trajectories: dict[str, np.ndarray]) -> str:
  """Saves a record (and its trajectories as .npz) under run_dir/evaluations/; returns the JSON path."""
  d = os.path.join(run_dir, EVAL_DIR)
  os.makedirs(d, exist_ok=True)
  n = len(glob.glob(os.path.join(d, "*.json")))
  stem = os.path.join(d, f"{n:03d}_{record['policy'].replace('/', '_')}")
  np.savez_compressed(stem + ".npz", **{k: np.asarray(v, np.float32) for k, v in trajectories.items()})
  record = dict(record, id=os.path.basename(stem), trajectories=os.path.basename(stem) + ".npz")
  _atomic_json(stem + ".json", record)
  return stem + ".json"


def load_evaluations(run_dir: str) -> list[dict]:
  out = []
  for p in sorted(glob.glob(os.path.join(run_dir, EVAL_DIR, "*.json"))):
    with open(p) as f:
      rec = json.load(f)
    if rec.get("kind") == "drivelab-evaluation":
      out.append(rec)
  return out


def load_periodic(run_dir: str) -> list[dict]:
  """Rows of the evaluator service's eval/eval_*.json ({params_version, split, metrics, time_s})."""
  rows = []
  for p in sorted(glob.glob(os.path.join(run_dir, PERIODIC_DIR, "eval_*.json"))):
    try:
      with open(p) as f:
        r = json.load(f)
      rows.append({"params_version": r.get("params_version"), "split": r.get("split"), "time_s": r.get("time_s"),
                   **{k: v for k, v in r.get("metrics", {}).items() if isinstance(v, (int, float))}})
    except (OSError, ValueError):
      continue
  return sorted(rows, key=lambda r: (r.get("time_s") or 0.0))


def load_history(run_dir: str) -> list[dict]:
  for name in HISTORY_FILES:
    p = os.path.join(run_dir, name)
    if os.path.isfile(p):
      rows = []
      with open(p) as f:
        for line in f:
          try:
            rows.append(json.loads(line))
          except ValueError:
            continue  # a line cut by a crash mid-write
      return [r for r in rows if isinstance(r, dict)]
  return []


def agent_columns(record: dict) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in record["agents"].items()}


def expert_on_same_agents(record: dict, log_record: dict) -> tuple[dict, dict, list[int]] | None:
  """(log summary on the record's agents, new-failure counts, new failures per scene), or None when the scenes
  differ. New failures: agents that fail under the policy but not in the log replay (per split, with
  denominators)."""
  if [s["scenario_id"] for s in record["per_scene"]] != [s["scenario_id"] for s in log_record["per_scene"]]:
    return None
  pol, log = agent_columns(record), agent_columns(log_record)
  index = {(s, o): i for i, (s, o) in enumerate(zip(log["scene"], log["object"]))}
  rows = np.array([index.get((s, o), -1) for s, o in zip(pol["scene"], pol["object"])], np.int64)
  have = rows >= 0
  picked = {k: v[np.maximum(rows, 0)] for k, v in log.items()}
  picked["evaluated"] = have
  summary = episode.summarize(picked)
  new = {}
  for split, m in (("all", have), ("moving", have & pol["moving"].astype(bool)),
                   ("parked", have & ~pol["moving"].astype(bool))):
    fail = pol["failure"].astype(bool) & ~picked["failure"].astype(bool) & m
    new[split] = {"rate": float(fail.sum() / m.sum()) if m.sum() else None, "count": int(fail.sum()),
                  "total": int(m.sum())}
  fail = pol["failure"].astype(bool) & ~picked["failure"].astype(bool) & have
  per_scene = np.bincount(pol["scene"][fail], minlength=len(record["per_scene"])).tolist()
  return summary, new, per_scene


def load_scenes(record: dict) -> tuple[list[types.Scenario], list[types.SceneMeta]]:
  """The scenes a record was evaluated on, remade from its source (shared.scenes.source.from_record: "vehicles" is
  recorded by `drivelab train` when it narrows the generator's range) with its caps. Raises ValueError when the
  source is gone or malformed."""
  sc = record["config"]["scenes"]
  cfg = types.SceneConfig(**{k: sc[k] for k in ("max_objects", "max_road_points", "max_tl_lanes", "num_timesteps",
                                                 "init_step")})
  loaded = scene_source.load(scene_source.from_record(record["source"]), cfg)
  return loaded.scenarios, loaded.metas


def worst_scenes(record: dict, k: int, new_failures: list[int] | None = None) -> list[int]:
  """Scene indices by new failures (the policy's own, when a log replay is there to tell them apart from the log's
  artefacts), then failure rate (desc), then mean progress ratio (asc); scenes without agents are skipped."""
  keyed = []
  for i, s in enumerate(record["per_scene"]):
    a = s["summary"]["all"]
    if a["agents"]:
      prog = a["progress_ratio"]["mean"]
      own = -(new_failures[i] / a["agents"]) if new_failures is not None else 0.0
      keyed.append((own, -(a["failure"]["rate"] or 0.0), prog if prog is not None else float("inf"), i))
  return [i for *_, i in sorted(keyed)[:k]]


__all__ = ["EVAL_DIR", "PERIODIC_DIR", "REPORT_DIR", "make_record", "write_evaluation", "load_evaluations",
           "load_periodic", "load_history", "agent_columns", "expert_on_same_agents", "load_scenes", "worst_scenes",
           "versions", "git_commit"]
