"""Ego-frame, normalised observations (one scene; vmap for a batch).

`observe` observes every object (O, ...); `observe_rows` only the egos listed (M, ...); `observe_controlled` (what
the env returns) computes the controlled objects' rows alone (at most max_controlled) and spreads them into (O, ...)
with zero rows for every other object, so its cost grows with max_controlled, not with the scene's object count.

Per ego (O, ... or M, ...), all positions and directions rotated into the object's own frame (x forward, y left):
  ego (O, EGO_FEATURES): speed, length, width, goal x, goal y, cos and sin of the bearing to the goal, last
    acceleration and steering.
  agents (O, num_agents, AGENT_FEATURES) + agents_mask: the nearest other valid objects by centre distance within
    max_agent_distance_m: x, y, cos and sin of relative yaw, relative velocity x, y, length, width, exact minimum
    box distance, type one-hot (vehicle, pedestrian, cyclist, other).
  roads (O, num_road_points, ROAD_FEATURES) + roads_mask: from the object's road candidates (the K points
    refreshed every few steps, so cost does not grow with the map): the nearest half of the slots road edges, up to
    two stop signs, the rest the nearest other points (lanes, lines, crosswalks); x, y, direction cos and sin,
    class one-hot (ROAD_CLASSES).
  route (O, num_route_points, 2) + route_mask: the object's own logged positions every `route_stride` steps after
    its nearest logged point; past the end of its log, points on its continuation (log_path.log_path_end: along
    the lanes that carry on, else straight), one mean logged step length apart (ahead of the object's own
    projection once it is past the end); masked only in gaps of the log and for paths that never move (masked
    points hold the goal).
  light (O, LIGHT_FEATURES): the nearest traffic-light stop point ahead: present, x, y, state one-hot (stop,
    caution, go, unknown).
  remaining_time (O, 1): fraction of the log left; for the value head only (a policy that sees it learns to
    exploit the episode end, paper 002 section 3.3.1).
Positions are divided by position_scale_m and clipped to [-CLIP, CLIP]; speeds by speed_scale_mps; sizes by
size_scale_m. Invalid objects get all-zero observations and empty masks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from shared.scenes import types
from shared.sim import geometry
from shared.sim import log_path
from shared.sim.datatypes import SimState

CLIP = 2.0
EGO_FEATURES = 9
AGENT_FEATURES = 13
ROAD_CLASSES = ("lane", "road_line", "road_edge", "stop_sign", "crosswalk", "other")
ROAD_FEATURES = 4 + len(ROAD_CLASSES)
LIGHT_FEATURES = 7


@dataclasses.dataclass(frozen=True)
class ObsConfig:
  """Sizes and scales of the observation.

  Attributes:
    num_agents: nearest other objects observed.
    num_road_points: nearest road points observed (taken from the object's road candidates).
    num_route_points: logged-route points ahead.
    route_stride: logged steps between route points (5 = 0.5 s).
    max_agent_distance_m: objects farther than this are masked out.
    max_road_distance_m: road points farther than this are masked out.
    max_light_distance_m: stop points farther than this are ignored.
    position_scale_m: metres per unit for positions and distances.
    speed_scale_mps: m/s per unit for speeds and velocities.
    size_scale_m: metres per unit for lengths and widths.
    accel_scale_mps2: m/s^2 per unit for the last acceleration.
    steer_scale_rad: radians per unit for the last steering.
  """

  num_agents: int = 8
  num_road_points: int = 32
  num_route_points: int = 8
  route_stride: int = 5
  max_agent_distance_m: float = 50.0
  max_road_distance_m: float = 50.0
  max_light_distance_m: float = 60.0
  position_scale_m: float = 50.0
  speed_scale_mps: float = 20.0
  size_scale_m: float = 10.0
  accel_scale_mps2: float = 4.0
  steer_scale_rad: float = 0.6


@flax.struct.dataclass
class Observation:
  """Observation of every object; see the module docstring for the layout."""

  ego: Any
  agents: Any
  agents_mask: Any
  roads: Any
  roads_mask: Any
  route: Any
  route_mask: Any
  light: Any
  remaining_time: Any


def observation_size(cfg: ObsConfig = ObsConfig()) -> int:
  """Length of `flatten(obs)` per object: everything the policy sees (masks included, remaining time excluded)."""
  return (EGO_FEATURES + cfg.num_agents * (AGENT_FEATURES + 1) + cfg.num_road_points * (ROAD_FEATURES + 1)
          + cfg.num_route_points * 3 + LIGHT_FEATURES)


def flatten(obs: Observation):
  """(..., O, observation_size) float32: the policy inputs concatenated (masks as 0/1)."""
  lead = obs.ego.shape[:-1]
  parts = [obs.ego, obs.agents, obs.agents_mask[..., None], obs.roads, obs.roads_mask[..., None], obs.route,
           obs.route_mask[..., None], obs.light]
  return jnp.concatenate([p.astype(jnp.float32).reshape(*lead, -1) for p in parts], -1)


def _to_ego(dx, dy, cos, sin):
  """Rotates world-frame vectors into the ego frame; cos/sin broadcast against dx/dy."""
  return dx * cos + dy * sin, -dx * sin + dy * cos


def _pos(v, cfg: ObsConfig):
  return jnp.clip(v / cfg.position_scale_m, -CLIP, CLIP)


@flax.struct.dataclass
class _Egos:
  """The observing objects (M,): their indices and pose, gathered once for every feature group."""

  rows: Any
  x: Any
  y: Any
  cos: Any
  sin: Any


def _egos(state: SimState, rows, trig=None) -> _Egos:
  """trig: (cos, sin) (O,) of every yaw when the caller has them."""
  o = state.objects
  cos, sin = (jnp.cos(o.yaw[rows]), jnp.sin(o.yaw[rows])) if trig is None else (trig[0][rows], trig[1][rows])
  return _Egos(rows=rows, x=o.x[rows], y=o.y[rows], cos=cos, sin=sin)


def _ego(state: SimState, e: _Egos, cfg: ObsConfig):
  o, log, r = state.objects, state.scenario.objects, e.rows
  gx, gy = _to_ego(log.goal_x[r] - e.x, log.goal_y[r] - e.y, e.cos, e.sin)
  bearing = jnp.arctan2(gy, gx)
  speed = jnp.hypot(o.vel_x[r], o.vel_y[r])
  return jnp.stack([speed / cfg.speed_scale_mps, log.length[r] / cfg.size_scale_m, log.width[r] / cfg.size_scale_m,
                    _pos(gx, cfg), _pos(gy, cfg), jnp.cos(bearing), jnp.sin(bearing),
                    o.accel_mps2[r] / cfg.accel_scale_mps2, o.steer_rad[r] / cfg.steer_scale_rad], -1)


def _agents(state: SimState, e: _Egos, cfg: ObsConfig, gap=None, row_ok=None, trig=None):
  """Nearest other objects of each ego (M, num_agents, AGENT_FEATURES); gap: the (M, O) separating-axis gaps of
  the egos' boxes to every box, when the caller already has them (the env shares them with the metrics); row_ok
  (M,): rows that matter (others get no agents, which makes their top_k cheap: its CPU cost grows with the finite
  entries); trig: (cos, sin) (O,) of every yaw when the caller has them."""
  o, log, r = state.objects, state.scenario.objects, e.rows
  n = o.x.shape[0]
  k = min(cfg.num_agents, n)
  d = jnp.hypot(o.x[None, :] - e.x[:, None], o.y[None, :] - e.y[:, None])  # (M, O)
  ok = o.valid[r][:, None] & o.valid[None, :] & (jnp.arange(n) != r[:, None]) & (d <= cfg.max_agent_distance_m)
  if row_ok is not None:
    ok &= row_ok[:, None]
  # lax.top_k beats k argmin passes here (k = 8); distances are >= +0, so ties (lower index first) and the
  # order match geometry.smallest_k exactly.
  neg, nb = jax.lax.top_k(-jnp.where(ok, d, jnp.inf), k)  # (M, k)
  mask = jnp.isfinite(neg)
  c, s = e.cos[:, None], e.sin[:, None]
  rx, ry = _to_ego(o.x[nb] - e.x[:, None], o.y[nb] - e.y[:, None], c, s)
  vx, vy = _to_ego(o.vel_x[nb] - o.vel_x[r][:, None], o.vel_y[nb] - o.vel_y[r][:, None], c, s)
  dyaw = o.yaw[nb] - o.yaw[r][:, None]
  boxes = (o.x, o.y, o.yaw, log.length, log.width)
  if gap is None:
    gap = geometry.sat_gap(tuple(b[r] for b in boxes), boxes)
  corners = geometry.box_corners(*boxes, trig=trig)
  box_d = geometry.box_distance(corners[r][:, None], corners[nb], jnp.take_along_axis(gap, nb, 1) < 0.0)
  kind = jax.nn.one_hot(log.object_type[nb] - 1, 4)  # types 1..4 -> columns 0..3; padding (0) -> all zero
  feats = jnp.concatenate([jnp.stack([_pos(rx, cfg), _pos(ry, cfg), jnp.cos(dyaw), jnp.sin(dyaw),
                                      vx / cfg.speed_scale_mps, vy / cfg.speed_scale_mps,
                                      log.length[nb] / cfg.size_scale_m, log.width[nb] / cfg.size_scale_m,
                                      _pos(box_d, cfg)], -1), kind], -1)
  feats = jnp.where(mask[..., None], feats, 0.0)
  if k < cfg.num_agents:  # fewer objects than slots: pad
    feats = jnp.pad(feats, ((0, 0), (0, cfg.num_agents - k), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, cfg.num_agents - k)))
  return feats, mask


def _road_class(map_type):
  """(..., len(ROAD_CLASSES)) one-hot of a map type id."""
  cls = jnp.full(map_type.shape, 5)
  cls = jnp.where(jnp.isin(map_type, jnp.asarray(types.MAP_LANE_IDS)), 0, cls)
  cls = jnp.where(jnp.isin(map_type, jnp.asarray(types.MAP_ROAD_LINE_IDS)), 1, cls)
  cls = jnp.where(jnp.isin(map_type, jnp.asarray(types.MAP_ROAD_EDGE_IDS)), 2, cls)
  cls = jnp.where(map_type == types.MAP_STOP_SIGN, 3, cls)
  cls = jnp.where(map_type == types.MAP_CROSSWALK, 4, cls)
  return jax.nn.one_hot(cls, len(ROAD_CLASSES))


def _road_slots(num_candidates: int, k: int):
  """Static candidate columns observed: the nearest k//2 road edges, up to NUM_STOP stop signs, the nearest other
  points for the rest (each group of the candidate layout is already sorted by distance at refresh, so no
  per-step top_k is needed; top_k is slow on CPU)."""
  k_edge = geometry.edge_slots(num_candidates)
  k_other = num_candidates - k_edge - geometry.NUM_STOP
  n_stop = min(geometry.NUM_STOP, k // 8)
  n_edge = min(k // 2, k_edge)
  n_other = min(k - n_edge - n_stop, k_other)
  return (list(range(n_edge)) + list(range(k_edge, k_edge + n_stop))
          + list(range(k_edge + geometry.NUM_STOP, k_edge + geometry.NUM_STOP + n_other)))


def _ranges(cols):
  """Static [lo, hi) ranges of consecutive column indices, in order."""
  out = []
  for c in cols:
    if out and out[-1][1] == c:
      out[-1][1] = c + 1
    else:
      out.append([c, c + 1])
  return [tuple(r) for r in out]


def _roads(state: SimState, e: _Egos, cfg: ObsConfig):
  cand = state.road_candidates
  cols = _road_slots(cand.shape[1], cfg.num_road_points)
  if state.road_cache is None:  # hand-built state: gather from the map
    cache = geometry.candidate_cache(state.scenario.roads, cand, geometry.edge_slots(cand.shape[1]))
  else:
    cache = state.road_cache
  # Static column ranges, not a gather by column list: XLA on CPU lays that out transposed and copies it.
  ranges = _ranges(cols)
  take = lambda a: jnp.concatenate([a[e.rows][:, lo:hi] for lo, hi in ranges], 1)
  ox, oy = take(cache.x) - e.x[:, None], take(cache.y) - e.y[:, None]
  mask = take(cache.ok) & (jnp.hypot(ox, oy) <= cfg.max_road_distance_m)
  cs, sn = e.cos[:, None], e.sin[:, None]
  rx, ry = _to_ego(ox, oy, cs, sn)
  dx, dy = _to_ego(take(cache.dir_x), take(cache.dir_y), cs, sn)
  feats = jnp.concatenate([jnp.stack([_pos(rx, cfg), _pos(ry, cfg), dx, dy], -1), _road_class(take(cache.map_type))],
                          -1)
  feats = jnp.where(mask[..., None], feats, 0.0)
  k = len(cols)
  if k < cfg.num_road_points:
    feats = jnp.pad(feats, ((0, 0), (0, cfg.num_road_points - k), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, cfg.num_road_points - k)))
  return feats, mask


def _route(state: SimState, e: _Egos, cfg: ObsConfig, nearest=None):
  """Logged-route points ahead (M, num_route_points, 2); nearest: the egos' nearest logged step (M,) when the
  caller already projected them on their paths (the env shares it with the metrics)."""
  log = jax.tree.map(lambda a: a[e.rows], state.scenario.objects)
  end = log_path.log_path_end(log) if state.path_end is None else jax.tree.map(lambda a: a[e.rows], state.path_end)
  if nearest is None:
    _, _, nearest = log_path.project_on_log_path(log, e.x, e.y, end)
  T = log.x.shape[1]
  strides = cfg.route_stride * jnp.arange(1, cfg.num_route_points + 1)
  on_log = nearest < T
  ahead = jnp.minimum(nearest, T - 1)[:, None] + strides  # (M, P) logged steps
  steps = jnp.minimum(ahead, T - 1)
  take = lambda a: jnp.take_along_axis(a, steps, 1)
  logged = on_log[:, None] & take(log.valid) & (ahead < T)
  # Past the log's last valid step the route goes on along its continuation (log_path.log_path_end: along the
  # lanes that carry on, else straight; as the off-route metric sees it), one mean logged step length per step.
  # An ego already on the continuation (nearest = T + k: its segment k) gets points ahead of its own projection.
  ax, ay, bx, by, arc0 = log_path.continuation_segments(end)
  k = jnp.clip(nearest - T, 0, arc0.shape[1] - 1)[:, None]
  pick = lambda a: jnp.take_along_axis(a, k, 1)[:, 0]
  t_max = jnp.where(k[:, 0] == arc0.shape[1] - 1, jnp.inf, 1.0)  # the last segment is a ray
  _, u = geometry.point_segment_distance(e.x, e.y, pick(ax), pick(ay), pick(bx), pick(by), t_max)
  ego_beyond = pick(arc0) + u * jnp.hypot(pick(bx) - pick(ax), pick(by) - pick(ay))
  beyond = jnp.where(on_log[:, None], jnp.maximum(ahead - end.last_valid[:, None], 0).astype(jnp.float32)
                     * end.step_m[:, None], ego_beyond[:, None] + strides.astype(jnp.float32) * end.step_m[:, None])
  ray = ~logged & (end.last >= 0)[:, None] & ((ahead > end.last_valid[:, None]) | ~on_log[:, None])
  mask = logged | ray
  cx, cy = log_path.continuation_at(end, beyond)
  px = jnp.where(logged, take(log.x), jnp.where(ray, cx, log.goal_x[:, None]))
  py = jnp.where(logged, take(log.y), jnp.where(ray, cy, log.goal_y[:, None]))
  rx, ry = _to_ego(px - e.x[:, None], py - e.y[:, None], e.cos[:, None], e.sin[:, None])
  return jnp.stack([_pos(rx, cfg), _pos(ry, cfg)], -1), mask


def _light(state: SimState, e: _Egos, cfg: ObsConfig):
  lights = state.scenario.lights
  live = lights.valid[:, state.t]  # (L,)
  rx, ry = _to_ego(lights.stop_x[None, :] - e.x[:, None], lights.stop_y[None, :] - e.y[:, None], e.cos[:, None],
                   e.sin[:, None])
  d = jnp.hypot(rx, ry)
  ok = live[None, :] & (rx > 0.0) & (d <= cfg.max_light_distance_m)
  j = geometry.argmin_last(jnp.where(ok, d, jnp.inf))[:, None]
  present = jnp.any(ok, 1)
  st = lights.state[:, state.t][j[:, 0]]
  is_in = lambda ids: jnp.isin(st, jnp.asarray(ids))
  onehot = jnp.stack([is_in(types.TL_STOP_STATES), is_in(types.TL_CAUTION_STATES), is_in((3, 6)), st == 0], -1)
  take = lambda a: jnp.take_along_axis(a, j, 1)[:, 0]
  feats = jnp.concatenate([present[:, None], _pos(take(rx), cfg)[:, None], _pos(take(ry), cfg)[:, None], onehot], -1)
  return jnp.where(present[:, None], feats.astype(jnp.float32), 0.0)


def observe_rows(state: SimState, rows, cfg: ObsConfig = ObsConfig(), gap=None, nearest=None,
                 row_ok=None, trig=None) -> Observation:
  """Observation (M, ...) of the objects `rows` (M,) int32 only; gap (M, O), nearest (M,) and trig ((cos, sin) of
  every yaw, (O,)) optional shared quantities (see _agents, _route); row_ok (M,) optional: rows whose agents matter
  (the others get none). Cost grows with M, not with the scene's object count."""
  e = _egos(state, rows, trig)
  T = state.scenario.objects.x.shape[1]
  agents, agents_mask = _agents(state, e, cfg, gap, row_ok, trig)
  roads, roads_mask = _roads(state, e, cfg)
  route, route_mask = _route(state, e, cfg, nearest)
  v = state.objects.valid[rows]
  remaining = (T - 1 - state.t).astype(jnp.float32) / (T - 1) * jnp.ones_like(e.x)
  zero = lambda a: jnp.where(v.reshape(v.shape + (1,) * (a.ndim - 1)), a, jnp.zeros_like(a)).astype(
      a.dtype if a.dtype == jnp.bool_ else jnp.float32)
  return Observation(
      ego=zero(_ego(state, e, cfg)), agents=zero(agents), agents_mask=zero(agents_mask), roads=zero(roads),
      roads_mask=zero(roads_mask), route=zero(route), route_mask=zero(route_mask),
      light=zero(_light(state, e, cfg)), remaining_time=remaining[:, None])


def observe(state: SimState, cfg: ObsConfig = ObsConfig()) -> Observation:
  """Observation of every object in `state` (O, ...); see the module docstring."""
  return observe_rows(state, jnp.arange(state.objects.x.shape[0]), cfg)


def controlled_rows(controlled, size: int):
  """(rows (M,) int32, slot (O,) int32, slot_ok (O,) bool) for M = min(size, O): rows lists the controlled objects
  in index order (padded with 0), slot maps each object to its row (only where slot_ok: controlled and among the
  first M)."""
  n = controlled.shape[0]
  m = min(size, n)
  slot = jnp.cumsum(controlled.astype(jnp.int32)) - 1
  slot_ok = controlled & (slot < m)
  # rows[j] = the object whose slot is j: an (M, O) match summed (no scatter; O and M are small).
  hit = slot_ok[None, :] & (slot[None, :] == jnp.arange(m)[:, None])
  rows = jnp.sum(jnp.where(hit, jnp.arange(n)[None, :], 0), 1).astype(jnp.int32)
  return rows, jnp.where(slot_ok, slot, 0).astype(jnp.int32), slot_ok


def spread_rows(tree, slot, slot_ok, into=None):
  """(M, ...) leaves -> (O, ...): each object gets its row `slot` (O,) where `slot_ok` (O,), else zeros (False);
  into: optional (O, ...) tree to scatter the rows into instead of zeros (the caller knows its other rows are zero:
  the same result without a memset of the whole output)."""
  n = slot.shape[0]
  # A scatter of the rows, not a gather per object: XLA on CPU fuses the rows' whole computation into a gather and
  # redoes it per object (and drops optimization barriers). Rows without an object (padding) go out of bounds.
  target = jnp.full(n, n, jnp.int32).at[jnp.where(slot_ok, slot, n)].set(jnp.arange(n, dtype=jnp.int32),
                                                                         mode="drop")
  def spread(a, base=None):  # a: (M, ...) with M <= O
    idx = target[:a.shape[0]]
    base = jnp.zeros((n,) + a.shape[1:], a.dtype) if base is None else base.astype(a.dtype)
    return base.at[idx].set(a, mode="drop", unique_indices=True)
  return jax.tree.map(spread, tree) if into is None else jax.tree.map(spread, tree, into)


def observe_controlled(state: SimState, max_controlled: int, cfg: ObsConfig = ObsConfig(), gap=None,
                       nearest=None) -> Observation:
  """Observation (O, ...) with the rows of the controlled objects (at most max_controlled, the first in index
  order) filled and every other row zero, at the cost of M = max_controlled egos instead of O. gap (O, O) and
  nearest (O,) are optional shared quantities for all objects (the env computes them for the metrics anyway).
  remaining_time is filled for every object, as in `observe`."""
  rows, slot, slot_ok = controlled_rows(state.controlled, max_controlled)
  return observe_spread(state, rows, slot, slot_ok, cfg, None if gap is None else gap[rows],
                        None if nearest is None else nearest[rows])


def observe_spread(state: SimState, rows, slot, slot_ok, cfg: ObsConfig = ObsConfig(), gap=None,
                   nearest=None, trig=None, into: Observation | None = None) -> Observation:
  """observe_controlled from its `controlled_rows` (rows (M,), slot (O,), slot_ok (O,)); gap (M, O), nearest
  (M,) and trig (O,) optional shared quantities (see observe_rows); into: an Observation (O, ...) whose rows other
  than slot_ok's are zero, to scatter the rows into (spread_rows; remaining_time is replaced)."""
  row_ok = jnp.arange(rows.shape[0]) < jnp.sum(slot_ok.astype(jnp.int32))  # rows past the controlled: padding
  obs = observe_rows(state, rows, cfg, gap, nearest, row_ok, trig)
  T = state.scenario.objects.x.shape[1]
  remaining = (T - 1 - state.t).astype(jnp.float32) / (T - 1) * jnp.ones_like(state.objects.x)
  if into is not None:
    obs, into = obs.replace(remaining_time=None), into.replace(remaining_time=None)
  return spread_rows(obs, slot, slot_ok, into).replace(remaining_time=remaining[:, None])


__all__ = ["ObsConfig", "Observation", "observe", "observe_rows", "observe_controlled", "observe_spread",
           "controlled_rows", "spread_rows", "observation_size", "flatten", "EGO_FEATURES", "AGENT_FEATURES",
           "ROAD_FEATURES", "LIGHT_FEATURES", "ROAD_CLASSES"]
