"""Road networks for the synthetic scene generator: lane centre polylines, lines, edges, lights, routes.

Frame: metres, x east, y north, right-hand traffic, every layout built around the origin (the generator rotates
the finished scene). Lanes are dense polylines (`PATH_STEP` metres) in the direction of travel; each lane is one
WOMD lane element and the segment a vehicle route is made of. Intersection connectors and merge tapers are
"zone" lanes: a vehicle enters one only with a grant (see synthetic_traffic.py).

Road-edge convention (Waymax's, also shared/sim/geometry.py): every ROAD_EDGE_BOUNDARY polyline is ordered so the
drivable area lies on its LEFT, i.e. cross(edge direction, point - edge point) > 0 on the road side.

Layouts (arms of a junction are built in the frame of the south arm, then rotated by k * 90 degrees):
  straight:   a two-way road with 1-3 lanes per direction.
  four_way:   a signalised cross junction (2 phases: north-south, east-west), crosswalks inside the stop lines.
  t_junction: a major east-west road, a minor road from the south with a stop sign.
  merge:      an on-ramp with an acceleration lane tapering into the outer eastbound lane.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shared.scenes import types

PATH_STEP = 0.25  # metres between dense lane points (paths are interpolated on these)
ROAD_LINE_BROKEN_WHITE, ROAD_LINE_DOUBLE_YELLOW = 6, 12


@dataclasses.dataclass
class Route:
  """A sequence of lane ids a vehicle drives; priority 0 goes first at a conflict (2: must yield)."""

  lanes: tuple[int, ...]
  priority: int
  late_entry: bool  # vehicles may appear at its start after t=0


@dataclasses.dataclass
class Network:
  """A layout before traffic.

  Attributes:
    layout: kind name. lane_width: metres.
    lanes: (K, 2) dense lane centre polylines in the direction of travel; the index is the lane id.
    zone: (S,) bool, lanes that need a grant to enter (junction connectors, merge tapers).
    entry_light: (S,) int, index of the light guarding the entry of a zone lane, else -1.
    entry_stop: (S,) bool, a stop sign guards the entry of a zone lane.
    routes: the routes vehicles may take.
    features: (polyline (K, 2), map_type) for road lines, edges, stop signs and crosswalks.
    light_lane: (L,) lane id controlled by each light; light_group: (L,) its phase group.
  """

  layout: str
  lane_width: float
  lanes: list[np.ndarray]
  zone: np.ndarray
  entry_light: np.ndarray
  entry_stop: np.ndarray
  routes: list[Route]
  features: list[tuple[np.ndarray, int]]
  light_lane: np.ndarray
  light_group: np.ndarray


def line(p0, p1, step: float = PATH_STEP) -> np.ndarray:
  p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
  n = max(2, int(np.ceil(np.hypot(*(p1 - p0)) / step)) + 1)
  return p0 + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0)


def arc(centre, radius: float, a0: float, a1: float, step: float = PATH_STEP) -> np.ndarray:
  n = max(2, int(np.ceil(abs(a1 - a0) * radius / step)) + 1)
  a = np.linspace(a0, a1, n)
  return np.asarray(centre, float) + radius * np.stack([np.cos(a), np.sin(a)], -1)


def join(*parts: np.ndarray) -> np.ndarray:
  """Concatenates polylines, dropping a first point within 0.2 m of the previous part's end."""
  out = [parts[0]]
  for p in parts[1:]:
    out.append(p[1:] if np.hypot(*(p[0] - out[-1][-1])) < 0.2 else p)
  return np.concatenate(out)


def rotate(pts: np.ndarray, angle: float) -> np.ndarray:
  c, s = np.cos(angle), np.sin(angle)
  return np.asarray(pts, float) @ np.array([[c, s], [-s, c]])


def offset(poly: np.ndarray, d: float) -> np.ndarray:
  """The polyline shifted by d metres to its left (negative: right)."""
  t = np.gradient(poly, axis=0)
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  return poly + d * np.stack([-t[:, 1], t[:, 0]], -1)


def _builder():
  lanes: list[np.ndarray] = []
  meta: list[tuple[bool, int, bool]] = []  # zone, entry light, entry stop

  def add(poly, zone=False, light=-1, stop=False) -> int:
    lanes.append(np.asarray(poly, float))
    meta.append((zone, light, stop))
    return len(lanes) - 1

  return lanes, meta, add


def _network(layout, w, lanes, meta, routes, features, light_lane=(), light_group=()) -> Network:
  m = np.array(meta, dtype=object).reshape(-1, 3)
  return Network(layout=layout, lane_width=w, lanes=lanes, zone=m[:, 0].astype(bool),
                 entry_light=m[:, 1].astype(int), entry_stop=m[:, 2].astype(bool), routes=routes,
                 features=features, light_lane=np.asarray(light_lane, int), light_group=np.asarray(light_group, int))


def _lane_lines(n, w, x0, x1):
  """Broken white lines between same-direction lanes and the double yellow centre line of a road along x."""
  feats = [(line((x0, 0.0), (x1, 0.0), 1.0), ROAD_LINE_DOUBLE_YELLOW)]
  for j in range(1, n):
    feats += [(line((x0, -j * w), (x1, -j * w), 1.0), ROAD_LINE_BROKEN_WHITE),
              (line((x1, j * w), (x0, j * w), 1.0), ROAD_LINE_BROKEN_WHITE)]
  return feats


def straight(rng: np.random.Generator, n: int, w: float, half_length: float) -> Network:
  lanes, meta, add = _builder()
  R, H = half_length, n * w
  routes = []
  for j in range(n):
    y = (j + 0.5) * w
    routes.append(Route((add(line((-R, -y), (R, -y))),), 0, True))
    routes.append(Route((add(line((R, y), (-R, y))),), 0, True))
  feats = _lane_lines(n, w, -R, R)
  feats += [(line((-R, -H), (R, -H), 0.5), types.MAP_ROAD_EDGE_BOUNDARY),
            (line((R, H), (-R, H), 0.5), types.MAP_ROAD_EDGE_BOUNDARY)]
  return _network("straight", w, lanes, meta, routes, feats)


def junction(rng: np.random.Generator, n: int, w: float, radius: float, arm: float, arms: tuple[int, ...],
             lights: bool) -> Network:
  """A cross (arms 0-3) or T (arms 0, 1, 3) junction; arm k is the south arm rotated by k * 90 degrees."""
  lanes, meta, add = _builder()
  H = n * w
  Z = H + radius  # stop lines sit at |coordinate| = Z; connectors fill the square inside
  R = Z + arm
  xs = [(j + 0.5) * w for j in range(n)]
  rot = {a: (lambda p, a=a: rotate(p, a * np.pi / 2)) for a in range(4)}
  app = {a: [add(rot[a](line((x, -R), (x, -Z)))) for x in xs] for a in arms}
  ext = {a: [add(rot[a](line((-x, -Z), (-x, -R)))) for x in xs] for a in arms}
  light_lane, light_group, routes, feats = [], [], [], []
  stop = (not lights) and 0 in arms and len(arms) == 3  # T junction: the minor (south) arm stops
  for a in arms:
    minor = stop and a == 0
    for j, x in enumerate(xs):
      li = -1
      if lights:
        li = len(light_lane)
        light_lane.append(app[a][j]); light_group.append(a % 2)
      moves = []
      if (a + 2) % 4 in arms:
        moves.append((line((x, -Z), (x, Z)), ext[(a + 2) % 4][j], 0))
      if j == n - 1 and (a + 1) % 4 in arms:  # right turn from the outer lane
        moves.append((arc((Z, -Z), radius + 0.5 * w, np.pi, np.pi / 2), ext[(a + 1) % 4][j], 0))
      if j == 0 and (a + 3) % 4 in arms:  # left turn from the inner lane
        moves.append((arc((-Z, -Z), Z + 0.5 * w, 0.0, np.pi / 2), ext[(a + 3) % 4][0], 1))
      for poly, out, prio in moves:
        conn = add(rot[a](poly), zone=True, light=li, stop=minor)
        routes.append(Route((app[a][j], conn, out), 2 if minor else prio, True))
    routes += [Route((e,), 0, False) for e in ext[a]]
    # Arm markings: centre line, lane dividers, a crosswalk just inside the stop line (signalised junctions).
    arm_feats = [(line((0.0, -R), (0.0, -Z), 1.0), ROAD_LINE_DOUBLE_YELLOW)]
    for j in range(1, n):
      arm_feats += [(line((j * w, -R), (j * w, -Z), 1.0), ROAD_LINE_BROKEN_WHITE),
                    (line((-j * w, -Z), (-j * w, -R), 1.0), ROAD_LINE_BROKEN_WHITE)]
    if lights:
      arm_feats.append((np.array([(-H, -Z + 0.5), (H, -Z + 0.5), (H, -Z + 3.5), (-H, -Z + 3.5)]),
                        types.MAP_CROSSWALK))
    if minor:
      arm_feats.append((np.array([(H + 1.0, -Z)]), types.MAP_STOP_SIGN))
    feats += [(rot[a](p), t) for p, t in arm_feats]
  # Road edges: a filleted corner between consecutive arms; a straight kerb where an arm is missing.
  corner = join(line((H, -R), (H, -Z), 0.5), arc((Z, -Z), radius, np.pi, np.pi / 2, 0.5), line((Z, -H), (R, -H), 0.5))
  for a in arms:
    if (a + 1) % 4 in arms:
      feats.append((rot[a](corner), types.MAP_ROAD_EDGE_BOUNDARY))
    elif (a + 2) % 4 in arms:  # T junction: the far kerb runs straight across the missing arm
      feats.append((rot[a](line((H, -R), (H, R), 0.5)), types.MAP_ROAD_EDGE_BOUNDARY))
  return _network("four_way" if lights else "t_junction", w, lanes, meta, routes, feats, light_lane, light_group)


def merge(rng: np.random.Generator, n: int, w: float, half_length: float) -> Network:
  """A two-way road along x; an on-ramp from the south-west joins the outer eastbound lane through a taper."""
  lanes, meta, add = _builder()
  R, H = half_length, n * w
  x_g = -R + rng.uniform(25.0, 35.0)  # gore: the ramp runs beside the road from here
  x_t = x_g + rng.uniform(15.0, 25.0)  # taper start
  x_m = x_t + rng.uniform(35.0, 45.0)  # taper end: the ramp lane has become the outer lane
  drop = rng.uniform(5.0, 8.0)
  y_acc, y_out = -(H + 0.5 * w), -(H - 0.5 * w)

  def blend(x0, x1, y0, y1):
    x = np.arange(x0, x1 + 1e-9, PATH_STEP)
    u = (x - x0) / (x1 - x0)
    return np.stack([x, y0 + (y1 - y0) * (1 - np.cos(np.pi * u)) / 2], -1)

  ramp_curve = blend(-R, x_g, y_acc - drop, y_acc)
  ramp = add(join(ramp_curve, line((x_g, y_acc), (x_t, y_acc))))
  taper = blend(x_t, x_m, y_acc, y_out)
  ramp_merge = add(taper, zone=True)
  pre = add(line((-R, y_out), (x_t, y_out)))
  main_merge = add(line((x_t, y_out), (x_m, y_out)), zone=True)
  post = add(line((x_m, y_out), (R, y_out)))
  routes = [Route((pre, main_merge, post), 0, True), Route((ramp, ramp_merge, post), 2, True)]
  for j in range(n):
    y = (j + 0.5) * w
    routes.append(Route((add(line((R, y), (-R, y))),), 0, True))
    if j < n - 1:
      routes.append(Route((add(line((-R, -y), (R, -y))),), 0, True))
  feats = _lane_lines(n, w, -R, R)
  feats.append((line((x_g, -H), (x_t, -H), 1.0), ROAD_LINE_BROKEN_WHITE))
  # The gore island between road and ramp ends in a blunt 1 m nose: a razor-thin spike would make the side of
  # a point beside it ambiguous for nearest-point off-road tests (Waymax's).
  ramp_edge_in = offset(ramp_curve, 0.5 * w)
  nose = ramp_edge_in[ramp_edge_in[:, 1] <= -H - 1.0][::2]
  x_n = nose[-1, 0]
  feats += [
      (line((R, H), (-R, H), 0.5), types.MAP_ROAD_EDGE_BOUNDARY),
      (join(line((-R, -H), (x_n, -H), 0.5), line((x_n, -H), nose[-1], 0.5), nose[::-1]),
       types.MAP_ROAD_EDGE_BOUNDARY),
      (join(offset(ramp_curve, -0.5 * w)[::2], line((x_g, -H - w), (x_t, -H - w), 0.5), offset(taper, -0.5 * w)[::2],
            line((x_m, -H), (R, -H), 0.5)), types.MAP_ROAD_EDGE_BOUNDARY),
  ]
  return _network("merge", w, lanes, meta, routes, feats)


def light_states(groups: np.ndarray, num_steps: int, dt: float, green_s: float, yellow_s: float,
                 all_red_s: float, phase0_s: float) -> np.ndarray:
  """(L, num_steps) TL ids for two alternating phase groups: green, yellow, all red, then the other group."""
  t = phase0_s + dt * np.arange(num_steps)
  half = green_s + yellow_s + all_red_s
  u = (t[None, :] - groups[:, None] * half) % (2 * half)
  go, caution, stop = (types.TL_STATE_IDS[k] for k in ("go", "caution", "stop"))
  return np.where(u < green_s, go, np.where(u < green_s + yellow_s, caution, stop)).astype(np.int32)


def edge_segments(net: Network) -> tuple[np.ndarray, np.ndarray]:
  """Road-edge segments (E, 2) starts and ends for the on-road check."""
  a, b = [], []
  for poly, t in net.features:
    if t == types.MAP_ROAD_EDGE_BOUNDARY and len(poly) > 1:
      d = np.diff(poly, axis=0)
      cross = np.abs(d[:-1, 0] * d[1:, 1] - d[:-1, 1] * d[1:, 0])
      turn = (cross > 1e-9) | ((d[:-1] * d[1:]).sum(1) < 0)  # drop points inside straight runs only
      p = poly[np.concatenate([[True], turn, [True]])]
      a.append(p[:-1]); b.append(p[1:])
  return np.concatenate(a), np.concatenate(b)


def onroad_margin(points: np.ndarray, seg_a: np.ndarray, seg_b: np.ndarray, reach: float = 15.0) -> np.ndarray:
  """Signed distance (M,) of points (M, 2) into the drivable area (> 0 on road, < 0 off road), capped at `reach`.

  Only edge segments near the points' bounding box are searched: a point farther than `reach` from every edge
  is deep inside a road in these maps (roads are < 2 * reach wide and points come from boxes on lanes). The
  nearest segment decides the side; at a shared vertex (a tie) a point is on road if it is on the left of any
  tied segment, which is right for the convex corners (the merge gore nose) our maps have and no notches.
  """
  lo, hi = points.min(0) - reach, points.max(0) + reach
  near = ((np.minimum(seg_a, seg_b) <= hi) & (np.maximum(seg_a, seg_b) >= lo)).all(1)
  if not near.any():
    return np.full(len(points), reach)
  seg_a, seg_b = seg_a[near], seg_b[near]
  abx, aby = (seg_b - seg_a).T  # (E,)
  len2 = np.maximum(abx * abx + aby * aby, 1e-12)
  apx = points[:, 0:1] - seg_a[:, 0]  # (M, E)
  apy = points[:, 1:2] - seg_a[:, 1]
  t = np.clip((apx * abx + apy * aby) / len2, 0.0, 1.0)
  dx, dy = apx - t * abx, apy - t * aby
  d2 = dx * dx + dy * dy
  left = abx * apy - aby * apx > 0
  d2min = d2.min(1)
  tied = d2 <= d2min[:, None] * (1 + 1e-9) + 1e-12
  dmin = np.minimum(np.sqrt(d2min), reach)
  return np.where((tied & left).any(1), dmin, -dmin)
