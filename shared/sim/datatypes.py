"""Simulator state and the per-step outputs derived from it.

Shapes are for one scene; a batch adds leading axes and is `jax.vmap`-ed. O = max_objects, K = road candidates per
object, T = logged timesteps.
"""

from __future__ import annotations

from typing import Any

import flax.struct

from shared.scenes.types import Scenario


@flax.struct.dataclass
class ObjectState:
  """Current state of every object (simulated or replayed from the log).

  Attributes:
    x, y: (O,) float32 box centre in metres (scene-local frame).
    yaw: (O,) float32 heading in radians, wrapped to [-pi, pi).
    vel_x, vel_y: (O,) float32 velocity in m/s (global frame).
    valid: (O,) bool, the object exists now (log validity for replayed objects; controlled objects stay valid).
    accel_mps2: (O,) float32 last applied longitudinal acceleration (for jerk).
    steer_rad: (O,) float32 last applied steering angle (for steering-rate control).
  """

  x: Any
  y: Any
  yaw: Any
  vel_x: Any
  vel_y: Any
  valid: Any
  accel_mps2: Any
  steer_rad: Any


@flax.struct.dataclass
class SimState:
  """Everything `step` needs; immutable, replaced each step.

  Attributes:
    scenario: the logged scene (Scenario, arrays (O, T) etc.).
    t: () int32 current timestep index into the log.
    objects: ObjectState of every object at step t.
    controlled: (O,) bool, the objects whose actions come from the policy; the rest follow the log.
    done: (O,) bool, episode over for this object (goal reached with stop-at-goal, crash with done signals on).
    goal_reached: (O,) bool, latched once the object came within the goal radius (the env computes metrics for
      the controlled objects only, so it stays False for the others unless nothing in the scene is controlled).
    road_candidates: (O, K) int32 indices of the road points nearest each object, refreshed every few steps so
      per-step cost does not grow with the map size (by the env: the controlled objects' rows only, unless nothing
      in the scene is controlled).
    rng: PRNG key for stochastic parts (random control subsets, sampled actions).
    road_index: geometry.RoadIndex of the scene's map (depends on the map only; built once at reset so refreshes
      do not sort the map again); None in hand-built states, then refreshes build it.
    road_cache: geometry.CandidateCache, the road candidates' attributes gathered at each refresh (steps read
      these (O, K) arrays instead of gathering from the map); None in hand-built states, then gathered on use.
    path_end: log_path.PathEnd, where each logged path goes on past its end (depends on the log and the lanes
      only: computed at reset); None in hand-built states, then computed on use.
  """

  scenario: Scenario
  t: Any
  objects: ObjectState
  controlled: Any
  done: Any
  goal_reached: Any
  road_candidates: Any
  rng: Any
  road_index: Any = None
  road_cache: Any = None
  path_end: Any = None
