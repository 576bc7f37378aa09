"""The one schema module: every message type on the bus, its version, arrays and scalar fields.

A schema lists arrays (name, dtype, rank; `name` ending in "/*" matches any name with that prefix, e.g. the
"obs/*" leaves of an observation pytree) and fields (name with SI unit suffix, msgpack type). Schema changes only
ADD arrays/fields, each tagged with the version that introduced it (`since`); a message of version v must carry
every required entry with since <= v, may not carry entries the schema does not know, and may not claim a version
newer than ours (`bad_version`). `validate(msg)` raises `codec.DecodeError`; `make(...)` builds a validated message.

Shapes (B = batch, T = time, O/P/L = scene caps, D... = any trailing feature dims):
  ScenarioBatch        "objects/x" ... "lights/valid": the Scenario pytree with a leading B axis
                       (see shared/scenes/types.py; services/common/scenario_codec.py converts)
  ActRequest           "obs/*" (B, ...); "mask" (B,) bool optional          fields request_id, params_version
  ActReply             "action" (B,) int32, "log_prob" (B,) f32, "value" (B,) f32 optional
  Trajectory           "obs/*" (T, B, ...), "action" (T, B) int32, "reward" (T, B) f32, "done" (T, B) bool,
                       "valid" (T, B) bool, "log_prob"/"value" (T, B) f32 optional;
                       v2 adds optional "terminated" (T, B) bool (done without bootstrap; done & ~terminated =
                       truncated) and "bootstrap_obs/*" (1, B, ...): s_T, the observation after the last step
  ExpertTrajectories   "obs/*" (T, B, ...), "action" (T, B) int32, "valid" (T, B) bool;
                       v2 adds optional "reward" (T, B) f32, "done", "terminated" (T, B) bool (value targets for BC)
  ReplayBatch          like Trajectory (v2: its v2 arrays) plus "weight" (B,) f32 optional, fields table, ...
  Params               any "/"-joined path of the param tree, float arrays        field params_version (and
                                                                                  min_data_version: replay masks
                                                                                  data of older versions)
  Heartbeat, EvalReport: fields only (EvalReport may add arrays).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from shared.wire.codec import DecodeError, Message

F32, I32, BOOL = ("float32",), ("int32",), ("bool",)
FLOATS = ("float16", "float32", "float64")
ANY = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64") + FLOATS
_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,),
                "dict": (dict,), "bytes": (bytes,)}


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  """Attributes: name (or "prefix/*"), dtypes allowed, rank (None: any), required, since (schema version)."""

  name: str
  dtypes: tuple[str, ...]
  rank: int | None
  required: bool = True
  since: int = 1

  def matches(self, name: str) -> bool:
    return name.startswith(self.name[:-1]) if self.name[-1] == "*" else name == self.name


@dataclasses.dataclass(frozen=True)
class FieldSpec:
  """Attributes: name (SI unit suffix where physical), type (key of _FIELD_TYPES), required, since."""

  name: str
  type: str
  required: bool = True
  since: int = 1


@dataclasses.dataclass(frozen=True)
class Schema:
  """Attributes: name, version (newest this code knows), arrays, fields."""

  name: str
  version: int
  arrays: tuple[ArraySpec, ...] = ()
  fields: tuple[FieldSpec, ...] = ()


def _scenario_arrays() -> tuple[ArraySpec, ...]:
  timed = ("x", "y", "yaw", "vel_x", "vel_y")
  objs = [ArraySpec(f"objects/{n}", F32, 3) for n in timed] + [ArraySpec("objects/valid", BOOL, 3)]
  objs += [ArraySpec(f"objects/{n}", F32, 2) for n in ("length", "width", "goal_x", "goal_y")]
  objs += [ArraySpec(f"objects/{n}", I32, 2) for n in ("object_type", "object_id")]
  objs += [ArraySpec(f"objects/{n}", BOOL, 2) for n in ("is_sdc", "controllable", "exists")]
  roads = [ArraySpec(f"roads/{n}", F32, 2) for n in ("x", "y", "dir_x", "dir_y")]
  roads += [ArraySpec("roads/map_type", I32, 2), ArraySpec("roads/element_id", I32, 2),
            ArraySpec("roads/valid", BOOL, 2)]
  lights = [ArraySpec("lights/lane_id", I32, 2), ArraySpec("lights/state", I32, 3),
            ArraySpec("lights/stop_x", F32, 2), ArraySpec("lights/stop_y", F32, 2),
            ArraySpec("lights/valid", BOOL, 3)]
  return tuple(objs + roads + lights)


_STEP_ARRAYS = (ArraySpec("obs/*", ANY, None, required=False), ArraySpec("action", I32, 2),
                ArraySpec("valid", BOOL, 2))
_POLICY_ARRAYS = (ArraySpec("reward", F32, 2), ArraySpec("done", BOOL, 2),
                  ArraySpec("log_prob", F32, 2, required=False), ArraySpec("value", F32, 2, required=False))
# v2 (the learner's PPO targets): which ends are absorbing, and the observation that bootstraps the unroll's end.
_TARGET_ARRAYS_V2 = (ArraySpec("terminated", BOOL, 2, required=False, since=2),
                     ArraySpec("bootstrap_obs/*", ANY, None, required=False, since=2))
_EXPERT_ARRAYS_V2 = (ArraySpec("reward", F32, 2, required=False, since=2),
                     ArraySpec("done", BOOL, 2, required=False, since=2),
                     ArraySpec("terminated", BOOL, 2, required=False, since=2))

SCHEMAS: dict[str, Schema] = {s.name: s for s in (
    Schema("ScenarioBatch", 1, _scenario_arrays(),
           (FieldSpec("num_scenes", "int"), FieldSpec("meta", "list", required=False))),
    Schema("ActRequest", 1, (ArraySpec("obs/*", ANY, None), ArraySpec("mask", BOOL, 1, required=False)),
           (FieldSpec("request_id", "int"), FieldSpec("params_version", "int", required=False))),
    Schema("ActReply", 1, (ArraySpec("action", I32, 1), ArraySpec("log_prob", F32, 1),
                           ArraySpec("value", F32, 1, required=False)),
           (FieldSpec("request_id", "int"), FieldSpec("params_version", "int"))),
    Schema("Trajectory", 2, _STEP_ARRAYS + _POLICY_ARRAYS + _TARGET_ARRAYS_V2,
           (FieldSpec("params_version", "int"), FieldSpec("env_steps", "int"),
            FieldSpec("episode_return_mean", "float", required=False), FieldSpec("dt_s", "float", required=False))),
    Schema("ExpertTrajectories", 2, _STEP_ARRAYS + _EXPERT_ARRAYS_V2,
           (FieldSpec("scenario_ids", "list"), FieldSpec("dt_s", "float", required=False))),
    Schema("ReplayBatch", 2, _STEP_ARRAYS + _POLICY_ARRAYS + _TARGET_ARRAYS_V2
           + (ArraySpec("weight", F32, 1, required=False),),
           (FieldSpec("table", "str"), FieldSpec("params_version", "int", required=False),
            FieldSpec("staleness_versions", "int", required=False))),
    Schema("Params", 1, (ArraySpec("*", FLOATS + ("int32", "bool"), None, required=False),),
           (FieldSpec("params_version", "int"), FieldSpec("learner_step", "int", required=False),
            FieldSpec("algo", "str", required=False), FieldSpec("min_data_version", "int", required=False))),
    Schema("Heartbeat", 1, (), (FieldSpec("component", "str"), FieldSpec("status", "str"),
                                FieldSpec("time_s", "float"), FieldSpec("uptime_s", "float", required=False))),
    Schema("EvalReport", 1, (ArraySpec("*", ANY, None, required=False),),
           (FieldSpec("params_version", "int"), FieldSpec("split", "str"), FieldSpec("metrics", "dict"),
            FieldSpec("num_scenes", "int", required=False))),
)}


def _spec_for(specs: list[ArraySpec], name: str) -> ArraySpec | None:
  exact = next((s for s in specs if s.name == name), None)
  return exact or next((s for s in specs if s.matches(name)), None)


def _check_arrays(schema: Schema, msg: Message) -> None:
  specs = [s for s in schema.arrays if s.since <= msg.version]
  for spec in specs:
    if spec.required and spec.name not in msg.arrays and not any(spec.matches(n) for n in msg.arrays):
      raise DecodeError("missing_array", f"{schema.name}.{spec.name}")
  for name, arr in msg.arrays.items():
    spec = _spec_for(specs, name)
    if spec is None:
      raise DecodeError("unknown_array", f"{schema.name}.{name}")
    if arr.dtype.str not in _DTYPE_STRS[spec.dtypes]:
      raise DecodeError("array_dtype", f"{schema.name}.{name}: {arr.dtype.name} not in {spec.dtypes}")
    if spec.rank is not None and arr.ndim != spec.rank:
      raise DecodeError("array_rank", f"{schema.name}.{name}: rank {arr.ndim} != {spec.rank}")


def _check_fields(schema: Schema, msg: Message) -> None:
  specs = {f.name: f for f in schema.fields if f.since <= msg.version}
  for spec in specs.values():
    if spec.required and spec.name not in msg.fields:
      raise DecodeError("missing_field", f"{schema.name}.{spec.name}")
  for name, value in msg.fields.items():
    spec = specs.get(name)
    if spec is None:
      raise DecodeError("unknown_field", f"{schema.name}.{name}")
    types = _FIELD_TYPES[spec.type]
    if not isinstance(value, types) or (spec.type != "bool" and isinstance(value, bool)):
      raise DecodeError("field_type", f"{schema.name}.{name}: {type(value).__name__} is not {spec.type}")


_DTYPE_STRS = {s.dtypes: frozenset(np.dtype(d).str for d in s.dtypes)
               for sch in SCHEMAS.values() for s in sch.arrays}


def validate(msg: Message) -> Message:
  """Checks a message against its schema; returns it, or raises DecodeError."""
  schema = SCHEMAS.get(msg.schema)
  if schema is None:
    raise DecodeError("unknown_schema", repr(msg.schema)[:60])
  if not 1 <= msg.version <= schema.version:
    raise DecodeError("bad_version", f"{msg.schema} v{msg.version} (known: 1..{schema.version})")
  _check_arrays(schema, msg)
  _check_fields(schema, msg)
  return msg


def make(schema: str, producer: str, seq: int, epoch: int = 0, arrays: dict[str, Any] | None = None,
         **fields: Any) -> Message:
  """Builds a message at the newest version of `schema` and validates it (raises DecodeError if it is wrong).
  Top-level numpy scalar fields become Python scalars so msgpack can pack them."""
  if schema not in SCHEMAS:
    raise DecodeError("unknown_schema", repr(schema)[:60])
  arrs = {k: np.asarray(v) for k, v in (arrays or {}).items()}
  plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in fields.items()}  # np.float32(0.5) -> 0.5
  return validate(Message(schema, SCHEMAS[schema].version, producer, int(epoch), int(seq), plain, arrs))
