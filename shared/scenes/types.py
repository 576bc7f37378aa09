"""The Scenario pytree: one driving scene padded to fixed caps.

Every array has a fixed shape set by `SceneConfig`, so a batch of scenes stacks into one pytree that `jax.vmap`
and `lax.scan` can consume without recompiling. Padding entries are masked by their `valid` arrays and carry
zeros; code multiplies by masks, it never branches on them.

Shapes (O = max_objects, T = num_timesteps, P = max_road_points, L = max_tl_lanes):
  objects.x, y, yaw, vel_x, vel_y, valid: (..., O, T)  metres, radians (wrapped to [-pi, pi)), m/s
  objects.length, width: (..., O) metres; object_type, object_id: (..., O) int32; is_sdc, controllable, exists: (..., O)
  objects.goal_x, goal_y: (..., O) metres (last valid logged position)
  roads.x, y, dir_x, dir_y: (..., P) metres / unit vector to the next point of the same element
  roads.map_type, element_id: (..., P) int32; roads.valid: (..., P) bool
  lights.state: (..., L, T) int32 (TL_* ids), lights.stop_x, stop_y: (..., L), lights.lane_id: (..., L),
  lights.valid: (..., L, T) bool
Coordinates are in a scene-local frame: the reader subtracts `SceneMeta.origin_xy` (float64) so float32 keeps
centimetre precision in cities whose global coordinates run into the thousands.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import numpy as np

# Object types (index 0 marks padding).
TYPE_UNSET, TYPE_VEHICLE, TYPE_PEDESTRIAN, TYPE_CYCLIST, TYPE_OTHER = 0, 1, 2, 3, 4
OBJECT_TYPE_IDS = {"unset": 0, "vehicle": 1, "pedestrian": 2, "cyclist": 3, "other": 4}

# Waymax / WOMD map element ids (GPUDrive's `map_element_id`).
MAP_LANE_UNDEFINED, MAP_LANE_FREEWAY, MAP_LANE_SURFACE_STREET, MAP_LANE_BIKE = 0, 1, 2, 3
MAP_ROAD_LINE_IDS = tuple(range(5, 14))
MAP_ROAD_EDGE_UNKNOWN, MAP_ROAD_EDGE_BOUNDARY, MAP_ROAD_EDGE_MEDIAN = 14, 15, 16
MAP_STOP_SIGN, MAP_CROSSWALK, MAP_SPEED_BUMP, MAP_DRIVEWAY, MAP_UNKNOWN = 17, 18, 19, 20, -1
MAP_LANE_IDS = (0, 1, 2, 3)
MAP_ROAD_EDGE_IDS = (14, 15, 16)
# Fallback ids for a road `type` string when `map_element_id` is missing.
ROAD_TYPE_DEFAULT_IDS = {
    "lane": MAP_LANE_SURFACE_STREET,
    "road_line": 6,
    "road_edge": MAP_ROAD_EDGE_BOUNDARY,
    "stop_sign": MAP_STOP_SIGN,
    "crosswalk": MAP_CROSSWALK,
    "speed_bump": MAP_SPEED_BUMP,
    "driveway": MAP_DRIVEWAY,
}

# Traffic light states, Waymax `TrafficLightStates` order.
TL_STATE_NAMES = (
    "unknown", "arrow_stop", "arrow_caution", "arrow_go", "stop", "caution", "go", "flashing_stop",
    "flashing_caution",
)
TL_STATE_IDS = {name: i for i, name in enumerate(TL_STATE_NAMES)}
TL_STOP_STATES = (1, 4, 7)  # arrow_stop, stop, flashing_stop: a car must not cross the stop point
TL_CAUTION_STATES = (2, 5, 8)

WOMD_DT_S = 0.1
WOMD_INIT_STEP = 10  # t=0..9 history, t=10 current


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  """Fixed caps that every Scenario is padded (or cut) to.

  Attributes:
    max_objects: objects per scene; larger scenes keep the objects nearest the self-driving car.
    max_road_points: road points per scene; larger maps keep the points nearest the self-driving car's logged path.
    max_tl_lanes: traffic-light controlled lanes per scene.
    num_timesteps: logged steps per scene (WOMD: 91 at 10 Hz).
    init_step: first simulated step; cutting measures distances to the self-driving car at this step.
  """

  max_objects: int = 128
  max_road_points: int = 20000
  max_tl_lanes: int = 16
  num_timesteps: int = 91
  init_step: int = WOMD_INIT_STEP


@flax.struct.dataclass
class ObjectTracks:
  """Logged object states; see the module docstring for shapes."""

  x: Any
  y: Any
  yaw: Any
  vel_x: Any
  vel_y: Any
  valid: Any
  length: Any
  width: Any
  object_type: Any
  object_id: Any
  is_sdc: Any
  controllable: Any
  exists: Any
  goal_x: Any
  goal_y: Any


@flax.struct.dataclass
class RoadPoints:
  """Map polylines flattened to points; see the module docstring for shapes."""

  x: Any
  y: Any
  dir_x: Any
  dir_y: Any
  map_type: Any
  element_id: Any
  valid: Any


@flax.struct.dataclass
class TrafficLights:
  """Per-lane light states and stop points; see the module docstring for shapes."""

  lane_id: Any
  state: Any
  stop_x: Any
  stop_y: Any
  valid: Any


@flax.struct.dataclass
class Scenario:
  """One padded scene (or a batch of them, with leading batch axes)."""

  objects: ObjectTracks
  roads: RoadPoints
  lights: TrafficLights

  @property
  def num_objects(self) -> int:
    return self.objects.x.shape[-2]

  @property
  def num_timesteps(self) -> int:
    return self.objects.x.shape[-1]

  @property
  def num_road_points(self) -> int:
    return self.roads.x.shape[-1]


@dataclasses.dataclass
class SceneMeta:
  """Host-side facts about a scene that are not arrays (kept out of the pytree so batches stack).

  Attributes:
    name: file name or generator name.
    scenario_id: WOMD scenario id or synthetic seed tag.
    origin_xy: global coordinates (float64, metres) subtracted from every position.
    num_objects: objects in the source scene before cutting.
    num_road_points: road points in the source before cutting.
    num_tl_lanes: traffic-light lanes in the source before cutting.
    cut_objects: objects dropped to fit the caps.
    cut_road_points: road points dropped to fit the caps.
    cut_tl_lanes: traffic-light lanes dropped to fit the caps.
    sdc_index: index of the self-driving car in the padded object arrays (-1 if none).
  """

  name: str
  scenario_id: str
  origin_xy: tuple[float, float] = (0.0, 0.0)
  num_objects: int = 0
  num_road_points: int = 0
  num_tl_lanes: int = 0
  cut_objects: int = 0
  cut_road_points: int = 0
  cut_tl_lanes: int = 0
  sdc_index: int = -1

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["origin_xy"] = [float(v) for v in self.origin_xy]
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "SceneMeta":
    d = dict(d)
    d["origin_xy"] = tuple(float(v) for v in d.get("origin_xy", (0.0, 0.0)))
    return cls(**d)


def stack(scenarios: list[Scenario]) -> Scenario:
  """Stacks scenes with equal caps along a new leading batch axis (numpy, host side)."""
  if not scenarios:
    raise ValueError("stack: no scenarios given")
  import jax

  return jax.tree.map(lambda *xs: np.stack(xs), *scenarios)


def unstack(batch: Scenario) -> list[Scenario]:
  """Inverse of `stack` for a batch with one leading axis."""
  import jax

  n = batch.objects.x.shape[0]
  return [jax.tree.map(lambda a, i=i: np.asarray(a)[i], batch) for i in range(n)]
