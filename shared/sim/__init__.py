"""shared.sim: the JAX driving simulator (pure functions over padded Scenario / SimState pytrees).

Modules (import the module, not its names: `from shared.sim import env`):
  datatypes     SimState, ObjectState
  actions       ActionGridConfig, build_grid, num_actions: the discrete (acceleration, steering) grid
  dynamics      DynamicsConfig, bicycle_step: the kinematic bicycle model and its limits
  inverse       infer_expert_actions, grid_expert_action: expert actions from the log
  control       select_controlled: which objects the policy drives
  geometry      boxes, overlaps, road candidates, road-edge distances
  log_path      the logged path as a route: arc length, projection, continuation past the log's end
  observations  ObsConfig, observe: ego-frame normalised observations
  metrics       MetricsConfig, step_metrics: overlap, off-road, off-route, goal, progress, lights, comfort
  rewards       RewardConfig, compute_reward
  env           EnvConfig, reset / step / step_continuous and their batched versions, StepOutput
  loop          run: the one collect loop (lax.scan over env.step_batch), label_ok, key_chain
  rollout       rollout / rollout_batch over loop.run, the grid and continuous log-tracking experts
  episode       per-agent episode metrics and their all / moving / parked summaries
  prefetch      Prefetcher: double-buffered device prefetch of scene batches
  road_index    the per-scene road-point index and each object's road candidates
  rows          Rows: the M controlled objects of each scene (acting rows) and back to the O object slots
Modules load on first access, so importing one part never pulls in (or fails on) the others.
"""

from __future__ import annotations

import importlib

_MODULES = ("actions", "control", "datatypes", "dynamics", "env", "episode", "geometry", "inverse", "log_path",
            "loop", "metrics", "observations", "prefetch", "rewards", "road_index", "rollout", "rows")


def __getattr__(name: str):
  if name in _MODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(list(globals()) + list(_MODULES))


__all__ = list(_MODULES)
