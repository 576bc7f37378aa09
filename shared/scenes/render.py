"""Pictures of scenes: a PNG of one step, an animated GIF of a log replay or of a rollout against its log.

Matplotlib's Agg canvas only (no pyplot, no global backend), Pillow for the GIF. Roads by type (lanes faint,
road lines white / yellow with broken ones dashed, road edges black, crosswalks, stop signs as red octagons),
agents as oriented boxes by type (the SDC red with a thick outline; log-following objects pale and dashed),
logged trajectories as thin lines, traffic lights as dots at their stop points coloured by the state at t.
Padding is dropped through the masks; the view is centred on the valid objects (real maps reach far).

Inputs: a `Scenario` for one scene (numpy or jax arrays, no batch axis); sim_xy_yaw: (x, y, yaw) each (O, T).
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from PIL import Image

from shared.scenes import types

BACKGROUND = "#b4b4b4"
TYPE_COLOURS = {types.TYPE_VEHICLE: "#1f5fbf", types.TYPE_PEDESTRIAN: "#1b9e4b", types.TYPE_CYCLIST: "#e6820e",
                types.TYPE_OTHER: "#8e44ad", types.TYPE_UNSET: "#7f7f7f"}
SDC_COLOUR = "#d62728"
LIGHT_COLOURS = {0: "#808080", 1: "#e31a1c", 2: "#ffb300", 3: "#2ca02c", 4: "#e31a1c", 5: "#ffb300", 6: "#2ca02c",
                 7: "#e31a1c", 8: "#ffb300"}
WHITE_LINES, YELLOW_LINES = (5, 6, 7, 8), (9, 10, 11, 12, 13)
BROKEN_LINES = (6, 9, 10)
MARGIN_M = 20.0


def _np(scenario: types.Scenario):
  import jax

  return jax.tree.map(np.asarray, scenario)


def _polylines(roads, keep) -> list[np.ndarray]:
  """(K, 2) polylines of consecutive valid points of one element whose type passes `keep`."""
  ok = roads.valid & keep
  idx = np.nonzero(ok)[0]
  if not len(idx):
    return []
  brk = np.nonzero((np.diff(idx) != 1) | (np.diff(roads.element_id[idx]) != 0))[0] + 1
  xy = np.stack([roads.x[idx], roads.y[idx]], -1)
  return [p for p in np.split(xy, brk) if len(p) > 1]


def draw_roads(ax, roads) -> None:
  mt = roads.map_type
  broken = np.isin(mt, BROKEN_LINES)
  styles = [  # (mask, colour, width, z order, dashed)
      (np.isin(mt, types.MAP_LANE_IDS), "#e2e2e2", 0.6, 1, False),
      (np.isin(mt, WHITE_LINES) & ~broken, "#ffffff", 1.0, 3, False),
      (np.isin(mt, WHITE_LINES) & broken, "#ffffff", 1.0, 3, True),
      (np.isin(mt, YELLOW_LINES) & ~broken, "#ffd400", 1.2, 3, False),
      (np.isin(mt, YELLOW_LINES) & broken, "#ffd400", 1.2, 3, True),
      (np.isin(mt, types.MAP_ROAD_EDGE_IDS), "#111111", 1.4, 4, False),
      (np.isin(mt, (types.MAP_SPEED_BUMP, types.MAP_DRIVEWAY)), "#6d6d6d", 0.8, 2, False),
  ]
  for keep, colour, lw, z, dashed in styles:
    lines = _polylines(roads, keep)
    if lines:
      ax.add_collection(LineCollection(lines, colors=colour, linewidths=lw, zorder=z,
                                       linestyles=(0, (4, 4)) if dashed else "solid", capstyle="round",
                                       joinstyle="round"))
  cw = roads.valid & (mt == types.MAP_CROSSWALK)
  polys = [np.stack([roads.x[cw & (roads.element_id == e)], roads.y[cw & (roads.element_id == e)]], -1)
           for e in np.unique(roads.element_id[cw])]
  if polys:
    ax.add_collection(PolyCollection(polys, facecolors="#f5f5f5", edgecolors="#ffffff", alpha=0.55, hatch="||",
                                     zorder=2))
  ss = roads.valid & (mt == types.MAP_STOP_SIGN)
  if ss.any():
    ax.scatter(roads.x[ss], roads.y[ss], marker="8", s=70, c="#d00000", edgecolors="white", linewidths=0.8, zorder=6)


def box_polygons(x, y, yaw, length, width) -> np.ndarray:
  """(O, 4, 2) corners of oriented boxes: front-left, rear-left, rear-right, front-right."""
  c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
  lx = 0.5 * length[:, None] * np.array([1.0, -1.0, -1.0, 1.0])
  ly = 0.5 * width[:, None] * np.array([1.0, 1.0, -1.0, -1.0])
  return np.stack([x[:, None] + c * lx - s * ly, y[:, None] + s * lx + c * ly], -1)


def heading_ticks(x, y, yaw, length) -> np.ndarray:
  """(O, 2, 2) segments from each box centre to the middle of its front edge."""
  tip = np.stack([x + 0.5 * length * np.cos(yaw), y + 0.5 * length * np.sin(yaw)], -1)
  return np.stack([np.stack([x, y], -1), tip], 1)


def agent_style(obj) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
  """Face colours (O, 4), edge colours (O, 4), line widths (O,) and line styles: SDC red, log-following pale."""
  from matplotlib.colors import to_rgba

  face = np.array([to_rgba(TYPE_COLOURS.get(int(t), "#7f7f7f")) for t in obj.object_type])
  face[obj.is_sdc] = to_rgba(SDC_COLOUR)
  follow = ~obj.controllable & ~obj.is_sdc
  face[follow, 3] = 0.35
  edge = np.tile(np.array(to_rgba("#101010")), (len(face), 1))
  lw = np.where(obj.is_sdc, 2.0, 0.7)
  ls = ["--" if f else "-" for f in follow]
  return face, edge, lw, ls


def view_limits(obj, extra_xy: np.ndarray | None = None) -> tuple[float, float, float, float]:
  """A square window (x0, x1, y0, y1) around the valid object positions (1st-99th percentile, plus extra points),
  with MARGIN_M metres on each side."""
  pts = np.stack([obj.x[obj.valid], obj.y[obj.valid]], -1)
  if extra_xy is not None:
    pts = np.concatenate([pts, extra_xy.reshape(-1, 2)])
  if not len(pts):
    return -50.0, 50.0, -50.0, 50.0
  lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
  c, half = 0.5 * (lo + hi), 0.5 * float(np.max(hi - lo)) + MARGIN_M
  return c[0] - half, c[0] + half, c[1] - half, c[1] + half


def _new_axes(size_in: float = 8.0, dpi: int = 100):
  fig = Figure(figsize=(size_in, size_in), dpi=dpi)
  FigureCanvasAgg(fig)
  ax = fig.add_axes((0.02, 0.02, 0.96, 0.92))
  return fig, ax


def _setup(ax, sc, lims, trajectories: bool) -> None:
  ax.set_facecolor(BACKGROUND)
  ax.set_xlim(lims[0], lims[1])
  ax.set_ylim(lims[2], lims[3])
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks([])
  draw_roads(ax, sc.roads)
  if trajectories:
    obj = sc.objects
    face, _, _, _ = agent_style(obj)
    keep = np.nonzero(obj.valid.sum(1) > 1)[0]
    lines = [np.stack([obj.x[i][obj.valid[i]], obj.y[i][obj.valid[i]]], -1) for i in keep]
    if lines:
      ax.add_collection(LineCollection(lines, colors=face[keep, :3], linewidths=0.8, alpha=0.6, zorder=5))


def _title(sc, meta, t: int) -> str:
  name = f"{meta.scenario_id}" if meta is not None else "scene"
  return f"{name}   t={t} ({t * types.WOMD_DT_S:.1f} s)"


def _lights_at(sc, t: int):
  lt = sc.lights
  on = lt.valid[:, t]
  cols = [LIGHT_COLOURS.get(int(s), "#808080") for s in lt.state[on, t]]
  return np.stack([lt.stop_x[on], lt.stop_y[on]], -1), cols


def render_scene(scenario: types.Scenario, meta: types.SceneMeta | None = None, t: int | None = None, ax=None,
                 trajectories: bool = True, out: str | None = None):
  """Draws step t (default: the init step) of one scene; saves a PNG to `out` if given; returns the Figure."""
  sc = _np(scenario)
  obj = sc.objects
  T = obj.x.shape[-1]
  t = min(types.WOMD_INIT_STEP, T - 1) if t is None else int(t)
  if not 0 <= t < T:
    raise ValueError(f"render_scene: t={t} outside 0..{T - 1}")
  fig, ax = _new_axes() if ax is None else (ax.figure, ax)
  _setup(ax, sc, view_limits(obj), trajectories)
  on = obj.valid[:, t]
  face, edge, lw, ls = agent_style(obj)
  polys = box_polygons(obj.x[:, t], obj.y[:, t], obj.yaw[:, t], obj.length, obj.width)[on]
  ax.add_collection(PolyCollection(polys, facecolors=face[on], edgecolors=edge[on], linewidths=lw[on],
                                   linestyles=[s for s, o in zip(ls, on) if o], zorder=8))
  ticks = heading_ticks(obj.x[:, t], obj.y[:, t], obj.yaw[:, t], obj.length)[on]
  ax.add_collection(LineCollection(ticks, colors="white", linewidths=0.8, zorder=8.5))
  xy, cols = _lights_at(sc, t)
  if len(xy):
    ax.scatter(xy[:, 0], xy[:, 1], c=cols, s=45, edgecolors="black", linewidths=0.6, zorder=9)
  ax.set_title(_title(sc, meta, t), fontsize=11)
  if out is not None:
    fig.savefig(out, dpi=fig.dpi)
  return fig


def _frame(fig) -> Image.Image:
  buf = np.asarray(fig.canvas.buffer_rgba())
  # Fast octree quantisation here: Pillow's default median cut at GIF save costs ~150 ms a frame.
  return Image.fromarray(buf[..., :3].copy()).quantize(colors=128, method=Image.Quantize.FASTOCTREE,
                                                       dither=Image.Dither.NONE)


def render_replay_gif(scenario: types.Scenario, out_path: str, meta: types.SceneMeta | None = None,
                      sim_xy_yaw: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, stride: int = 2,
                      fps: int = 10, size_in: float = 6.0, dpi: int = 90) -> int:
  """Writes an animated GIF of steps 0, stride, ... and returns its frame count.

  Log replay by default; with `sim_xy_yaw` (x, y, yaw each (O, T) of a rollout) the simulated boxes are filled
  and the logged boxes drawn as outlines. The map is drawn once and restored from a saved background per frame;
  only the boxes, lights and title are redrawn.
  """
  sc = _np(scenario)
  obj = sc.objects
  T = obj.x.shape[-1]
  extra = None if sim_xy_yaw is None else np.stack([np.asarray(sim_xy_yaw[0])[obj.valid],
                                                    np.asarray(sim_xy_yaw[1])[obj.valid]], -1)
  fig, ax = _new_axes(size_in, dpi)
  _setup(ax, sc, view_limits(obj, extra), trajectories=True)
  face, edge, lw, ls = agent_style(obj)
  # Animated artists are skipped by the full draw below, so the saved background holds the map only.
  boxes = ax.add_collection(PolyCollection([], zorder=8, linewidths=0.7, animated=True))
  outlines = ax.add_collection(PolyCollection([], facecolors="none", zorder=8.2, linewidths=1.0, linestyles="--",
                                              animated=True))
  ticks = ax.add_collection(LineCollection([], colors="white", linewidths=0.8, zorder=8.5, animated=True))
  lights = ax.scatter(np.zeros(0), np.zeros(0), s=45, edgecolors="black", linewidths=0.6, zorder=9, animated=True)
  title = ax.text(0.5, 1.01, "", transform=ax.transAxes, ha="center", va="bottom", fontsize=10, animated=True)
  fig.canvas.draw()
  background = fig.canvas.copy_from_bbox(fig.bbox)
  animated = ([outlines] if sim_xy_yaw is not None else []) + [boxes, ticks, lights, title]
  frames = []
  for t in range(0, T, max(1, int(stride))):
    on = obj.valid[:, t]
    if sim_xy_yaw is None:
      x, y, yaw = obj.x[:, t], obj.y[:, t], obj.yaw[:, t]
    else:
      x, y, yaw = (np.asarray(a)[:, t] for a in sim_xy_yaw)
      log_polys = box_polygons(obj.x[:, t], obj.y[:, t], obj.yaw[:, t], obj.length, obj.width)[on]
      outlines.set_verts(log_polys)
      outlines.set_edgecolors(face[on][:, :3])
    boxes.set_verts(box_polygons(x, y, yaw, obj.length, obj.width)[on])
    boxes.set_facecolors(face[on])
    boxes.set_edgecolors(edge[on])
    boxes.set_linewidths(lw[on])
    boxes.set_linestyles([s for s, o in zip(ls, on) if o] or "-")
    ticks.set_segments(heading_ticks(x, y, yaw, obj.length)[on])
    xy, cols = _lights_at(sc, t)
    lights.set_offsets(xy if len(xy) else np.zeros((0, 2)))
    lights.set_facecolors(cols if cols else "none")
    title.set_text(_title(sc, meta, t) + ("   filled: policy, dashed: log" if sim_xy_yaw is not None else ""))
    fig.canvas.restore_region(background)
    for artist in animated:
      ax.draw_artist(artist)
    frames.append(_frame(fig))
  frames[0].save(out_path, save_all=True, append_images=frames[1:], duration=max(1, int(1000 / fps)), loop=0)
  return len(frames)
