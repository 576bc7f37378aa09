"""The environment: reset and step one scene (vmap-ed versions for a batch), pure functions over SimState.

  state = reset(scenario, rng, cfg)                      # log at cfg.init_step, controlled set chosen
  state, out = step(state, actions, cfg)                 # actions: (O,) int32 grid indices
  state, out = step_continuous(state, actions, cfg)      # actions: (O, 2) float32 (accel_mps2, steer)

Controlled objects that are not done move by the bicycle model; done ones stand still (stop at goal, crash with
done signals on) and leave the scene after their own log ends (`leave_at_log_end`); every other object is set to
its logged state at t+1. Road candidates (the K road points per
object that observations and metrics look at) are refreshed every `candidate_refresh_steps` steps under a
`lax.cond` on the step counter, so per-step cost does not grow with the map size. In `step_batch` the condition
reads the first scene's counter (scenes of a batch step in lockstep), so the refresh stays a real branch instead of
becoming a select that would pay for it every step.

Observations are computed for the controlled objects only (at most max_controlled egos) and returned as (O, ...)
with zero rows for every other object; metrics for every object. The box gaps and log-path projections are
computed once per step for both.

Shapes: one scene has O objects; StepOutput arrays are (O, ...); batched functions add a leading B axis.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from shared.scenes.types import WOMD_INIT_STEP, Scenario
from shared.sim import actions as actions_lib
from shared.sim import control, dynamics, geometry, metrics, observations, rewards
from shared.sim.datatypes import ObjectState, SimState


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """Everything a simulation run fixes up front.

  Attributes:
    dynamics: bicycle-model limits and dt.
    actions: the discrete action grid (and whether it steers by angle or rate).
    obs: observation sizes and scales (shared.sim.observations).
    metrics: metric thresholds (shared.sim.metrics).
    reward: reward weights (shared.sim.rewards).
    init_step: logged step the simulation starts from.
    control_mode: "sdc", "all" or "random" (shared.sim.control).
    max_controlled: most controlled objects per scene (1..64).
    done_on_collision: a controlled object that overlaps another is done (training: on; evaluation: off).
    done_on_offroad: a controlled object off the road is done (training: on; evaluation: off).
    stop_at_goal: a controlled object that reached its goal is done and stands still.
    leave_at_log_end: a controlled object leaves the scene (invalid, done, truncated) after its last logged step,
      as the logged car left the sensors' view there; kept, it would stand where the others' logs drive on
      (measured: 11% of moving grid-expert vehicles "collide" with such phantoms on the real scenes).
    candidate_refresh_steps: steps between road-candidate refreshes.
    num_road_candidates: K road points kept per object between refreshes.
  """

  dynamics: dynamics.DynamicsConfig = dynamics.DynamicsConfig()
  actions: actions_lib.ActionGridConfig = actions_lib.ActionGridConfig()
  obs: observations.ObsConfig = observations.ObsConfig()
  metrics: metrics.MetricsConfig = metrics.MetricsConfig()
  reward: rewards.RewardConfig = rewards.RewardConfig()
  init_step: int = WOMD_INIT_STEP
  control_mode: str = "all"
  max_controlled: int = 64
  done_on_collision: bool = True
  done_on_offroad: bool = True
  stop_at_goal: bool = True
  leave_at_log_end: bool = True
  candidate_refresh_steps: int = 10
  num_road_candidates: int = 64

  def __post_init__(self):
    if not 1 <= self.max_controlled <= 64:
      raise ValueError(f"EnvConfig.max_controlled must be in 1..64, got {self.max_controlled}")
    if self.control_mode not in control.CONTROL_MODES:
      raise ValueError(f"EnvConfig.control_mode must be one of {control.CONTROL_MODES}")
    if self.candidate_refresh_steps < 1:
      raise ValueError("EnvConfig.candidate_refresh_steps must be >= 1")


@flax.struct.dataclass
class StepOutput:
  """What a step derives from the new state (per object, (O, ...)).

  Attributes:
    obs: Observation of the new state, (O, ...) leaves: rows of the controlled objects filled (at most
      max_controlled; they are computed for those alone), every other row zero (remaining_time: every row).
    reward: (O,) float32, zero for objects not controlled or already done before this step.
    done: (O,) bool, episode over for this object (latched): terminal events, or truncation.
    truncated: (O,) bool, this step ended a controlled object's episode by time (the log's last step, or its own
      log ended with leave_at_log_end) rather than by a terminal event; bootstrap through these.
    metrics: StepMetrics of the transition.
    controlled: (O,) bool.
    objects: ObjectState after the step (trajectories for ADE and rendering).
  """

  obs: observations.Observation
  reward: jax.Array
  done: jax.Array
  truncated: jax.Array
  metrics: metrics.StepMetrics
  controlled: jax.Array
  objects: ObjectState


def refresh_candidates(state: SimState, cfg: EnvConfig) -> SimState:
  """Recomputes each object's road candidates around where it will be half a refresh interval ahead."""
  o = state.objects
  ahead = 0.5 * cfg.candidate_refresh_steps * cfg.dynamics.dt
  cand = geometry.nearest_road_points(state.scenario.roads, o.x + o.vel_x * ahead, o.y + o.vel_y * ahead,
                                      cfg.num_road_candidates, index=state.road_index)
  cache = geometry.candidate_cache(state.scenario.roads, cand, geometry.edge_slots(cfg.num_road_candidates))
  return state.replace(road_candidates=cand, road_cache=cache)


def _with_search_structures(state: SimState, cfg: EnvConfig) -> SimState:
  """Fills road_index and road_cache of a hand-built state (static check), so both branches of the refresh
  condition return the same pytree."""
  if state.road_index is None:
    state = state.replace(road_index=geometry.build_road_index(state.scenario.roads))
  if state.road_cache is None:
    state = state.replace(road_cache=metrics.road_cache(state))
  return state


def reset(scenario: Scenario, rng, cfg: EnvConfig = EnvConfig()) -> SimState:
  """SimState at cfg.init_step: every object as logged, the controlled set chosen, candidates computed."""
  rng, sel = jax.random.split(rng)
  objects = dynamics.object_state_from_log(scenario, cfg.init_step)
  controlled = control.select_controlled(scenario, cfg.control_mode, cfg.max_controlled, sel, cfg.init_step)
  O = objects.x.shape[-1]
  state = SimState(scenario=scenario, t=jnp.asarray(cfg.init_step, jnp.int32), objects=objects,
                   controlled=controlled, done=jnp.zeros(O, bool), goal_reached=jnp.zeros(O, bool),
                   road_candidates=jnp.zeros((O, cfg.num_road_candidates), jnp.int32), rng=rng,
                   road_index=geometry.build_road_index(scenario.roads))
  return refresh_candidates(state, cfg)


def observe(state: SimState, cfg: EnvConfig = EnvConfig()) -> observations.Observation:
  """Observation of a state (what the policy sees at reset, before the first step): (O, ...) with the rows of the
  controlled objects filled and every other row zero, as in StepOutput.obs."""
  return observations.observe_controlled(state, cfg.max_controlled, cfg.obs)


def _advance(state: SimState, accel, steer, cfg: EnvConfig) -> SimState:
  """Moves every object to step t+1: bicycle model, standing still when done, or the log."""
  o = state.scenario.objects
  t_next = jnp.minimum(state.t + 1, o.x.shape[-1] - 1)
  log_next = dynamics.object_state_from_log(state.scenario, t_next)
  sim = dynamics.bicycle_step(state.objects, accel, steer, cfg.dynamics, o.length,
                              cfg.actions.mode == "steering_rate")
  zero = jnp.zeros_like(sim.x)
  still = state.objects.replace(vel_x=zero, vel_y=zero, accel_mps2=zero)
  driven = jax.tree.map(lambda a, b: jnp.where(state.done, a, b), still, sim)
  objects = jax.tree.map(lambda a, b: jnp.where(state.controlled, a, b), driven, log_next)
  valid = state.objects.valid
  if cfg.leave_at_log_end:
    steps = jnp.arange(o.valid.shape[-1])
    valid &= jnp.max(jnp.where(o.valid, steps, -1), axis=-1) >= t_next
  objects = objects.replace(valid=jnp.where(state.controlled, valid, log_next.valid))
  return state.replace(t=t_next, objects=objects)


def _maybe_refresh(state: SimState, cfg: EnvConfig, t) -> SimState:
  state = _with_search_structures(state, cfg)
  due = (t - cfg.init_step) % cfg.candidate_refresh_steps == 0
  return jax.lax.cond(due, lambda s: refresh_candidates(s, cfg), lambda s: s, state)


def _finish(prev: SimState, state: SimState, cfg: EnvConfig) -> tuple[SimState, StepOutput]:
  """Metrics, done flags, reward and observation of the transition prev -> state.

  The box gaps (O, O) and the projections on the logged paths are computed once and shared by the metrics (every
  object) and the observations (the controlled objects only).
  """
  o, log = state.objects, state.scenario.objects
  gap = geometry.pairwise_sat_gap(o.x, o.y, o.yaw, log.length, log.width)
  m, nearest = metrics.step_metrics_shared(prev, state, cfg.metrics, gap)
  goal_reached = prev.goal_reached | m.goal_reached
  ended = jnp.zeros_like(prev.done)
  if cfg.stop_at_goal:
    ended |= goal_reached
  if cfg.done_on_collision:
    ended |= m.overlap
  if cfg.done_on_offroad:
    ended |= m.offroad
  acting = prev.controlled & ~prev.done
  terminal = acting & ended
  left = acting & ~state.objects.valid  # its log ended (leave_at_log_end)
  last = state.t >= state.scenario.objects.x.shape[-1] - 1
  truncated = acting & ~terminal & (left | last)
  done = prev.done | terminal | left
  reward = rewards.compute_reward(m, prev, state, cfg.reward) * acting
  state = state.replace(done=done, goal_reached=goal_reached)
  obs = observations.observe_controlled(state, cfg.max_controlled, cfg.obs, gap, nearest)
  out = StepOutput(obs=obs, reward=reward.astype(jnp.float32), done=done,
                   truncated=truncated, metrics=m, controlled=prev.controlled, objects=state.objects)
  return state, out


def step_continuous(state: SimState, actions, cfg: EnvConfig = EnvConfig()) -> tuple[SimState, StepOutput]:
  """One step of one scene with continuous actions (O, 2): (accel_mps2, steer angle or rate)."""
  nxt = _advance(state, actions[..., 0], actions[..., 1], cfg)
  nxt = _maybe_refresh(nxt, cfg, nxt.t)
  return _finish(state, nxt, cfg)


def step(state: SimState, actions, cfg: EnvConfig = EnvConfig()) -> tuple[SimState, StepOutput]:
  """One step of one scene with grid actions (O,) int32 (rows of actions.build_grid)."""
  return step_continuous(state, actions_lib.decode(actions, cfg.actions), cfg)


def reset_batch(scenarios: Scenario, rng, cfg: EnvConfig = EnvConfig()) -> SimState:
  """reset over a batch (B leading axis); one key per scene is split from `rng`."""
  keys = jax.random.split(rng, scenarios.objects.x.shape[0])
  return jax.vmap(lambda s, k: reset(s, k, cfg))(scenarios, keys)


def step_batch_continuous(state: SimState, actions, cfg: EnvConfig = EnvConfig()):
  """step_continuous over a batch; actions (B, O, 2)."""
  nxt = jax.vmap(lambda s, a: _with_search_structures(_advance(s, a[..., 0], a[..., 1], cfg), cfg))(state, actions)
  due = (nxt.t[0] - cfg.init_step) % cfg.candidate_refresh_steps == 0
  nxt = jax.lax.cond(due, jax.vmap(lambda s: refresh_candidates(s, cfg)), lambda s: s, nxt)
  return jax.vmap(lambda p, s: _finish(p, s, cfg))(state, nxt)


def step_batch(state: SimState, actions, cfg: EnvConfig = EnvConfig()):
  """step over a batch; actions (B, O) int32."""
  return step_batch_continuous(state, actions_lib.decode(actions, cfg.actions), cfg)


def is_continuous(actions) -> bool:
  """Static: whether an action array is continuous ((..., O, 2) float) rather than grid indices."""
  return jnp.issubdtype(actions.dtype, jnp.floating)


__all__ = ["EnvConfig", "StepOutput", "ObjectState", "reset", "step", "step_continuous", "reset_batch",
           "step_batch", "step_batch_continuous", "observe", "refresh_candidates", "is_continuous"]
