"""The environment: reset and step one scene (vmap-ed versions for a batch), pure functions over SimState.

  state = reset(scenario, rng, cfg)                      # log at cfg.init_step, controlled set chosen
  state, out = step(state, actions, cfg)                 # actions: (O,) int32 grid indices
  state, out = step_continuous(state, actions, cfg)      # actions: (O, 2) float32 (accel_mps2, steer)

Controlled objects that are not done move by the bicycle model; done ones stand still (stop at goal, crash with
done signals on) and leave the scene after their own log ends (`leave_at_log_end`); every other object is set to
its logged state at t+1. Road candidates (the K road points per object that observations and metrics look at) are
refreshed every `candidate_refresh_steps` steps by a while loop of 0 or 1 iterations on the step counter (a
lax.cond would copy the whole candidate cache every step); in `step_batch` it reads the first scene's counter
(scenes step in lockstep), so it stays a real branch.

Observations, metrics and candidate refreshes are computed for the controlled objects only, the scene's "rows"
(at most max_controlled, `observations.controlled_rows`), and returned as (O, ...) with zero (False) rows for every
other object. The rows' box gaps, log-path projections and every yaw's (cos, sin) are computed once per step,
outside the branches; rows past the controlled count are masked out of the top_k searches. Each refresh also caches
the candidates' stop-lane directions per traffic light. A scene with no controlled object (log replay) or more than
max_controlled gets everything for every object instead; `lax.cond` picks the branch per step (in `step_batch`,
the rows branch when every scene qualifies). Controlled objects' metrics are the same either way
(tests/unit/sim/test_sim_rows.py). `EnvConfig.rows_only` drops the every-object branch for callers that promise
1..max_controlled controlled objects per scene (a shorter compile); `EnvConfig.row_buckets` (off by default) adds
rows branches of fewer rows: a step pays for the smallest that holds the batch's largest controlled count.
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
from shared.sim import log_path
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
    row_buckets: smaller row counts (besides max_controlled) the step may compute for: each step takes the
      smallest that holds the batch's largest controlled count (one compiled branch per size; see the module
      docstring). Results do not depend on it; cost and compile time do.
    rows_only: promise that every scene stepped has 1..max_controlled controlled objects (training and benchmarks
      with reset's controlled sets; not log replay): the step then compiles the rows branches alone, without the
      every-object fallback (a quarter to a third less compile time). A scene that breaks the promise gets zero
      metrics and observations for all but its first max_controlled controlled objects (none at all when nothing
      is controlled) instead of the fallback's.
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
  row_buckets: tuple[int, ...] = ()
  rows_only: bool = False

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
    metrics: StepMetrics of the transition, (O,) fields: the controlled objects' rows filled, every other row
      zero (False), except in scenes with no controlled object (log replay), where every row is filled.
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
  cache = geometry.candidate_cache(state.scenario.roads, cand, geometry.edge_slots(cfg.num_road_candidates),
                                   state.scenario.lights)
  return state.replace(road_candidates=cand, road_cache=cache)


def _refresh_rows(state: SimState, cfg: EnvConfig, rows, slot, slot_ok) -> SimState:
  """refresh_candidates for the objects `rows` (M,) alone (see observations.controlled_rows for slot, slot_ok);
  the other objects keep their candidates. Needs road_index and road_cache (_with_search_structures)."""
  o = state.objects
  ahead = 0.5 * cfg.candidate_refresh_steps * cfg.dynamics.dt
  qx, qy = (o.x + o.vel_x * ahead)[rows], (o.y + o.vel_y * ahead)[rows]
  real = jnp.arange(rows.shape[0]) < jnp.sum(slot_ok.astype(jnp.int32))  # rows past the controlled: padding
  cand = geometry.nearest_road_points(state.scenario.roads, qx, qy, cfg.num_road_candidates, index=state.road_index,
                                      query_ok=real)
  cache = geometry.candidate_cache(state.scenario.roads, cand, geometry.edge_slots(cfg.num_road_candidates),
                                   state.scenario.lights)
  # Rows are scattered into the old arrays (padding rows out of bounds, dropped), not gathered per object: XLA on
  # CPU fuses the rows' computation into such a gather and redoes it per object.
  target = jnp.where(real, rows, slot.shape[0])
  keep = lambda new, old: old.at[target].set(new, mode="drop", unique_indices=True)
  return state.replace(road_candidates=keep(cand, state.road_candidates),
                       road_cache=jax.tree.map(keep, cache, state.road_cache))


def _rows(state: SimState, cfg: EnvConfig):
  """(rows (M,), slot (O,), slot_ok (O,), rows_only ()) of one scene: its controlled objects
  (observations.controlled_rows), and whether the scene computes for those alone (1..max_controlled of them)."""
  rows, slot, slot_ok = observations.controlled_rows(state.controlled, cfg.max_controlled)
  count = jnp.sum(state.controlled.astype(jnp.int32))
  return rows, slot, slot_ok, (count >= 1) & (count <= cfg.max_controlled)


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
                   road_index=geometry.build_road_index(scenario.roads),
                   path_end=log_path.log_path_end(scenario.objects, scenario.roads))
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


def _due(cfg: EnvConfig, t):
  return (t - cfg.init_step) % cfg.candidate_refresh_steps == 0


def refresh_controlled_candidates(state: SimState, cfg: EnvConfig) -> SimState:
  """refresh_candidates for the controlled objects alone (the first max_controlled); the others keep theirs."""
  rows, slot, slot_ok, _ = _rows(state, cfg)
  return _refresh_rows(_with_search_structures(state, cfg), cfg, rows, slot, slot_ok)


def _refresh_branch(state: SimState, cfg: EnvConfig, rows_only: bool) -> SimState:
  """refresh_candidates of the rows alone (rows_only, static) or of every object."""
  return refresh_controlled_candidates(state, cfg) if rows_only else refresh_candidates(state, cfg)


def _ended(prev: SimState, state: SimState, m: metrics.StepMetrics, cfg: EnvConfig):
  """Done flags, reward and the new state from the transition's metrics (only controlled rows matter)."""
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
  return state.replace(done=done, goal_reached=goal_reached), reward, done, truncated


def _finish(prev: SimState, state: SimState, cfg: EnvConfig, rows_only: bool,
            trig=None, prev_obs=None) -> tuple[SimState, StepOutput]:
  """Metrics, done flags, reward and observation of the transition prev -> state.

  rows_only (static): compute for the scene's controlled objects alone (M = max_controlled rows, see
  observations.controlled_rows; every other row of obs and metrics zero), which needs 1..max_controlled controlled
  objects; else for every object, zeroing the rows of objects not controlled where the scene has 1..max_controlled
  controlled (so both branches return the same thing for such scenes). The box gaps ((M, O) or (O, O)) and the
  projections on the logged paths are computed once and shared by the metrics and the observations; so are trig,
  (cos, sin) (O,) of state's yaws (computed here when None; _step_branches passes them in from outside its
  branches, where XLA on CPU cannot fuse cos and sin into the (M, O) loops that read them). prev_obs: the
  observation of prev this env returned (see step_batch_continuous), whose rows of objects not observed are zero: the
  new rows are scattered into it instead of into zeros.
  """
  o, log = state.objects, state.scenario.objects
  rows, slot, slot_ok, scene_rows_only = _rows(prev, cfg)
  boxes = (o.x, o.y, o.yaw, log.length, log.width)
  trig = _trig(state) if trig is None else trig
  if rows_only:
    gap = geometry.sat_gap(tuple(b[rows] for b in boxes), boxes, tuple(a[rows] for a in trig), trig)  # (M, O)
    m_rows, nearest = metrics.step_metrics_rows(prev, state, rows, cfg.metrics, gap, trig)
    m = observations.spread_rows(m_rows, slot, slot_ok)
  else:
    gap = geometry.sat_gap(boxes, boxes, trig, trig)  # (O, O)
    m, nearest = metrics.step_metrics_shared(prev, state, cfg.metrics, gap, trig)
    keep = ~scene_rows_only | slot_ok
    m = jax.tree.map(lambda a: jnp.where(keep, a, jnp.zeros_like(a)), m)
    gap, nearest = gap[rows], nearest[rows]
  state, reward, done, truncated = _ended(prev, state, m, cfg)
  obs = observations.observe_spread(state, rows, slot, slot_ok, cfg.obs, gap, nearest, trig, into=prev_obs)
  out = StepOutput(obs=obs, reward=reward.astype(jnp.float32), done=done,
                   truncated=truncated, metrics=m, controlled=prev.controlled, objects=state.objects)
  return state, out


def _trig(state: SimState):
  """(cos, sin) (O,) of every object's yaw, each materialised once: fused into the (M, O) and (M, k, ...) loops
  that read them (with a single finish branch nothing else stops it), XLA on CPU would evaluate them per element."""
  return geometry.materialised(jnp.cos(state.objects.yaw)), geometry.materialised(jnp.sin(state.objects.yaw))


def _row_sizes(cfg: EnvConfig) -> tuple[int, ...]:
  """Static row counts of the rows branches, ascending, the last max_controlled."""
  return tuple(sorted({b for b in cfg.row_buckets if 1 <= b < cfg.max_controlled} | {cfg.max_controlled}))


def _branch(counts, cfg: EnvConfig):
  """() int32: the rows branch (index into _row_sizes) holding every scene's controlled count (counts (B,)), or
  len(_row_sizes) (every object) when some scene has none or more than max_controlled (with cfg.rows_only: the
  largest rows branch then)."""
  sizes = _row_sizes(cfg)
  i = jnp.sum(jnp.max(counts) > jnp.asarray(sizes, jnp.int32)).astype(jnp.int32)
  if cfg.rows_only:
    return jnp.minimum(i, len(sizes) - 1)
  return jnp.where(jnp.min(counts) >= 1, i, len(sizes))


def _branches(cfg: EnvConfig, batched: bool):
  """(refresh functions, finish functions) per branch of _branch: the rows ones with max_controlled set to each of
  _row_sizes (same results for controlled counts that fit), then every object's (not with cfg.rows_only)."""
  vm = jax.vmap if batched else (lambda f: f)
  parts = lambda s: (s.road_candidates, s.road_cache)
  cfgs = [dataclasses.replace(cfg, max_controlled=m) for m in _row_sizes(cfg)]
  refresh = [vm(lambda s, c=c: parts(_refresh_branch(s, c, True))) for c in cfgs]
  finish = [vm(lambda p, s, tr, ob=None, c=c: _finish_parts(p, s, c, True, tr, ob)) for c in cfgs]
  if not cfg.rows_only:
    refresh.append(vm(lambda s: parts(_refresh_branch(s, cfg, False))))
    finish.append(vm(lambda p, s, tr, ob=None: _finish_parts(p, s, cfg, False, tr, ob)))
  return refresh, finish


def _finish_parts(prev: SimState, state: SimState, cfg: EnvConfig, rows_only: bool, trig=None, prev_obs=None):
  """_finish's (done, goal_reached, StepOutput): what leaves the branch (not the scene, which it does not change)."""
  state, out = _finish(prev, state, cfg, rows_only, trig, prev_obs)
  return state.done, state.goal_reached, out


def _step_branches(state: SimState, nxt: SimState, cfg: EnvConfig, counts, t, batched: bool, prev_obs=None):
  """Refresh (when due) and finish by the branch of `counts`; only _finish_parts pass out of the finish switch.

  The refresh is a while loop of 0 or 1 iterations carrying the candidates and their cache, not a lax.cond: a
  cond's branch that returns its input copies it (the whole (B, O, K) cache, every step it is not due), while a
  loop that does not run leaves its carry where it is, and one that does updates it in place."""
  b = _branch(counts, cfg)
  refresh, finish = _branches(cfg, batched)

  def refresh_body(carry):
    i, cand, cache = carry
    # Positions + 0 * i (exact; XLA cannot fold a float product by zero): the search depends on the loop, else XLA
    # hoists it out of the loop as invariant code and runs it every step.
    zero = 0.0 * i.astype(jnp.float32)
    o = nxt.objects
    s = nxt.replace(objects=o.replace(x=o.x + zero, y=o.y + zero), road_candidates=cand, road_cache=cache)
    cand, cache = refresh[0](s) if len(refresh) == 1 else jax.lax.switch(b, refresh, s)
    return i + 1, cand, cache

  runs = _due(cfg, t).astype(jnp.int32)
  _, cand, cache = jax.lax.while_loop(lambda c: c[0] < runs, refresh_body,
                                      (jnp.int32(0), nxt.road_candidates, nxt.road_cache))
  nxt = nxt.replace(road_candidates=cand, road_cache=cache)
  trig = (jax.vmap(_trig) if batched else _trig)(nxt)
  args = (state, nxt, trig) if prev_obs is None else (state, nxt, trig, prev_obs)
  done, goal, out = finish[0](*args) if len(finish) == 1 else jax.lax.switch(b, finish, *args)
  return nxt.replace(done=done, goal_reached=goal), out


def step_continuous(state: SimState, actions, cfg: EnvConfig = EnvConfig(),
                    prev_obs=None) -> tuple[SimState, StepOutput]:
  """One step of one scene with continuous actions (O, 2): (accel_mps2, steer angle or rate). prev_obs: see
  step_batch_continuous."""
  nxt = _with_search_structures(_advance(state, actions[..., 0], actions[..., 1], cfg), cfg)
  counts = jnp.sum(state.controlled.astype(jnp.int32))[None]
  return _step_branches(state, nxt, cfg, counts, nxt.t, False, prev_obs)


def step(state: SimState, actions, cfg: EnvConfig = EnvConfig(), prev_obs=None) -> tuple[SimState, StepOutput]:
  """One step of one scene with grid actions (O,) int32 (rows of actions.build_grid)."""
  return step_continuous(state, actions_lib.decode(actions, cfg.actions), cfg, prev_obs)


def reset_batch(scenarios: Scenario, rng, cfg: EnvConfig = EnvConfig()) -> SimState:
  """reset over a batch (B leading axis); one key per scene is split from `rng`."""
  keys = jax.random.split(rng, scenarios.objects.x.shape[0])
  return jax.vmap(lambda s, k: reset(s, k, cfg))(scenarios, keys)


def step_batch_continuous(state: SimState, actions, cfg: EnvConfig = EnvConfig(), prev_obs=None):
  """step_continuous over a batch; actions (B, O, 2). The branches (refresh or not; controlled rows alone, and how
  many, or every object) are decided once for the whole batch, reading the first scene's step counter (scenes of a
  batch step in lockstep), so they stay real branches instead of selects that would pay for every branch.

  prev_obs (optional): the observation of `state` this env returned (StepOutput.obs of the step that made it, or
  observe(state) per scene). Its rows of objects not observed are zero (the controlled set does not change within
  an episode), so the new rows are scattered into it instead of into zeros: no (B, O, ...) memset per step, and
  inside a scan that carries the observation (rollout) the scatter updates the carried buffer in place instead of
  being copied into it. Same result either way."""
  nxt = jax.vmap(lambda s, a: _with_search_structures(_advance(s, a[..., 0], a[..., 1], cfg), cfg))(state, actions)
  counts = jnp.sum(state.controlled.astype(jnp.int32), -1)
  return _step_branches(state, nxt, cfg, counts, nxt.t[0], True, prev_obs)


def step_batch(state: SimState, actions, cfg: EnvConfig = EnvConfig(), prev_obs=None):
  """step over a batch; actions (B, O) int32. prev_obs: see step_batch_continuous."""
  return step_batch_continuous(state, actions_lib.decode(actions, cfg.actions), cfg, prev_obs)


def is_continuous(actions) -> bool:
  """Static: whether an action array is continuous ((..., O, 2) float) rather than grid indices."""
  return jnp.issubdtype(actions.dtype, jnp.floating)


__all__ = ["EnvConfig", "StepOutput", "ObjectState", "reset", "step", "step_continuous", "reset_batch",
           "step_batch", "step_batch_continuous", "observe", "refresh_candidates", "refresh_controlled_candidates",
           "is_continuous"]
