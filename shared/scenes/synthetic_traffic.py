"""Rule-based drivers that log the trajectories of synthetic scenes.

Each vehicle drives along its route (a path of lanes, N vehicles padded to K samples every `ds` metres) and only
chooses its arclength s and speed v; position and yaw are read off the path, so every state is on a lane and
the yaw follows the lane. Longitudinal control is IDM against the nearest of two obstacles:
  * the leader on its path: the other vehicle whose rear (or front) lies on a lane of this path, ahead of it;
  * a virtual stopped car at the entry of its next zone lane (junction connector, merge taper) until it holds a
    grant for that lane.
Grants: a vehicle within its claim distance of the entry asks for the lane; it gets it when its light is green
(or yellow and it cannot stop), its stop-sign wait is done, no other vehicle occupies or holds a conflicting
lane, no conflicting vehicle of higher priority is approaching, and it wins against the other askers (priority,
then time to arrival). A red or yellow light revokes a grant while the car can still stop. Lanes conflict when
boxes of the largest vehicle in the scene placed along them can overlap (`zone_conflicts`).

All per-step work is numpy over (N,) and (N, N) / (N, S) arrays; the only Python loop is over time.
Shapes: N vehicles, K path samples, S lanes, L lights, T steps (warm-up included).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from shared.scenes import synthetic_roads as roads
from shared.scenes import types


@dataclasses.dataclass
class Paths:
  """Vehicle paths sampled every `ds` metres; arrays (N, K) unless noted.

  Attributes:
    x, y, yaw: centre line positions and heading (unwrapped along the path). vmax: speed profile (m/s) honouring
    the speed limit, a lateral acceleration limit in curves and the braking needed to reach them.
    length: (N,) route length; past it the vehicle has left the map. seg_start, seg_end: (N, S) arclength where
    each lane begins and ends on each path (+inf / -inf where the lane is not on the path). ds: sample spacing.
  """

  x: np.ndarray
  y: np.ndarray
  yaw: np.ndarray
  vmax: np.ndarray
  length: np.ndarray
  seg_start: np.ndarray
  seg_end: np.ndarray
  ds: float


@dataclasses.dataclass
class Vehicles:
  """Per-vehicle constants, arrays (N,): length, width, s_init (centre arclength at spawn), v_init, spawn_step,
  priority (route priority, 0 goes first), first_lane, speed_limit (m/s)."""

  length: np.ndarray
  width: np.ndarray
  s_init: np.ndarray
  v_init: np.ndarray
  spawn_step: np.ndarray
  priority: np.ndarray
  first_lane: np.ndarray
  speed_limit: np.ndarray


def build_paths(net: roads.Network, routes: list[tuple[int, ...]], speed_limit: np.ndarray, lateral_accel: float,
                comfort_decel: float, ds: float = 0.5) -> Paths:
  n, S = len(routes), len(net.lanes)
  seg_start = np.full((n, S), np.inf)
  seg_end = np.full((n, S), -np.inf)
  polys, totals = [], np.zeros(n)
  for i, route in enumerate(routes):  # setup only: vehicles x lanes, no time dimension
    acc = 0.0
    for lane in route:
      seg_len = np.linalg.norm(np.diff(net.lanes[lane], axis=0), axis=1).sum()
      seg_start[i, lane], seg_end[i, lane] = acc, acc + seg_len
      acc += seg_len
    polys.append(roads.join(*[net.lanes[lane] for lane in route]))
    totals[i] = acc
  K = int(np.ceil((totals.max() + 40.0) / ds)) + 1
  grid = ds * np.arange(K)
  x, y = np.zeros((n, K)), np.zeros((n, K))
  for i, p in enumerate(polys):
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    end_dir = (p[-1] - p[-2]) / seg[-1]
    p = np.vstack([p, p[-1] + end_dir * (K * ds)])  # straight on past the end of the map
    cum = np.append(cum, cum[-1] + K * ds)
    x[i], y[i] = np.interp(grid, cum, p[:, 0]), np.interp(grid, cum, p[:, 1])
  yaw = np.unwrap(np.arctan2(np.gradient(y, axis=1), np.gradient(x, axis=1)), axis=1)
  kappa = np.abs(np.gradient(yaw, ds, axis=1))
  vlim = np.minimum(speed_limit[:, None], np.sqrt(lateral_accel / np.maximum(kappa, 1e-6)))
  # v(s)^2 <= min_{s' >= s} vlim(s')^2 + 2 b (s' - s): a reverse running minimum.
  q = vlim ** 2 + 2 * comfort_decel * grid
  qmin = np.minimum.accumulate(q[:, ::-1], axis=1)[:, ::-1]
  vmax = np.sqrt(np.maximum(qmin - 2 * comfort_decel * grid, 0.0))
  return Paths(x=x, y=y, yaw=yaw, vmax=vmax, length=totals, seg_start=seg_start, seg_end=seg_end, ds=ds)


def lookup(paths: Paths, arr: np.ndarray, s: np.ndarray) -> np.ndarray:
  """Linear interpolation of a (N, K) path array at arclengths s (N,) or (N, T)."""
  f = np.clip(s / paths.ds, 0.0, arr.shape[1] - 1.001)
  i0 = np.floor(f).astype(int)
  w = f - i0
  rows = np.arange(arr.shape[0]).reshape((-1,) + (1,) * (s.ndim - 1))
  return arr[rows, i0] * (1 - w) + arr[rows, i0 + 1] * w


def boxes_overlap(xa, ya, yawa, la, wa, xb, yb, yawb, lb, wb) -> np.ndarray:
  """Separating-axis test for oriented boxes (broadcast over all inputs): True where they overlap."""
  dx, dy = xb - xa, yb - ya
  ca, sa, cb, sb = np.cos(yawa), np.sin(yawa), np.cos(yawb), np.sin(yawb)
  sep = np.zeros(np.broadcast(dx, ca, cb).shape, bool)
  for ux, uy in ((ca, sa), (-sa, ca), (cb, sb), (-sb, cb)):
    ra = 0.5 * la * np.abs(ca * ux + sa * uy) + 0.5 * wa * np.abs(-sa * ux + ca * uy)
    rb = 0.5 * lb * np.abs(cb * ux + sb * uy) + 0.5 * wb * np.abs(-sb * ux + cb * uy)
    sep |= np.abs(dx * ux + dy * uy) > ra + rb
  return ~sep


def zone_conflicts(net: roads.Network, length: float, width: float, margin: float = 0.6) -> np.ndarray:
  """(S, S) bool: zone lanes a != b where a box of (length, width) + margin on each can overlap."""
  S = len(net.lanes)
  ids, pts, yaws = [], [], []
  for lane in np.nonzero(net.zone)[0]:
    p = net.lanes[lane][::4]
    d = np.gradient(p, axis=0)
    ids.append(np.full(len(p), lane)); pts.append(p); yaws.append(np.arctan2(d[:, 1], d[:, 0]))
  conf = np.zeros((S, S), bool)
  if not ids:
    return conf
  ids, pts, yaws = np.concatenate(ids), np.concatenate(pts), np.concatenate(yaws)
  L, W = length + margin, width + margin
  near = np.linalg.norm(pts[:, None] - pts[None], axis=-1) < np.hypot(L, W)
  near &= ids[:, None] != ids[None, :]
  i, j = np.nonzero(near)
  hit = boxes_overlap(pts[i, 0], pts[i, 1], yaws[i], L, W, pts[j, 0], pts[j, 1], yaws[j], L, W)
  conf[ids[i[hit]], ids[j[hit]]] = True
  return conf


def _locate(paths: Paths, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Lane (N,) containing arclength pos (N,) on each vehicle's own path, and the offset into it."""
  p = np.minimum(np.maximum(pos, 0.0), paths.length - 1e-6)[:, None]
  lane = np.argmax((paths.seg_start <= p) & (p < paths.seg_end), axis=1)
  rows = np.arange(len(pos))
  return lane, pos - paths.seg_start[rows, lane]


def _rears_on_paths(paths: Paths, veh: Vehicles, s) -> np.ndarray:
  """(N, N): where the rear of vehicle j lies on the path of vehicle i (inf when j is on none of i's lanes)."""
  half = 0.5 * veh.length
  lane_r, off_r = _locate(paths, s - half)
  lane_f, off_f = _locate(paths, s + half)  # the front too: a car entering i's lane from a merge is seen early
  back = np.minimum(paths.seg_start[:, lane_r] + off_r[None], paths.seg_start[:, lane_f] + off_f[None] - veh.length)
  np.fill_diagonal(back, np.inf)
  return back


def _leaders(paths: Paths, veh: Vehicles, s, v, active) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Gap (N,) from each front to the rear of its nearest leader on its path (inf if none), that leader's speed and
  index."""
  half = 0.5 * veh.length
  back = _rears_on_paths(paths, veh, s)
  ahead = active[None, :] & (back + half[None] > s[:, None])  # j's centre ahead of i's centre
  gap = np.where(ahead, back - (s + half)[:, None], np.inf)
  j = np.argmin(gap, axis=1)
  return gap[np.arange(len(s)), j], v[j], j


def idm(v, v0, gap, dv, accel, decel, headway, min_gap):
  """Intelligent Driver Model acceleration; gap = inf means a free road."""
  s_star = min_gap + np.maximum(0.0, v * headway + v * dv / (2.0 * np.sqrt(accel * decel)))
  inter = np.where(np.isfinite(gap), (s_star / np.maximum(gap, 0.1)) ** 2, 0.0)
  return accel * (1.0 - (v / np.maximum(v0, 0.1)) ** 4 - inter)


@dataclasses.dataclass(frozen=True)
class DriverParams:
  """IDM and junction behaviour shared by all drivers.

  Attributes:
    accel, decel: IDM maximum and comfortable deceleration (m/s^2). max_decel: hard braking limit (m/s^2).
    headway: IDM time headway (s). min_gap: IDM standstill gap (m). stop_decel: a car that can stop at a red or
    yellow light with this deceleration does. gap_time: a lower-priority car waits while a conflicting car of
    higher priority is this many seconds from its entry. stop_wait_steps: standstill steps at a stop sign.
    spawn_headway: a late vehicle enters only with this many seconds of gap ahead (plus its braking distance).
  """

  accel: float = 1.5
  decel: float = 2.0
  max_decel: float = 6.0
  headway: float = 1.4
  min_gap: float = 2.0
  stop_decel: float = 4.0
  gap_time: float = 4.0
  stop_wait_steps: int = 10
  spawn_headway: float = 1.5


@dataclasses.dataclass
class _Zones:
  """Mutable grant bookkeeping, (N,) ints: granted zone lane (-1 none), stop-sign standstill steps and their lane."""

  granted: np.ndarray
  timer: np.ndarray
  timer_lane: np.ndarray


@functools.lru_cache(maxsize=64)
def _offdiag(n: int) -> np.ndarray:
  out = ~np.eye(n, dtype=bool)
  out.setflags(write=False)
  return out


def _next_zone(net, paths, rear):
  on = net.zone[None, :] & (paths.seg_end > rear[:, None]) & np.isfinite(paths.seg_start)
  start = np.where(on, paths.seg_start, np.inf)
  nz = np.argmin(start, axis=1)
  entry = start[np.arange(len(rear)), nz]
  has = np.isfinite(entry)
  return np.where(has, nz, 0), entry, has


def _zone_control(net, paths, veh, conf, zs, s, v, active, lead_gap, lead_idx, tl_t, p: DriverParams):
  """Updates grants in `zs`; returns the gap (N,) to each car's virtual stop line (inf when it may go)."""
  n = len(s)
  rows = np.arange(n)
  half = 0.5 * veh.length
  rear, front = s - half, s + half
  nz, entry, has = _next_zone(net, paths, rear)
  has &= active
  dist = entry - front
  zs.granted = np.where(has & (dist <= 0.0), nz, zs.granted)  # already inside
  light = np.where(has, net.entry_light[nz], -1)
  st = np.append(tl_t, types.TL_STATE_IDS["go"])[light]  # index -1: no light, always go
  cant_stop = dist < v ** 2 / (2 * p.stop_decel)
  allow = (st == types.TL_STATE_IDS["go"]) | ((st == types.TL_STATE_IDS["caution"]) & cant_stop)
  zs.timer = np.where(zs.timer_lane == nz, zs.timer, 0)
  zs.timer_lane = np.where(has, nz, -1)
  stop_sign = has & net.entry_stop[nz]
  zs.timer = zs.timer + (stop_sign & (dist < 3.0) & (v < 0.3))
  allow &= ~stop_sign | (zs.timer >= p.stop_wait_steps)
  # Who holds what: bodies inside zone lanes, plus granted claims.
  occ = (active[:, None] & net.zone[None, :] & (paths.seg_start < front[:, None]) & (paths.seg_end > rear[:, None]))
  holds = active & (zs.granted >= 0)
  occ[rows[holds], zs.granted[holds]] = True
  other = _offdiag(n)
  blocked = ((occ.astype(float) @ conf.astype(float))[:, nz] * other).sum(0) > 0
  c_nz = conf[nz[:, None], nz[None, :]] & has[:, None] & has[None, :] & other
  approaching = has & (dist > 0) & (dist < v * p.gap_time + 5.0) & allow
  blocked |= (c_nz & approaching[None, :] & (veh.priority[None, :] < veh.priority[:, None])).any(1)
  head = (lead_gap >= dist) | (zs.granted[lead_idx] >= 0)  # first in line, or following a granted car
  claim = p.min_gap + v * p.headway + v ** 2 / (2 * p.decel) + 5.0
  cand = has & (zs.granted != nz) & allow & (dist < claim) & ~blocked & head
  key = veh.priority * 1000.0 + np.maximum(dist, 0.0) / np.maximum(v, 0.5) + 1e-6 * rows
  wins = cand & ~(cand[None, :] & c_nz & (key[None, :] < key[:, None])).any(1)
  zs.granted = np.where(wins, nz, zs.granted)
  revoke = (light >= 0) & (st != types.TL_STATE_IDS["go"]) & (dist > 0.0) & ~cant_stop
  zs.granted = np.where(revoke | ~has, -1, zs.granted)
  need_stop = has & (zs.granted != nz) & (dist > 0.0)
  return np.where(need_stop, dist - 0.5 + p.min_gap, np.inf)


def simulate(net: roads.Network, paths: Paths, veh: Vehicles, conf: np.ndarray, tl_states: np.ndarray, dt: float,
             p: DriverParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Runs the drivers for tl_states.shape[1] steps; returns arclength s, speed v and valid, each (N, T)."""
  n, T = len(veh.length), tl_states.shape[1]
  s, v = veh.s_init.astype(float).copy(), veh.v_init.astype(float).copy()
  spawned, done = np.zeros(n, bool), np.zeros(n, bool)
  zs = _Zones(np.full(n, -1), np.zeros(n, int), np.full(n, -1))
  s_log, v_log, valid = np.zeros((n, T)), np.zeros((n, T)), np.zeros((n, T), bool)
  rows = np.arange(n)
  same_start = (veh.first_lane[:, None] == veh.first_lane[None, :]) & (rows[None, :] < rows[:, None])
  initial = veh.spawn_step == 0
  for k in range(T):
    # SPAWN: initial cars (placed with gaps) at once; a late car at the start of its first lane once that is
    # clear, one per lane per step (two would appear on top of each other).
    want = ~spawned & (veh.spawn_step <= k)
    if want.any():
      # Room from a waiting car's front to the nearest rear of any car on its path (all lie ahead of the start).
      back = _rears_on_paths(paths, veh, s)
      room = np.where((spawned & ~done)[None, :], back, np.inf).min(1) - (s + 0.5 * veh.length)
      clear = room > p.min_gap + v * p.spawn_headway + v ** 2 / (2 * p.decel) + 5.0
      first_in_turn = ~(same_start & (want & ~initial)[None, :]).any(1)
      spawned |= want & (initial | (clear & first_in_turn))
    active = spawned & ~done
    s_log[:, k], v_log[:, k], valid[:, k] = s, v, active
    # CONTROL
    gap, vl, lead_idx = _leaders(paths, veh, s, v, active)
    stop_gap = _zone_control(net, paths, veh, conf, zs, s, v, active, gap, lead_idx, tl_states[:, k], p)
    v0 = lookup(paths, paths.vmax, s)
    a = np.minimum(idm(v, v0, gap, v - vl, p.accel, p.decel, p.headway, p.min_gap),
                   idm(v, v0, stop_gap, v, p.accel, p.decel, p.headway, p.min_gap))
    a = np.clip(a, -p.max_decel, p.accel)
    # INTEGRATE
    v_new = np.where(active, np.maximum(v + a * dt, 0.0), v)
    s = np.where(active, s + 0.5 * (v + v_new) * dt, s)
    v = v_new
    done |= active & (s + 0.5 * veh.length >= paths.length)
  return s_log, v_log, valid
