"""Ego-frame, normalised observations of every object (one scene; vmap for a batch).

Per object (O, ...), all positions and directions rotated into the object's own frame (x forward, y left):
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
    its nearest logged point (masked past the end of its log; masked points hold the goal).
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


def _ego(state: SimState, cos, sin, cfg: ObsConfig):
  o, log = state.objects, state.scenario.objects
  gx, gy = _to_ego(log.goal_x - o.x, log.goal_y - o.y, cos, sin)
  bearing = jnp.arctan2(gy, gx)
  speed = jnp.hypot(o.vel_x, o.vel_y)
  return jnp.stack([speed / cfg.speed_scale_mps, log.length / cfg.size_scale_m, log.width / cfg.size_scale_m,
                    _pos(gx, cfg), _pos(gy, cfg), jnp.cos(bearing), jnp.sin(bearing),
                    o.accel_mps2 / cfg.accel_scale_mps2, o.steer_rad / cfg.steer_scale_rad], -1)


def _agents(state: SimState, cos, sin, cfg: ObsConfig):
  o, log = state.objects, state.scenario.objects
  n = o.x.shape[0]
  k = min(cfg.num_agents, n)
  d = jnp.hypot(o.x[None, :] - o.x[:, None], o.y[None, :] - o.y[:, None])
  ok = o.valid[:, None] & o.valid[None, :] & ~jnp.eye(n, dtype=bool) & (d <= cfg.max_agent_distance_m)
  nb, mask = geometry.smallest_k(jnp.where(ok, d, jnp.inf), k)  # (O, k)
  c, s = cos[:, None], sin[:, None]
  rx, ry = _to_ego(o.x[nb] - o.x[:, None], o.y[nb] - o.y[:, None], c, s)
  vx, vy = _to_ego(o.vel_x[nb] - o.vel_x[:, None], o.vel_y[nb] - o.vel_y[:, None], c, s)
  dyaw = o.yaw[nb] - o.yaw[:, None]
  gap = geometry.pairwise_sat_gap(o.x, o.y, o.yaw, log.length, log.width)
  corners = geometry.box_corners(o.x, o.y, o.yaw, log.length, log.width)
  box_d = geometry.box_distance(corners[:, None], corners[nb], jnp.take_along_axis(gap, nb, 1) < 0.0)
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


def _roads(state: SimState, cos, sin, cfg: ObsConfig):
  o, roads = state.objects, state.scenario.roads
  cols = _road_slots(state.road_candidates.shape[1], cfg.num_road_points)
  cand = state.road_candidates[:, jnp.asarray(cols, jnp.int32)]
  idx = jnp.maximum(cand, 0)
  d = jnp.hypot(roads.x[idx] - o.x[:, None], roads.y[idx] - o.y[:, None])
  mask = (cand >= 0) & roads.valid[idx] & (d <= cfg.max_road_distance_m)
  cs, sn = cos[:, None], sin[:, None]
  rx, ry = _to_ego(roads.x[idx] - o.x[:, None], roads.y[idx] - o.y[:, None], cs, sn)
  dx, dy = _to_ego(roads.dir_x[idx], roads.dir_y[idx], cs, sn)
  feats = jnp.concatenate([jnp.stack([_pos(rx, cfg), _pos(ry, cfg), dx, dy], -1), _road_class(roads.map_type[idx])],
                          -1)
  feats = jnp.where(mask[..., None], feats, 0.0)
  k = len(cols)
  if k < cfg.num_road_points:
    feats = jnp.pad(feats, ((0, 0), (0, cfg.num_road_points - k), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, cfg.num_road_points - k)))
  return feats, mask


def _route(state: SimState, cos, sin, cfg: ObsConfig):
  o, log = state.objects, state.scenario.objects
  T = log.x.shape[1]
  _, _, nearest = geometry.project_on_log_path(log, o.x, o.y)
  steps = jnp.minimum(nearest[:, None] + cfg.route_stride * jnp.arange(1, cfg.num_route_points + 1), T - 1)
  take = lambda a: jnp.take_along_axis(a, steps, 1)
  mask = take(log.valid) & (nearest[:, None] + cfg.route_stride * jnp.arange(1, cfg.num_route_points + 1) < T)
  px = jnp.where(mask, take(log.x), log.goal_x[:, None])
  py = jnp.where(mask, take(log.y), log.goal_y[:, None])
  rx, ry = _to_ego(px - o.x[:, None], py - o.y[:, None], cos[:, None], sin[:, None])
  return jnp.stack([_pos(rx, cfg), _pos(ry, cfg)], -1), mask


def _light(state: SimState, cos, sin, cfg: ObsConfig):
  o, lights = state.objects, state.scenario.lights
  live = lights.valid[:, state.t]  # (L,)
  rx, ry = _to_ego(lights.stop_x[None, :] - o.x[:, None], lights.stop_y[None, :] - o.y[:, None], cos[:, None],
                   sin[:, None])
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


def observe(state: SimState, cfg: ObsConfig = ObsConfig()) -> Observation:
  """Observation of every object in `state` (O, ...); see the module docstring."""
  o, T = state.objects, state.scenario.objects.x.shape[1]
  cos, sin = jnp.cos(o.yaw), jnp.sin(o.yaw)
  agents, agents_mask = _agents(state, cos, sin, cfg)
  roads, roads_mask = _roads(state, cos, sin, cfg)
  route, route_mask = _route(state, cos, sin, cfg)
  v = o.valid
  remaining = (T - 1 - state.t).astype(jnp.float32) / (T - 1) * jnp.ones_like(o.x)
  zero = lambda a: jnp.where(v.reshape(v.shape + (1,) * (a.ndim - 1)), a, jnp.zeros_like(a)).astype(
      a.dtype if a.dtype == jnp.bool_ else jnp.float32)
  return Observation(
      ego=zero(_ego(state, cos, sin, cfg)), agents=zero(agents), agents_mask=zero(agents_mask), roads=zero(roads),
      roads_mask=zero(roads_mask), route=zero(route), route_mask=zero(route_mask),
      light=zero(_light(state, cos, sin, cfg)), remaining_time=remaining[:, None])


__all__ = ["ObsConfig", "Observation", "observe", "observation_size", "flatten", "EGO_FEATURES", "AGENT_FEATURES",
           "ROAD_FEATURES", "LIGHT_FEATURES", "ROAD_CLASSES"]
