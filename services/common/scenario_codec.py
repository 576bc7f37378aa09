"""Scenario pytree <-> named arrays of the ScenarioBatch wire schema.

Names are "<group>/<field>" for group in objects/roads/lights and the dataclass field names of
shared.scenes.types (ObjectTracks, RoadPoints, TrafficLights), e.g. "objects/x" (B, O, T) float32,
"roads/map_type" (B, P) int32, "lights/valid" (B, L, T) bool. A single unbatched scene gets a leading axis of 1.
The decoded arrays are read-only zero-copy views; `arrays_to_scenario(..., copy=True)` makes writable copies.

  msg = schemas.make("ScenarioBatch", "loader-0", seq, arrays=scenario_to_arrays(batch), num_scenes=B)
  batch = arrays_to_scenario(msg.arrays)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shared.scenes import types

GROUPS = (("objects", types.ObjectTracks), ("roads", types.RoadPoints), ("lights", types.TrafficLights))
# Dtypes the schema expects; padding.py already produces these, the cast only guards other producers.
_INT_FIELDS = {"object_type", "object_id", "map_type", "element_id", "lane_id", "state"}
_BOOL_FIELDS = {"valid", "is_sdc", "controllable", "exists"}


def _wire_dtype(field: str) -> type:
  return np.int32 if field in _INT_FIELDS else bool if field in _BOOL_FIELDS else np.float32


def scenario_to_arrays(scn: types.Scenario) -> dict[str, np.ndarray]:
  """Scenario (batched (B, ...) or single) -> {"objects/x": (B, O, T) float32, ...}."""
  batched = np.ndim(scn.objects.x) == 3
  out = {}
  for group, cls in GROUPS:
    node = getattr(scn, group)
    for f in dataclasses.fields(cls):
      a = np.asarray(getattr(node, f.name)).astype(_wire_dtype(f.name), copy=False)
      out[f"{group}/{f.name}"] = a if batched else a[None]
  return out


def arrays_to_scenario(arrays: dict[str, np.ndarray], copy: bool = False) -> types.Scenario:
  """Inverse of `scenario_to_arrays`; keeps the leading batch axis. Raises KeyError naming a missing array."""
  nodes = {}
  for group, cls in GROUPS:
    kw = {}
    for f in dataclasses.fields(cls):
      name = f"{group}/{f.name}"
      if name not in arrays:
        raise KeyError(f"ScenarioBatch lacks array {name!r}")
      kw[f.name] = np.array(arrays[name]) if copy else arrays[name]
    nodes[group] = cls(**kw)
  return types.Scenario(**nodes)
