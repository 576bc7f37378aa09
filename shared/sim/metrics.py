"""Per-step metrics for the transition prev -> state (one scene; vmap for a batch).

`step_metrics` gives every object's metrics, (O,) each; `step_metrics_rows` those of the objects `rows` (M,)
alone, (M,) each, at the cost of M objects instead of O (box gaps (M, O); off-road, log-path projection, lights and
stop signs of M objects), with values equal to those rows of `step_metrics`. The env uses the latter for its
controlled objects (shared.sim.env: the other objects' metrics are zero there). They feed the rewards, the done
signals and the evaluator alike. Definitions:
  overlap: the object's box intersects another valid object's box (separating axes over all pairs, O x O).
  min_box_distance_m: Euclidean distance to the nearest other box (0 when overlapping); exact for the
    `exact_neighbours` nearest boxes by separating-axis gap, which contain the true nearest one in practice.
  offroad: some box corner is on the outer side of its nearest road edge (geometry.road_edge_signed_distance,
    Waymax's convention); road_edge_distance_m is the largest corner value (positive = outside). Candidates that
    are far from the object (stale: it was not valid at the last refresh) are not trusted: offroad is False then.
  offroute / route_distance_m: distance to the object's own logged path above `offroute_distance_m`; the path goes
    on past the log's end along the lanes that carry on from there, else straight (log_path.log_path_end,
    project_on_log_path), so driving on along the road is not off-route.
  goal_reached: centre within `goal_radius_m` of (goal_x, goal_y) (GPUDrive: 2 m).
  progress_m: arc length of the logged path (continued past its end) at the projection of the current position.
  red_light_run: the centre's move prev -> state crosses a light's stop line (a segment of 2 x
    `stop_line_half_width_m` through the stop point, across the lane's direction, taken from the road candidate
    of that lane nearest the stop point, else the object's heading) forwards while the light is in a stop state,
    and no light crossed at the same place (lanes sharing a stop point: straight vs turn arrow) allows going.
  stop_line_violation: a stop sign goes from ahead to behind within `stop_sign_radius_m` of the line of travel
    while the speed exceeds sqrt(stop_speed^2 + 2 stop_accel stop_window): a vehicle that was below stop_speed
    within the last stop_window metres cannot be faster unless it accelerated harder than stop_accel. This needs
    no memory beyond prev and state.
  speed_mps, accel_mps2, jerk_mps3, lat_accel_mps2: kinematics; controlled objects report their applied
    acceleration, replayed ones finite differences of the log.
On the real logs (log replay, every vehicle valid at t=10, refresh every 10 steps) these give 0.4% ever overlap and
40.2% ever off-road, moving vehicles 1.2% (Waymax on the same logs: 0.4%, 40.6%, 1.2%).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

from shared.scenes import types
from shared.sim import geometry
from shared.sim import log_path
from shared.sim.datatypes import SimState


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
  """Thresholds of the per-step metrics.

  Attributes:
    dt: seconds per step (WOMD 0.1).
    goal_radius_m: goal reached within this distance of the goal point (GPUDrive: 2 m).
    offroute_distance_m: off-route beyond this distance from the object's logged path (about one lane and a half).
    candidate_trust_m: road candidates farther than this from the object are stale; off-road is not decided then.
    exact_neighbours: boxes per object whose exact distance is computed for min_box_distance_m.
    stop_line_half_width_m: half the length of a traffic light's stop line across its lane.
    stop_sign_radius_m: a stop sign is passed when it goes from ahead to behind within this lateral distance
      (WOMD stop signs stand 2.6-3.7 m from their lane's centre line).
    stop_speed_mps: below this speed a vehicle counts as stopped.
    stop_window_m: it must have stopped within this distance before passing the sign.
    stop_accel_mps2: acceleration bound that turns "stopped within stop_window_m" into a speed bound at the sign.
  """

  dt: float = 0.1
  goal_radius_m: float = 2.0
  offroute_distance_m: float = 5.0
  candidate_trust_m: float = 25.0
  exact_neighbours: int = 2
  stop_line_half_width_m: float = 2.0
  stop_sign_radius_m: float = 4.0
  stop_speed_mps: float = 0.5
  stop_window_m: float = 3.0
  stop_accel_mps2: float = 2.0


@flax.struct.dataclass
class StepMetrics:
  """Metrics of one transition, (O,) each; see the module docstring for definitions."""

  valid: Any
  overlap: Any
  min_box_distance_m: Any
  offroad: Any
  road_edge_distance_m: Any
  offroute: Any
  route_distance_m: Any
  goal_reached: Any
  progress_m: Any
  red_light_run: Any
  stop_line_violation: Any
  speed_mps: Any
  accel_mps2: Any
  jerk_mps3: Any
  lat_accel_mps2: Any


def _rows_view(state: SimState, rows) -> SimState:
  """state with every per-object array taken at `rows` (M,) (objects, logs, controlled, road candidates and their
  cache), so per-object metrics run on M objects; rows None: state itself."""
  if rows is None:
    return state
  take = lambda tree: jax.tree.map(lambda a: a[rows], tree)
  return state.replace(objects=take(state.objects), scenario=state.scenario.replace(
      objects=take(state.scenario.objects)), controlled=state.controlled[rows],
      road_candidates=state.road_candidates[rows], road_cache=take(road_cache(state)),
      path_end=None if state.path_end is None else take(state.path_end))


def _boxes(state: SimState, cfg: MetricsConfig, gap=None, rows=None, trig=None):
  """overlap (M,), min_box_distance_m (M,) of the objects `rows` (M,) against every object (rows None: every
  object, M = O); gap: their (M, O) separating-axis gaps if the caller has them; trig: (cos, sin) (O,) of every
  yaw, likewise."""
  o, log = state.objects, state.scenario.objects
  n = o.x.shape[0]
  take = (lambda a: a) if rows is None else (lambda a: a[rows])
  boxes = (o.x, o.y, o.yaw, log.length, log.width)
  if gap is None:
    gap = geometry.pairwise_sat_gap(*boxes) if rows is None else geometry.sat_gap(tuple(map(take, boxes)), boxes)
  other = ~jnp.eye(n, dtype=bool) if rows is None else jnp.arange(n)[None, :] != rows[:, None]
  pair = take(o.valid)[:, None] & o.valid[None, :] & other
  gap = jnp.where(pair, gap, jnp.inf)
  overlap = jnp.any(gap < 0.0, 1)
  m = min(cfg.exact_neighbours, max(n - 1, 1))
  nb, found = geometry.smallest_k(gap, m)  # (M, m) smallest gaps
  corners = geometry.box_corners(*boxes, trig=trig)  # (O, 4, 2)
  exact = geometry.box_distance(take(corners)[:, None], corners[nb], jnp.take_along_axis(gap, nb, 1) < 0.0)
  exact = jnp.where(found, exact, jnp.inf)
  return overlap & take(o.valid), jnp.min(exact, 1)


def road_cache(state: SimState) -> geometry.CandidateCache:
  """The state's CandidateCache (refreshed with its candidates), or one gathered now for hand-built states."""
  if state.road_cache is not None:
    return state.road_cache
  cand = state.road_candidates
  return geometry.candidate_cache(state.scenario.roads, cand, geometry.edge_slots(cand.shape[1]),
                                  state.scenario.lights)


def _offroad(state: SimState, cfg: MetricsConfig, cache: geometry.CandidateCache, trig=None):
  """offroad (O,), road_edge_distance_m (O,); trig: (cos, sin) (O,) of the yaws if the caller has them."""
  o, log = state.objects, state.scenario.objects
  corners = geometry.box_corners(o.x, o.y, o.yaw, log.length, log.width, trig)
  sd = jnp.max(geometry.cached_edge_signed_distance(cache, corners), 1)
  trusted = geometry.cached_candidate_reach(cache, o.x, o.y) <= cfg.candidate_trust_m
  sd = jnp.where(trusted, sd, geometry.NO_EDGE_DISTANCE_M)
  return (sd > 0.0) & o.valid, sd


def _kinematics(prev: SimState, state: SimState, cfg: MetricsConfig):
  """speed, accel, jerk, lateral accel (O,) each."""
  o, p, log = state.objects, prev.objects, state.scenario.objects
  speed = jnp.hypot(o.vel_x, o.vel_y)
  speed_tm1 = jnp.hypot(p.vel_x, p.vel_y)
  t2 = jnp.maximum(prev.t - 1, 0)
  speed_tm2 = jnp.hypot(log.vel_x[:, t2], log.vel_y[:, t2])
  fd_accel = (speed - speed_tm1) / cfg.dt
  fd_jerk = (speed - 2.0 * speed_tm1 + speed_tm2) / cfg.dt**2
  ctrl = prev.controlled
  accel = jnp.where(ctrl, o.accel_mps2, fd_accel)
  jerk = jnp.where(ctrl, (o.accel_mps2 - p.accel_mps2) / cfg.dt, jnp.where(log.valid[:, t2], fd_jerk, 0.0))
  yaw_rate = jnp.arctan2(jnp.sin(o.yaw - p.yaw), jnp.cos(o.yaw - p.yaw)) / cfg.dt
  both = o.valid & p.valid
  zero = lambda a: jnp.where(both, a, 0.0)
  return jnp.where(o.valid, speed, 0.0), zero(accel), zero(jerk), zero(speed * yaw_rate)


def _red_light_run(prev: SimState, state: SimState, cfg: MetricsConfig, cache: geometry.CandidateCache):
  """(O,) bool: crossed a red light's stop line during prev -> state."""
  lights = state.scenario.lights
  t = state.t
  live = lights.valid[:, t]  # (L,)
  red = live & jnp.isin(lights.state[:, t], jnp.asarray(types.TL_STOP_STATES))
  if cache.stop_found is None:  # gathered without the lights (hand-built): search the candidates now
    found, lane_x, lane_y = geometry.stop_lane_directions(cache, lights)
  else:
    found, lane_x, lane_y = cache.stop_found, cache.stop_dir_x, cache.stop_dir_y
  p0, p1 = prev.objects, state.objects
  nx = jnp.where(found, lane_x, jnp.cos(p0.yaw)[:, None])
  ny = jnp.where(found, lane_y, jnp.sin(p0.yaw)[:, None])
  rx0, ry0 = p0.x[:, None] - lights.stop_x[None], p0.y[:, None] - lights.stop_y[None]  # (O, L)
  rx1, ry1 = p1.x[:, None] - lights.stop_x[None], p1.y[:, None] - lights.stop_y[None]
  s0, s1 = rx0 * nx + ry0 * ny, rx1 * nx + ry1 * ny  # signed distance past the stop line
  f = -s0 / jnp.maximum(s1 - s0, 1e-6)
  lateral = jnp.abs(nx * (ry0 + f * (ry1 - ry0)) - ny * (rx0 + f * (rx1 - rx0)))
  crossed = (s0 < 0.0) & (s1 >= 0.0) & (lateral <= cfg.stop_line_half_width_m) & live[None, :]
  return jnp.any(crossed & red[None, :], 1) & ~jnp.any(crossed & ~red[None, :], 1)


def _stop_sign_violation(prev: SimState, state: SimState, speed, cfg: MetricsConfig,
                         cache: geometry.CandidateCache):
  """(O,) bool: passed a stop sign too fast to have stopped just before it."""
  k0 = geometry.edge_slots(state.road_candidates.shape[1])
  cols = slice(k0, k0 + geometry.NUM_STOP)
  sx, sy = cache.x[:, cols], cache.y[:, cols]
  ok = cache.ok[:, cols] & (cache.map_type[:, cols] == types.MAP_STOP_SIGN)
  p0, p1 = prev.objects, state.objects
  mx, my = p1.x - p0.x, p1.y - p0.y
  moved = jnp.hypot(mx, my)
  hx = jnp.where(moved > 1e-3, mx / jnp.maximum(moved, 1e-3), jnp.cos(p0.yaw))[:, None]
  hy = jnp.where(moved > 1e-3, my / jnp.maximum(moved, 1e-3), jnp.sin(p0.yaw))[:, None]
  ahead0 = (sx - p0.x[:, None]) * hx + (sy - p0.y[:, None]) * hy
  ahead1 = (sx - p1.x[:, None]) * hx + (sy - p1.y[:, None]) * hy
  lateral = jnp.abs(hx * (sy - p1.y[:, None]) - hy * (sx - p1.x[:, None]))
  passed = ok & (ahead0 > 0.0) & (ahead1 <= 0.0) & (lateral <= cfg.stop_sign_radius_m)
  bound = (cfg.stop_speed_mps**2 + 2.0 * cfg.stop_accel_mps2 * cfg.stop_window_m) ** 0.5
  slowest = jnp.minimum(speed, jnp.hypot(p0.vel_x, p0.vel_y))
  return jnp.any(passed, 1) & (slowest > bound)


def step_metrics(prev: SimState, state: SimState, cfg: MetricsConfig = MetricsConfig()) -> StepMetrics:
  """Metrics of every object for the transition prev -> state."""
  return step_metrics_shared(prev, state, cfg)[0]


def step_metrics_shared(prev: SimState, state: SimState, cfg: MetricsConfig = MetricsConfig(), gap=None,
                        trig=None):
  """(StepMetrics, nearest (O,) int32): the metrics of every object, plus each object's nearest logged step (the
  segment start of its projection on its own logged path), which observations reuse for the route. gap: the (O, O)
  separating-axis gaps of state's boxes when the caller computed them (shared with observations), else computed
  here; trig: (cos, sin) (O,) of state's yaws, likewise."""
  return _step_metrics(prev, state, cfg, None, gap, trig)


def step_metrics_rows(prev: SimState, state: SimState, rows, cfg: MetricsConfig = MetricsConfig(), gap=None,
                      trig=None):
  """(StepMetrics (M,) each, nearest (M,) int32) of the objects `rows` (M,) int32 alone: equal to those rows of
  `step_metrics_shared`, at the cost of M objects (boxes are still checked against every object). gap: the (M, O)
  separating-axis gaps of the rows' boxes to every box (geometry.sat_gap) when the caller has them; trig: (cos,
  sin) (O,) of every yaw of state, likewise."""
  return _step_metrics(prev, state, cfg, rows, gap, trig)


def _step_metrics(prev: SimState, state: SimState, cfg: MetricsConfig, rows, gap, trig=None):
  chex.assert_equal_shape([prev.objects.x, state.objects.x])
  overlap, box_d = _boxes(state, cfg, gap, rows, trig)
  view = _rows_view(state, rows)  # per-object quantities of the rows alone
  pview = prev if rows is None else prev.replace(objects=jax.tree.map(lambda a: a[rows], prev.objects),
                                                 controlled=prev.controlled[rows])
  o, log = view.objects, view.scenario.objects
  cache = road_cache(view)
  view_trig = trig if trig is None or rows is None else tuple(a[rows] for a in trig)
  offroad, edge_d = _offroad(view, cfg, cache, view_trig)
  route_d, progress, nearest = log_path.project_on_log_path(log, o.x, o.y, view.path_end)
  goal_d = jnp.hypot(o.x - log.goal_x, o.y - log.goal_y)
  speed, accel, jerk, lat = _kinematics(pview, view, cfg)
  red = _red_light_run(pview, view, cfg, cache)
  stop = _stop_sign_violation(pview, view, speed, cfg, cache)
  v = o.valid
  return StepMetrics(
      valid=v, overlap=overlap, min_box_distance_m=box_d, offroad=offroad, road_edge_distance_m=edge_d,
      offroute=v & (route_d > cfg.offroute_distance_m), route_distance_m=route_d,
      goal_reached=v & (goal_d <= cfg.goal_radius_m), progress_m=jnp.where(v, progress, 0.0),
      red_light_run=red & v & pview.objects.valid, stop_line_violation=stop & v & pview.objects.valid,
      speed_mps=speed, accel_mps2=accel, jerk_mps3=jerk, lat_accel_mps2=lat), nearest


__all__ = ["MetricsConfig", "StepMetrics", "step_metrics", "step_metrics_shared", "step_metrics_rows"]
