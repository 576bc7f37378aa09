"""Seeded procedural driving scenes: the default dataset when no real folder is given.

`generate_raw(seed, config)` builds a road network (synthetic_roads.py: straight road, signalised 4-way junction,
T junction with a stop sign, on-ramp merge), places vehicles on routes and logs them with rule-based drivers
(synthetic_traffic.py: lane following, IDM gap keeping, lights, stop signs, right of way) for `num_timesteps`
steps at `dt` after a warm-up. Every scene is checked before it is returned: no two vehicle boxes overlap at a
valid step, every box corner is on the drivable side of the road edges (road on the LEFT of each edge's
direction, as in Waymax), no car crosses a stop line on red, the cars move. A scene that fails is redrawn from a
seed derived from (seed, attempt), so a seed always gives the same scene.

Output (RawScene, local metre frame, scene rotated by a random angle): N vehicles x T steps of x, y, yaw, vel_x,
vel_y, valid; road points of lanes (type 2, direction of travel), road lines (6 broken white, 12 double yellow),
road edges (15), stop signs (17), crosswalks (18); one light per signalised approach lane with its stop point.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shared.scenes import padding, types
from shared.scenes import synthetic_roads as roads
from shared.scenes import synthetic_traffic as traffic

LAYOUTS = ("straight", "four_way", "t_junction", "merge")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """How synthetic scenes are drawn. Ranges are (low, high), drawn uniformly per scene or per vehicle.

  Attributes:
    layouts: kinds of road network; layout_weights: their mix (same order).
    num_vehicles: vehicles placed per scene (some may enter late; a few may not fit and are dropped).
    lanes_per_direction: at junctions and merges; straight_lanes: on straight roads.
    lane_width: metres. corner_radius: kerb fillet radius at junctions (m). arm_length: junction arm beyond the
      stop line (m). road_half_length: half the length of straight and merge roads (m).
    speed_limit: m/s per scene; speed_factor: per-driver multiple of it. lateral_accel: curve speed limit (m/s^2).
    truck_fraction: share of trucks (6.5-9 m long) among vehicles. late_fraction: share of vehicles that enter
      the map after t=0 (the others are on the road at t=0).
    green_s, yellow_s, all_red_s: light cycle (two phase groups alternate).
    dt: seconds per step; num_timesteps: logged steps; warmup_steps: simulated before the log starts.
    init_step: the step the SDC must be valid at. random_rotation: rotate each scene by a random angle.
    min_mean_speed: reject scenes whose vehicles average less (m/s). min_vehicles: reject scenes with fewer
      vehicles. max_attempts: redraws before giving up.
    driver: IDM and junction behaviour.
  """

  layouts: tuple[str, ...] = LAYOUTS
  layout_weights: tuple[float, ...] = (0.2, 0.35, 0.25, 0.2)
  num_vehicles: tuple[int, int] = (10, 28)
  lanes_per_direction: tuple[int, int] = (1, 2)
  straight_lanes: tuple[int, int] = (1, 3)
  lane_width: tuple[float, float] = (3.4, 3.8)
  corner_radius: tuple[float, float] = (7.0, 10.0)
  arm_length: tuple[float, float] = (55.0, 75.0)
  road_half_length: tuple[float, float] = (80.0, 110.0)
  speed_limit: tuple[float, float] = (9.0, 14.0)
  speed_factor: tuple[float, float] = (0.85, 1.1)
  lateral_accel: float = 2.5
  truck_fraction: float = 0.08
  late_fraction: float = 0.3
  green_s: tuple[float, float] = (5.0, 9.0)
  yellow_s: float = 3.0
  all_red_s: float = 1.0
  dt: float = types.WOMD_DT_S
  num_timesteps: int = 91
  warmup_steps: int = 20
  init_step: int = types.WOMD_INIT_STEP
  random_rotation: bool = True
  min_mean_speed: float = 2.5
  min_vehicles: int = 4
  max_attempts: int = 30
  driver: traffic.DriverParams = traffic.DriverParams()


def build_network(rng: np.random.Generator, layout: str, cfg: SyntheticConfig) -> roads.Network:
  w = rng.uniform(*cfg.lane_width)
  n = int(rng.integers(cfg.lanes_per_direction[0], cfg.lanes_per_direction[1] + 1))
  if layout == "straight":
    n = int(rng.integers(cfg.straight_lanes[0], cfg.straight_lanes[1] + 1))
    return roads.straight(rng, n, w, rng.uniform(*cfg.road_half_length))
  if layout == "merge":
    return roads.merge(rng, n, w, rng.uniform(*cfg.road_half_length))
  arms = (0, 1, 2, 3) if layout == "four_way" else (0, 1, 3)
  return roads.junction(rng, n, w, rng.uniform(*cfg.corner_radius), rng.uniform(*cfg.arm_length), arms,
                        lights=layout == "four_way")


def place_vehicles(rng, net: roads.Network, cfg: SyntheticConfig) -> tuple[list[tuple[int, ...]], traffic.Vehicles]:
  """Routes and spawn states: cars on a lane at t=0 are spaced back from its end; the rest enter late."""
  by_lane: dict[int, list[roads.Route]] = {}
  for r in net.routes:
    by_lane.setdefault(r.lanes[0], []).append(r)
  lanes = sorted(by_lane)
  count = int(rng.integers(cfg.num_vehicles[0], cfg.num_vehicles[1] + 1))
  chosen = rng.choice(lanes, size=count)
  limit = rng.uniform(*cfg.speed_limit)
  W, T = cfg.warmup_steps, cfg.num_timesteps
  rows = []
  for lane in lanes:  # setup only: a loop over lanes and their few vehicles
    k = int((chosen == lane).sum())
    lane_len = np.linalg.norm(np.diff(net.lanes[lane], axis=0), axis=1).sum()
    ends_in_zone = any(len(r.lanes) > 1 and net.zone[r.lanes[1]] for r in by_lane[lane])
    if ends_in_zone:  # queue back from the stop line
      front_limit = lane_len - rng.uniform(0.5, 25.0)
      free = lane_len - front_limit  # room ahead of the next car placed
    else:  # leave room for the warm-up drive so the cars are still on the map at t=0
      front_limit = min(lane_len - 40.0 - rng.uniform(0.0, 30.0), rng.uniform(15.0, 35.0) + 0.5 * lane_len)
      free = np.inf
    for _ in range(k):
      route = by_lane[lane][rng.integers(len(by_lane[lane]))]
      truck = rng.random() < cfg.truck_fraction
      L = rng.uniform(6.5, 9.0) if truck else rng.uniform(4.0, 5.0)
      Wd = rng.uniform(2.3, 2.5) if truck else rng.uniform(1.8, 2.1)
      vlim = limit * rng.uniform(*cfg.speed_factor)
      late = route.late_entry and rng.random() < cfg.late_fraction
      if not late and front_limit - L >= 0.0:
        s0, spawn = front_limit - 0.5 * L, 0
        v0 = min(vlim * rng.uniform(0.5, 1.0), np.sqrt(4.0 * max(free - 3.0, 0.0)))
        free = rng.uniform(6.0, 30.0)
        front_limit -= L + free
      elif route.late_entry:
        s0, spawn, v0 = 0.5 * L, W + int(rng.integers(0, T - 20)), vlim * rng.uniform(0.7, 0.9)
      else:
        continue
      rows.append((route.lanes, L, Wd, s0, v0, spawn, route.priority, lane, vlim))
  routes = [r[0] for r in rows]
  cols = list(zip(*[r[1:] for r in rows])) if rows else [[]] * 8
  veh = traffic.Vehicles(*(np.asarray(c, float) for c in cols[:4]), spawn_step=np.asarray(cols[4], int),
                         priority=np.asarray(cols[5], int), first_lane=np.asarray(cols[6], int),
                         speed_limit=np.asarray(cols[7], float))
  return routes, veh


@dataclasses.dataclass
class Log:
  """A driven scene before it becomes a RawScene: arrays (N, T) for N vehicles with at least one valid step."""

  layout: str
  net: roads.Network
  veh: traffic.Vehicles
  routes: list[tuple[int, ...]]
  s: np.ndarray
  x: np.ndarray
  y: np.ndarray
  yaw: np.ndarray
  speed: np.ndarray
  valid: np.ndarray
  tl_state: np.ndarray  # (L, T)


def drive(rng: np.random.Generator, layout: str, cfg: SyntheticConfig) -> Log | None:
  """Builds one network, places vehicles and logs them; None when no vehicle fits."""
  net = build_network(rng, layout, cfg)
  routes, veh = place_vehicles(rng, net, cfg)
  if not routes:
    return None
  paths = traffic.build_paths(net, routes, veh.speed_limit, cfg.lateral_accel, cfg.driver.decel)
  conf = traffic.zone_conflicts(net, veh.length.max(), veh.width.max())
  steps = cfg.warmup_steps + cfg.num_timesteps
  tl = roads.light_states(net.light_group, steps, cfg.dt, rng.uniform(*cfg.green_s), cfg.yellow_s, cfg.all_red_s,
                          rng.uniform(0.0, 40.0))
  s, v, valid = traffic.simulate(net, paths, veh, conf, tl, cfg.dt, cfg.driver)
  w = cfg.warmup_steps
  s, v, valid, tl = s[:, w:], v[:, w:], valid[:, w:], tl[:, w:]
  x, y, yaw = (traffic.lookup(paths, a, s) for a in (paths.x, paths.y, paths.yaw))
  keep = valid.any(axis=1)
  veh = traffic.Vehicles(**{f.name: getattr(veh, f.name)[keep] for f in dataclasses.fields(veh)})
  return Log(layout=layout, net=net, veh=veh, routes=[r for r, k in zip(routes, keep) if k], s=s[keep], x=x[keep],
             y=y[keep], yaw=yaw[keep], speed=v[keep], valid=valid[keep], tl_state=tl)


def box_corners(x, y, yaw, length, width) -> np.ndarray:
  """(..., 4, 2) corners of boxes centred at (x, y) (...,) with heading yaw; length, width broadcast."""
  c, s = np.cos(yaw), np.sin(yaw)
  lx = 0.5 * np.asarray(length)[..., None] * np.array([1, -1, -1, 1])
  ly = 0.5 * np.asarray(width)[..., None] * np.array([1, 1, -1, -1])
  return np.stack([x[..., None] + c[..., None] * lx - s[..., None] * ly,
                   y[..., None] + s[..., None] * lx + c[..., None] * ly], -1)


def check_log(log: Log, cfg: SyntheticConfig) -> str | None:
  """Why a logged scene is unusable (overlap, off road, red-light crossing, too slow), or None if it is fine."""
  L, W, valid = log.veh.length, log.veh.width, log.valid
  n = len(L)
  if n < cfg.min_vehicles:
    return f"only {n} vehicles"
  pad = 0.15  # keep a visible gap so float32 rounding downstream cannot create an overlap
  both = valid[:, None] & valid[None, :] & np.triu(np.ones((n, n), bool), 1)[..., None]
  hit = traffic.boxes_overlap(log.x[:, None], log.y[:, None], log.yaw[:, None], (L + pad)[:, None, None],
                              (W + pad)[:, None, None], log.x[None], log.y[None], log.yaw[None],
                              (L + pad)[None, :, None], (W + pad)[None, :, None]) & both
  if hit.any():
    i, j, t = np.argwhere(hit)[0]
    return f"overlap of vehicles {i} and {j} at t={t}"
  corners = box_corners(log.x, log.y, log.yaw, L[:, None], W[:, None])
  a, b = roads.edge_segments(log.net)
  for i in range(n):  # per vehicle, so only the edges near its own path are searched
    margin = roads.onroad_margin(corners[i][valid[i]].reshape(-1, 2), a, b).min()
    if margin < 0.05:
      return f"vehicle {i} off road by {-margin:.2f} m"
  for li, lane in enumerate(log.net.light_lane):
    for i, route in enumerate(log.routes):
      if lane in route:
        stop = sum(np.linalg.norm(np.diff(log.net.lanes[q], axis=0), axis=1).sum() for q in route[:route.index(lane) + 1])
        front = log.s[i] + 0.5 * L[i]
        cross = (front[:-1] < stop) & (front[1:] >= stop) & valid[i, 1:] & valid[i, :-1]
        if (cross & np.isin(log.tl_state[li, 1:], types.TL_STOP_STATES)).any():
          return f"vehicle {i} crosses light {li} on red"
  if log.speed[valid].mean() < cfg.min_mean_speed:
    return f"mean speed {log.speed[valid].mean():.2f} m/s"
  return None


def _pick_sdc(log: Log, rng, init_step: int) -> int:
  full = log.valid.all(axis=1)
  through = np.array([bool(log.net.zone[list(r)].any()) for r in log.routes])
  travelled = log.s.max(axis=1, where=log.valid, initial=-np.inf) - log.s.min(axis=1, where=log.valid, initial=np.inf)
  for pool in (full & through, full):
    if pool.any():  # a car that drives (not one waiting out the whole log at a red light)
      movers = pool & (travelled >= 0.5 * travelled[pool].max())
      return int(rng.choice(np.nonzero(movers)[0]))
  at_init = log.valid[:, init_step]
  if not at_init.any():
    return -1
  return int(np.argmax(np.where(at_init, log.valid.sum(axis=1), -1)))


def _resample(poly: np.ndarray, step: float) -> np.ndarray:
  if len(poly) < 2:
    return poly
  cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(poly, axis=0), axis=1))])
  grid = np.linspace(0.0, cum[-1], max(2, int(np.ceil(cum[-1] / step)) + 1))
  return np.stack([np.interp(grid, cum, poly[:, 0]), np.interp(grid, cum, poly[:, 1])], -1)


def to_raw(log: Log, sdc: int, name: str, scenario_id: str, angle: float) -> padding.RawScene:
  """The RawScene of a checked log, everything rotated by `angle` about the origin."""
  T = log.valid.shape[1]
  raw = padding.empty_raw(name, T)
  raw.scenario_id = scenario_id
  n, valid = len(log.veh.length), log.valid
  xy = roads.rotate(np.stack([log.x, log.y], -1).reshape(-1, 2), angle).reshape(n, T, 2)
  yaw = padding.wrap_angle(log.yaw + angle)
  raw.x, raw.y = np.where(valid, xy[..., 0], 0.0), np.where(valid, xy[..., 1], 0.0)
  raw.yaw = np.where(valid, yaw, 0.0)
  raw.vel_x, raw.vel_y = np.where(valid, log.speed * np.cos(yaw), 0.0), np.where(valid, log.speed * np.sin(yaw), 0.0)
  raw.valid, raw.length, raw.width = valid, log.veh.length, log.veh.width
  raw.object_type = np.full(n, types.TYPE_VEHICLE)
  raw.object_id = np.arange(n)
  raw.is_sdc = np.arange(n) == sdc
  raw.controllable = np.ones(n, bool)
  last = T - 1 - np.argmax(valid[:, ::-1], axis=1)
  raw.goal_x, raw.goal_y = raw.x[np.arange(n), last], raw.y[np.arange(n), last]
  polys = [(_resample(p, 1.0), types.MAP_LANE_SURFACE_STREET) for p in log.net.lanes] + log.net.features
  pts = roads.rotate(np.concatenate([p for p, _ in polys]), angle)
  raw.road_x, raw.road_y = pts[:, 0], pts[:, 1]
  raw.road_map_type = np.concatenate([np.full(len(p), t) for p, t in polys])
  raw.road_element_id = np.concatenate([np.full(len(p), k) for k, (p, _) in enumerate(polys)])
  lanes = log.net.light_lane
  stops = roads.rotate(np.array([log.net.lanes[q][-1] for q in lanes]).reshape(-1, 2), angle)
  raw.tl_lane_id, raw.tl_stop_x, raw.tl_stop_y = lanes.copy(), stops[:, 0], stops[:, 1]
  raw.tl_state = log.tl_state.astype(int).reshape(len(lanes), T)
  raw.tl_valid = np.ones((len(lanes), T), bool)
  return raw


def generate_raw(seed: int, config: SyntheticConfig = SyntheticConfig()) -> padding.RawScene:
  """The scene of `seed` (a non-negative int); the same seed always gives the same arrays."""
  if seed < 0:
    raise ValueError(f"synthetic seed must be >= 0, got {seed}")
  p = np.asarray(config.layout_weights, float)
  layout = str(np.random.default_rng([seed]).choice(config.layouts, p=p / p.sum()))
  reason = "no vehicle placed"
  for attempt in range(config.max_attempts):
    rng = np.random.default_rng([seed, attempt + 1])
    log = drive(rng, layout, config)
    if log is None:
      continue
    reason = check_log(log, config)
    sdc = _pick_sdc(log, rng, config.init_step) if reason is None else -1
    if reason is None and sdc < 0:
      reason = f"no vehicle valid at t={config.init_step}"
    if reason is None:
      angle = rng.uniform(0.0, 2 * np.pi) if config.random_rotation else 0.0
      return to_raw(log, sdc, f"synthetic_{seed}", f"synthetic-{seed}-{layout}", angle)
  raise RuntimeError(f"synthetic seed {seed}: no valid {layout} scene in {config.max_attempts} attempts "
                     f"(last: {reason})")


def generate(seed: int, config: SyntheticConfig = SyntheticConfig(),
             scene_config: types.SceneConfig = types.SceneConfig()) -> tuple[types.Scenario, types.SceneMeta]:
  """The padded Scenario and SceneMeta of `seed`."""
  if scene_config.num_timesteps != config.num_timesteps:
    raise ValueError(f"synthetic: num_timesteps {config.num_timesteps} != scene config {scene_config.num_timesteps}")
  return padding.pad_scene(generate_raw(seed, config), scene_config)


def generate_many(num: int, seed: int = 0, config: SyntheticConfig = SyntheticConfig(),
                  scene_config: types.SceneConfig = types.SceneConfig()) -> list[tuple[types.Scenario, types.SceneMeta]]:
  """Scenes of seeds seed, seed + 1, ..., seed + num - 1 (so scene i here is `synthetic:{seed + i}`)."""
  return [generate(seed + i, config, scene_config) for i in range(num)]
