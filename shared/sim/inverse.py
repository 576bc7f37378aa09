"""Expert actions inferred from the log (logs carry no action labels): continuous and snapped to the grid.

Continuous actions come from tracking the log with the bicycle model itself: a model state starts at an object's
first valid step (and again at `init_step`, the state `env.reset` starts from); gaps in the log are tracked through
their linear interpolation (`log_target`), so a blinking track neither stops nor coasts; each step we
solve for the (acceleration, steering) whose step lands exactly on the next logged position, then advance the model
state with those actions. Because the model's heading after a step is that step's direction of motion, a step
solved this way carries no heading error into the next one, so replaying the actions open-loop from the logged
state at `init_step` reproduces the log up to the dynamics limits (measured: see tests/unit/sim/test_sim_inverse.py).
Reversing is a negative speed, not a half-turn; near standstill the heading may turn at most max_curvature per
metre travelled, so a parked car's position jitter cannot spin it.

The grid action at step t is the "grid expert": the action whose one-step prediction from the logged state puts the
box corners nearest the logged box at t+1 (`grid_expert_action`, also used closed-loop by the replay command).

Shapes (O objects, T logged steps, A grid actions): ExpertActions arrays are (O, T-1); entry t is the action taking
step t to t+1, valid only where both are logged.
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp

from shared.scenes.types import WOMD_INIT_STEP, Scenario
from shared.sim import actions as actions_lib
from shared.sim import dynamics
from shared.sim.datatypes import ObjectState


@flax.struct.dataclass
class ExpertActions:
  """Inferred expert actions; entry t moves step t to t+1.

  Attributes:
    accel_mps2: (O, T-1) float32 acceleration.
    steer: (O, T-1) float32 steering angle in rad (grid mode "steering") or steering rate in rad/s.
    grid_index: (O, T-1) int32 grid-expert action.
    valid: (O, T-1) bool, both t and t+1 are logged. Inside gaps of the log the actions track the interpolated
      log (so open-loop replay stays on course) but are marked invalid: they are not demonstrations.
  """

  accel_mps2: jax.Array
  steer: jax.Array
  grid_index: jax.Array
  valid: jax.Array


def solve_action(obj: ObjectState, target_x, target_y, length, cfg: dynamics.DynamicsConfig,
                 steering_rate: bool = False):
  """(accel, steer or rate), each (O,), whose bicycle step takes `obj` to (target_x, target_y).

  The new heading is the direction of the displacement (flipped when the target is behind: reversing), turned
  at most max_curvature per metre; the speed is the displacement along that heading over dt.
  """
  chex.assert_equal_shape([obj.x, target_x, target_y, length])
  dt = cfg.dt
  dx, dy = target_x - obj.x, target_y - obj.y
  cy, sy = jnp.cos(obj.yaw), jnp.sin(obj.yaw)
  lon, lat = dx * cy + dy * sy, -dx * sy + dy * cy
  forward = lon >= 0.0
  dyaw_wanted = jnp.where(forward, jnp.arctan2(lat, lon), jnp.arctan2(-lat, -lon))
  wb = dynamics.wheelbase(length, cfg)
  kappa_max = jnp.minimum(cfg.max_curvature_per_m, jnp.tan(cfg.max_steer_rad) / wb)
  chord = jnp.hypot(dx, dy)
  dyaw = jnp.clip(dyaw_wanted, -kappa_max * chord * 0.999, kappa_max * chord * 0.999)
  yaw_next = obj.yaw + dyaw
  travel = dx * jnp.cos(yaw_next) + dy * jnp.sin(yaw_next)  # signed, along the new heading
  moving = jnp.abs(travel) > 1e-5
  kappa = jnp.where(moving, dyaw / jnp.where(moving, travel, 1.0), 0.0)
  steer = jnp.arctan(kappa * wb)
  accel = (travel / dt - dynamics.signed_speed(obj)) / dt
  if steering_rate:
    steer = (steer - obj.steer_rad) / dt
  return accel, steer


def box_corners(x, y, yaw, length, width):
  """(..., 4, 2) corners of oriented boxes, counter-clockwise from front-left."""
  c, s = jnp.cos(yaw)[..., None], jnp.sin(yaw)[..., None]
  hl = 0.5 * length[..., None] * jnp.array([1.0, -1.0, -1.0, 1.0])
  hw = 0.5 * width[..., None] * jnp.array([1.0, 1.0, -1.0, -1.0])
  return jnp.stack([x[..., None] + hl * c - hw * s, y[..., None] + hl * s + hw * c], axis=-1)


def grid_expert_action(obj: ObjectState, length, width, target_x, target_y, target_yaw, target_valid,
                       dyn_cfg: dynamics.DynamicsConfig, grid_cfg: actions_lib.ActionGridConfig):
  """(O,) int32 grid action whose one-step prediction lands nearest the target box (mean corner distance).

  Where the target is not logged the action that stops the car (and steers least) is chosen.
  """
  chex.assert_equal_shape([obj.x, length, width, target_x, target_y, target_yaw, target_valid])
  grid = actions_lib.build_grid(grid_cfg)
  step = lambda a: dynamics.bicycle_step(obj, jnp.full_like(obj.x, a[0]), jnp.full_like(obj.x, a[1]), dyn_cfg,
                                         length, grid_cfg.mode == "steering_rate")
  nxt = jax.vmap(step)(grid)  # ObjectState of (A, O)
  pred = box_corners(nxt.x, nxt.y, nxt.yaw, length[None], width[None])
  goal = box_corners(target_x, target_y, target_yaw, length, width)[None]
  corner_err = jnp.mean(jnp.linalg.norm(pred - goal, axis=-1), axis=-1)  # (A, O)
  stop_err = jnp.abs(dynamics.signed_speed(nxt)) + 1e-3 * jnp.abs(grid[:, 1:2])
  cost = jnp.where(target_valid[None], corner_err, stop_err)
  return jnp.argmin(cost, axis=0).astype(jnp.int32)


def log_target(objects, t):
  """The logged pose of every object at step t, linearly interpolated across gaps in the log.

  Returns (x, y, yaw, ok), each (O,); ok is False before an object's first and after its last logged step.
  Tracking a gap's interpolation keeps experts on course where the log blinks (some WOMD tracks are valid on only
  every other step) instead of stopping or coasting until it comes back.
  """
  steps = jnp.arange(objects.valid.shape[-1])
  prev = jnp.max(jnp.where(objects.valid & (steps <= t), steps, -1), axis=-1)
  nxt = jnp.min(jnp.where(objects.valid & (steps >= t), steps, steps.shape[0]), axis=-1)
  ok = (prev >= 0) & (nxt < steps.shape[0])
  p, n = jnp.maximum(prev, 0), jnp.minimum(nxt, steps.shape[0] - 1)
  w = jnp.where(n > p, (t - p) / jnp.maximum(n - p, 1), 0.0)
  take = lambda a, i: jnp.take_along_axis(a, i[:, None], axis=-1)[:, 0]
  lerp = lambda a: take(a, p) + w * (take(a, n) - take(a, p))
  yaw = take(objects.yaw, p) + w * dynamics.wrap(take(objects.yaw, n) - take(objects.yaw, p))
  return lerp(objects.x), lerp(objects.y), dynamics.wrap(yaw), ok


def _track_step(scenario: Scenario, dyn_cfg, grid_cfg, init_step: int, obj: ObjectState, t):
  """One tracking step: (re)start from the log where needed, solve the action to t+1, advance the model."""
  o = scenario.objects
  log_t = dynamics.object_state_from_log(scenario, t)
  _, _, _, ok_t = log_target(o, t)
  _, _, _, ok_prev = log_target(o, jnp.maximum(t - 1, 0))
  restart = log_t.valid & ((t == 0) | ~ok_prev | (t == init_step))
  obj = jax.tree.map(lambda a, b: jnp.where(restart, a, b), log_t, obj)
  nx, ny, nyaw, ok_next = log_target(o, t + 1)
  track = ok_t & ok_next  # inside the logged span: gaps are tracked through their interpolation
  rate = grid_cfg.mode == "steering_rate"
  accel, steer = solve_action(obj, nx, ny, o.length, dyn_cfg, rate)
  # The grid expert acts from the logged pose (what a policy observes), with the tracked steering angle.
  valid = log_t.valid & jnp.take(o.valid, t + 1, axis=-1)
  idx = grid_expert_action(log_t.replace(steer_rad=obj.steer_rad), o.length, o.width, nx, ny, nyaw, valid,
                           dyn_cfg, grid_cfg)
  stepped = dynamics.bicycle_step(obj, accel, steer, dyn_cfg, o.length, rate)
  # Report what the model applied after its limits: replaying these gives the same states.
  accel = stepped.accel_mps2 * track
  steer = ((stepped.steer_rad - obj.steer_rad) / dyn_cfg.dt if rate else stepped.steer_rad) * track
  obj = jax.tree.map(lambda a, b: jnp.where(track, a, b), stepped, obj)
  return obj, (accel, steer, idx, valid)


def infer_expert_actions(scenario: Scenario, dyn_cfg: dynamics.DynamicsConfig = dynamics.DynamicsConfig(),
                         grid_cfg: actions_lib.ActionGridConfig = actions_lib.ActionGridConfig(),
                         init_step: int = WOMD_INIT_STEP) -> ExpertActions:
  """Expert actions for every object of one scene (vmap for a batch); see the module docstring.

  Args:
    scenario: one Scenario, objects (O, T).
    dyn_cfg: the dynamics the actions are solved for (use the env's).
    grid_cfg: the action grid (its mode decides whether `steer` holds angles or rates).
    init_step: static; the tracked state restarts from the log here so that a simulation reset at this step
      (env.reset) replays the actions exactly.
  """
  chex.assert_rank(scenario.objects.x, 2)
  T = scenario.objects.x.shape[-1]
  obj0 = dynamics.object_state_from_log(scenario, 0)
  body = lambda obj, t: _track_step(scenario, dyn_cfg, grid_cfg, init_step, obj, t)
  _, (accel, steer, idx, valid) = jax.lax.scan(body, obj0, jnp.arange(T - 1))
  return ExpertActions(accel_mps2=accel.T, steer=steer.T, grid_index=idx.T, valid=valid.T)


def replay_open_loop(scenario: Scenario, expert: ExpertActions,
                     dyn_cfg: dynamics.DynamicsConfig = dynamics.DynamicsConfig(),
                     grid_cfg: actions_lib.ActionGridConfig = actions_lib.ActionGridConfig(),
                     init_step: int = WOMD_INIT_STEP):
  """(x, y), each (O, T - init_step): every object driven by its continuous expert actions from the logged state at
  init_step, the bicycle model alone (no env); column 0 is the logged start."""
  chex.assert_rank(scenario.objects.x, 2)
  T = scenario.objects.x.shape[-1]
  rate = grid_cfg.mode == "steering_rate"

  def body(obj, t):
    obj = dynamics.bicycle_step(obj, expert.accel_mps2[:, t], expert.steer[:, t], dyn_cfg,
                                scenario.objects.length, rate)
    return obj, (obj.x, obj.y)

  obj0 = dynamics.object_state_from_log(scenario, init_step)
  _, (xs, ys) = jax.lax.scan(body, obj0, jnp.arange(init_step, T - 1))
  return jnp.concatenate([obj0.x[:, None], xs.T], 1), jnp.concatenate([obj0.y[:, None], ys.T], 1)
