"""Rewards: a linear combination of the step metrics (one scene; vmap for a batch).

  r = goal * newly_reached + collision * overlap + offroad * offroad + offroute * offroute
      + red_light * red_light_run + stop_sign * stop_line_violation
      + progress * clip(capped(state) - capped(prev), +-progress_clip_m)
        capped(s) = min(progress_m(s), log_progress_m(s.t) + progress_lead_m)   (uncapped when progress_lead_m is None)
      + speeding * max(speed - speed_limit_mps, 0)
      + comfort_accel * accel^2 + comfort_lat * lat_accel^2 + comfort_jerk * jerk^2
The default is paper 000's episodic reward (+1 goal, -1 crash: collision or off-road). Paper 002's dense terms
(progress along the route, speeding, squared longitudinal and lateral acceleration) and the high negative rewards
that come with its done signals (collision, off-route, red light, stop line) are `RewardConfig.paper_002()`; the
paper gives no numbers, those weights are ours. The event weights are the done penalties: with done signals on,
an event ends the episode on the step that pays its weight. Objects not valid get 0; the env zeroes objects that
are not acting.
"""

from __future__ import annotations

import dataclasses

import chex
import jax.numpy as jnp

from shared.sim import geometry
from shared.sim import log_path
from shared.sim.datatypes import SimState
from shared.sim.metrics import StepMetrics


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """Weights of the linear reward (per event or per unit, per step).

  Attributes:
    goal: on the step the goal is first reached.
    collision: per step overlapping another object.
    offroad: per step off the road.
    offroute: per step farther than the off-route threshold from the logged path.
    red_light: on the step a red light's stop line is crossed.
    stop_sign: on the step a stop sign is passed without stopping.
    progress: per metre of progress along the logged path.
    progress_clip_m: largest progress counted in one step (the nearest path point can jump where a path loops).
    progress_lead_m: progress counts only up to this far ahead of where the log itself is at that step (None: no
      cap). The other objects replay the log and do not react, so progress bought by driving faster than the log
      is progress into the car ahead; with the cap, matching the log earns the whole progress reward.
    speeding: per m/s above speed_limit_mps, per step.
    speed_limit_mps: speed above which speeding is paid (WOMD has no posted limits).
    comfort_accel: per (m/s^2)^2 of longitudinal acceleration.
    comfort_lat: per (m/s^2)^2 of lateral acceleration.
    comfort_jerk: per (m/s^3)^2 of jerk.
  """

  goal: float = 1.0
  collision: float = -1.0
  offroad: float = -1.0
  offroute: float = 0.0
  red_light: float = 0.0
  stop_sign: float = 0.0
  progress: float = 0.0
  progress_clip_m: float = 5.0
  progress_lead_m: float | None = None
  speeding: float = 0.0
  speed_limit_mps: float = 20.0
  comfort_accel: float = 0.0
  comfort_lat: float = 0.0
  comfort_jerk: float = 0.0

  @classmethod
  def paper_002(cls) -> "RewardConfig":
    """Paper 002's terms: dense progress, speeding and comfort; large penalties on its done events."""
    return cls(goal=0.0, collision=-5.0, offroad=-5.0, offroute=-5.0, red_light=-5.0, stop_sign=-5.0,
               progress=0.05, progress_lead_m=5.0, speeding=-0.02, comfort_accel=-0.002, comfort_lat=-0.002,
               comfort_jerk=0.0)


def compute_reward(metrics: StepMetrics, prev: SimState, state: SimState, cfg: RewardConfig = RewardConfig()):
  """(O,) float32 reward of the transition prev -> state, given its metrics."""
  chex.assert_equal_shape([metrics.overlap, prev.goal_reached])
  f = lambda b: b.astype(jnp.float32)
  r = cfg.goal * f(metrics.goal_reached & ~prev.goal_reached)
  r += cfg.collision * f(metrics.overlap) + cfg.offroad * f(metrics.offroad) + cfg.offroute * f(metrics.offroute)
  r += cfg.red_light * f(metrics.red_light_run) + cfg.stop_sign * f(metrics.stop_line_violation)
  if cfg.progress:  # static: skip the projection of prev when the term is off
    log = state.scenario.objects
    _, prev_progress, _ = log_path.project_on_log_path(log, prev.objects.x, prev.objects.y, state.path_end)
    now = metrics.progress_m
    if cfg.progress_lead_m is not None:
      lead_prev, lead_now = log_path.log_arc_length_at(log, jnp.stack([prev.t, state.t])) + cfg.progress_lead_m
      now, prev_progress = jnp.minimum(now, lead_now), jnp.minimum(prev_progress, lead_prev)
    delta = jnp.where(prev.objects.valid, now - prev_progress, 0.0)
    r += cfg.progress * jnp.clip(delta, -cfg.progress_clip_m, cfg.progress_clip_m)
  r += cfg.speeding * jnp.maximum(metrics.speed_mps - cfg.speed_limit_mps, 0.0)
  r += cfg.comfort_accel * metrics.accel_mps2**2 + cfg.comfort_lat * metrics.lat_accel_mps2**2
  r += cfg.comfort_jerk * metrics.jerk_mps3**2
  return jnp.where(metrics.valid, r, 0.0).astype(jnp.float32)


__all__ = ["RewardConfig", "compute_reward"]
