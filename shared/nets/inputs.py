"""Network inputs: the observation arrays the encoders read, decoupled from the simulator's own types.

Shapes, with `...` any leading batch axes (agents, scenes, time):
  ego            (..., E)        the controlled agent's own state (speed, steering, stop-line / light features, ...)
  agents         (..., k, A)     the k nearest other agents in the ego frame
  agents_mask    (..., k)        bool, True where the agent slot holds a real agent
  roads          (..., kr, R)    the kr nearest road points
  roads_mask     (..., kr)       bool
  route          (..., kroute, 2) route points ahead, ego frame
  route_mask     (..., kroute)   bool, or None when every route slot is real
  light          (..., Lf)       traffic-light features
  remaining_time (..., 1)        fraction of the episode left; read by the value head only
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array

_FIELDS = ("ego", "agents", "agents_mask", "roads", "roads_mask", "route", "light", "remaining_time")


@flax.struct.dataclass
class NetInput:
  """One batch of encoder inputs (see the module docstring for shapes).

  Attributes:
    ego, agents, agents_mask, roads, roads_mask, route, light, remaining_time: the observation arrays.
    route_mask: optional bool mask over route points (None: all valid).
  """

  ego: Array
  agents: Array
  agents_mask: Array
  roads: Array
  roads_mask: Array
  route: Array
  light: Array
  remaining_time: Array
  route_mask: Array | None = None

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self.ego.shape[:-1])

  def route_valid(self) -> Array:
    if self.route_mask is None:
      return jnp.ones(self.route.shape[:-1], bool)
    return self.route_mask.astype(bool)


def from_observation(obs: Any) -> NetInput:
  """Reads the fields by name from any object with those attributes (the simulator's Observation) or a mapping."""
  get = (lambda name, default=None: obs.get(name, default)) if isinstance(obs, Mapping) else (
      lambda name, default=None: getattr(obs, name, default))
  missing = [name for name in _FIELDS if get(name) is None]
  if missing:
    raise ValueError(f"observation lacks fields {missing}")
  return NetInput(**{name: get(name) for name in _FIELDS}, route_mask=get("route_mask"))


@dataclasses.dataclass(frozen=True)
class InputShapes:
  """Per-sample feature sizes, for initialising networks and for tests.

  The defaults are a reference layout (8 agents, 32 road points, 16 route points), used to size the presets.

  Attributes:
    ego_features: E.
    num_agents, agent_features: k, A.
    num_roads, road_features: kr, R.
    num_route: kroute.
    light_features: Lf.
  """

  ego_features: int = 10
  num_agents: int = 8
  agent_features: int = 10
  num_roads: int = 32
  road_features: int = 8
  num_route: int = 16
  light_features: int = 6


def dummy_input(shapes: InputShapes = InputShapes(), batch_shape: tuple[int, ...] = (1,)) -> NetInput:
  """All-zero NetInput with every slot valid, for `init`."""
  b = tuple(batch_shape)
  return NetInput(
      ego=jnp.zeros(b + (shapes.ego_features,)),
      agents=jnp.zeros(b + (shapes.num_agents, shapes.agent_features)),
      agents_mask=jnp.ones(b + (shapes.num_agents,), bool),
      roads=jnp.zeros(b + (shapes.num_roads, shapes.road_features)),
      roads_mask=jnp.ones(b + (shapes.num_roads,), bool),
      route=jnp.zeros(b + (shapes.num_route, 2)),
      light=jnp.zeros(b + (shapes.light_features,)),
      remaining_time=jnp.zeros(b + (1,)),
  )


# FLAT LAYOUT: the wire carries one flat float32 vector per agent (every observation leaf flattened, in field
# order); a static layout turns it back into the NetInput the networks read, with no knowledge of the simulator.

@dataclasses.dataclass(frozen=True)
class FlatLayout:
  """Where each observation field lies in a flat per-agent feature vector (static, hashable).

  Attributes:
    fields: (name, per-agent shape, dtype name) in the order the fields are concatenated.
  """

  fields: tuple[tuple[str, tuple[int, ...], str], ...]

  @property
  def size(self) -> int:
    """F: the flat vector's length."""
    return int(sum(_prod(shape) for _, shape, _ in self.fields))

  def offsets(self) -> dict[str, tuple[int, int]]:
    """{name: (start, stop)} into the flat vector."""
    out, start = {}, 0
    for name, shape, _ in self.fields:
      out[name] = (start, start + _prod(shape))
      start += _prod(shape)
    return out


def _prod(shape: tuple[int, ...]) -> int:
  n = 1
  for s in shape:
    n *= int(s)
  return n


def _named_leaves(obs: Any) -> list[tuple[str, Any]]:
  """(name, array) of every non-None field, in declaration order (dataclass) or insertion order (mapping)."""
  if isinstance(obs, Mapping):
    items = list(obs.items())
  elif dataclasses.is_dataclass(obs):
    items = [(f.name, getattr(obs, f.name)) for f in dataclasses.fields(obs)]
  else:
    raise TypeError(f"cannot read fields of {type(obs).__name__}")
  return [(name, value) for name, value in items if value is not None]


def flat_layout(example: Any) -> FlatLayout:
  """The layout of ONE agent's observation `example` (arrays or ShapeDtypeStructs without batch axes), fields in
  the example's own order, which is the order `jax.tree.leaves` flattens a flax struct in."""
  fields = tuple((name, tuple(int(d) for d in x.shape), jnp.dtype(x.dtype).name) for name, x in _named_leaves(example))
  missing = [name for name in _FIELDS if name not in {f[0] for f in fields}]
  if missing:
    raise ValueError(f"observation example lacks fields {missing}")
  return FlatLayout(fields)


def flatten(obs: Any, layout: FlatLayout) -> Array:
  """Observation (or NetInput / mapping) with leaves (..., *shape) -> (..., F) float32 (bools as 0/1)."""
  get = (lambda n: obs[n]) if isinstance(obs, Mapping) else (lambda n: getattr(obs, n))
  first_name, first_shape, _ = layout.fields[0]
  lead = get(first_name).shape[:get(first_name).ndim - len(first_shape)]
  parts = [get(name).astype(jnp.float32).reshape(lead + (_prod(shape),)) for name, shape, _ in layout.fields]
  return jnp.concatenate(parts, axis=-1)


def unflatten(flat: Array, layout: FlatLayout) -> NetInput:
  """(..., F) flat features -> NetInput with leading axes (...); bool fields come back as bool (> 0.5)."""
  if flat.shape[-1] != layout.size:
    raise ValueError(f"flat features have {flat.shape[-1]} columns, the layout {layout.size}")
  lead = flat.shape[:-1]
  values = {}
  for name, (start, stop) in layout.offsets().items():
    shape, dtype = next((s, d) for n, s, d in layout.fields if n == name)
    x = flat[..., start:stop].reshape(lead + shape)
    values[name] = x > 0.5 if dtype == "bool" else x.astype(dtype)
  return from_observation(values)
