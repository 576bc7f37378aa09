"""Schemas: make/validate, additive versioning rules, the ScenarioBatch converters, the endpoint registry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared.wire import codec, registry, schemas
from shared.wire.codec import DecodeError


def _reason(fn, *a, **kw) -> str:
  with pytest.raises(DecodeError) as ei:
    fn(*a, **kw)
  return ei.value.reason


def test_make_round_trip_act_reply():
  msg = schemas.make("ActReply", "inf-0", seq=5, epoch=2, arrays={"action": np.array([3, 1], np.int32),
                     "log_prob": np.array([-0.5, -1.5], np.float32)}, request_id=9, params_version=4)
  out = codec.decode(codec.encode(msg))
  assert (out.schema, out.version, out.producer, out.epoch, out.seq) == ("ActReply", 1, "inf-0", 2, 5)
  assert out.fields == {"request_id": 9, "params_version": 4}
  assert out.arrays["action"].tolist() == [3, 1]


def test_make_turns_numpy_scalars_into_python():
  msg = schemas.make("Heartbeat", "p", 0, component="x", status="ok", time_s=np.float32(0.5), uptime_s=np.int64(3))
  out = codec.decode(codec.encode(msg))
  assert out.fields["time_s"] == 0.5 and type(out.fields["time_s"]) is float and out.fields["uptime_s"] == 3


def test_validation_reasons():
  act = {"action": np.zeros(2, np.int32), "log_prob": np.zeros(2, np.float32)}
  assert _reason(schemas.make, "ActReply", "p", 0, arrays={"action": act["action"]}, request_id=1,
                 params_version=1) == "missing_array"
  assert _reason(schemas.make, "ActReply", "p", 0, arrays={**act, "action": np.zeros(2, np.int64)},
                 request_id=1, params_version=1) == "array_dtype"
  assert _reason(schemas.make, "ActReply", "p", 0, arrays={**act, "action": np.zeros((2, 1), np.int32)},
                 request_id=1, params_version=1) == "array_rank"
  assert _reason(schemas.make, "ActReply", "p", 0, arrays={**act, "extra": np.zeros(2, np.int32)},
                 request_id=1, params_version=1) == "unknown_array"
  assert _reason(schemas.make, "ActReply", "p", 0, arrays=act, request_id=1) == "missing_field"
  assert _reason(schemas.make, "ActReply", "p", 0, arrays=act, request_id=True,
                 params_version=1) == "field_type"
  assert _reason(schemas.make, "Nope", "p", 0) == "unknown_schema"


def test_prefix_arrays_and_params_paths():
  req = schemas.make("ActRequest", "sim", 0, arrays={"obs/ego": np.zeros((4, 7), np.float32),
                                                     "obs/agents/xy": np.zeros((4, 8, 2), np.float32)},
                     request_id=0)
  assert sorted(req.arrays) == ["obs/agents/xy", "obs/ego"]
  assert _reason(schemas.make, "ActRequest", "sim", 0, arrays={}, request_id=0) == "missing_array"
  p = schemas.make("Params", "learner", 3, arrays={"policy/dense_0/kernel": np.zeros((3, 4), np.float32)},
                   params_version=3)
  assert p.fields["params_version"] == 3
  assert _reason(schemas.make, "Params", "l", 0, arrays={"w": np.zeros(2, np.uint8)},
                 params_version=1) == "array_dtype"


def test_versions_only_add(monkeypatch):
  base = schemas.SCHEMAS["Heartbeat"]
  v2 = dataclasses.replace(base, version=2, fields=base.fields + (schemas.FieldSpec("load_ratio", "float", since=2),))
  monkeypatch.setitem(schemas.SCHEMAS, "Heartbeat", v2)
  old = codec.Message("Heartbeat", 1, "p", 0, 0, {"component": "x", "status": "ok", "time_s": 1.0})
  assert schemas.validate(old) is old  # a v1 message stays valid under a v2 reader
  new = dataclasses.replace(old, version=2)
  assert _reason(schemas.validate, new) == "missing_field"
  assert _reason(schemas.validate, dataclasses.replace(old, version=3)) == "bad_version"
  assert _reason(schemas.validate, dataclasses.replace(old, version=0)) == "bad_version"


def test_every_schema_has_si_or_plain_field_names():
  units = ("_s", "_mps", "_m", "_ratio", "_id", "_ids", "version", "steps", "_mean")
  for s in schemas.SCHEMAS.values():
    for f in s.fields:
      if f.type == "float":
        assert f.name.endswith(units), f"{s.name}.{f.name} lacks an SI unit suffix"


def test_scenario_codec_round_trip():
  sc = pytest.importorskip("services.common.scenario_codec")
  from shared.scenes import types
  B, O, T, P, L = 2, 3, 5, 7, 2
  rng = np.random.default_rng(0)
  def node(cls, shapes):
    return cls(**{f.name: shapes[f.name]() for f in dataclasses.fields(cls)})
  f32 = lambda *s: (lambda: rng.standard_normal(s).astype(np.float32))
  i32 = lambda *s: (lambda: rng.integers(0, 9, s).astype(np.int32))
  bl = lambda *s: (lambda: rng.random(s) < 0.5)
  objs = node(types.ObjectTracks, {**{k: f32(B, O, T) for k in ("x", "y", "yaw", "vel_x", "vel_y")},
              "valid": bl(B, O, T), **{k: f32(B, O) for k in ("length", "width", "goal_x", "goal_y")},
              "object_type": i32(B, O), "object_id": i32(B, O), "is_sdc": bl(B, O), "controllable": bl(B, O),
              "exists": bl(B, O)})
  roads = node(types.RoadPoints, {**{k: f32(B, P) for k in ("x", "y", "dir_x", "dir_y")},
               "map_type": i32(B, P), "element_id": i32(B, P), "valid": bl(B, P)})
  lights = node(types.TrafficLights, {"lane_id": i32(B, L), "state": i32(B, L, T), "stop_x": f32(B, L),
                "stop_y": f32(B, L), "valid": bl(B, L, T)})
  scn = types.Scenario(objects=objs, roads=roads, lights=lights)
  arrays = sc.scenario_to_arrays(scn)
  assert len(arrays) == 15 + 7 + 5
  msg = schemas.make("ScenarioBatch", "loader", 0, arrays=arrays, num_scenes=B)
  back = sc.arrays_to_scenario(codec.decode(codec.encode(msg)).arrays)
  np.testing.assert_array_equal(back.objects.yaw, scn.objects.yaw)
  np.testing.assert_array_equal(back.lights.state, scn.lights.state)
  np.testing.assert_array_equal(back.roads.valid, scn.roads.valid)
  single = sc.scenario_to_arrays(types.Scenario(*(type(n)(**{f.name: getattr(n, f.name)[0] for f in
                                 dataclasses.fields(n)}) for n in (objs, roads, lights))))
  assert single["objects/x"].shape == (1, O, T)


def test_registry_endpoints(tmp_path):
  assert registry.endpoint("trajectories") == "tcp://127.0.0.1:5553"
  assert registry.endpoint("params", host="*", port_offset=100) == "tcp://*:5656"
  assert registry.endpoint("act", transport="ipc", ipc_dir=str(tmp_path)) == f"ipc://{tmp_path}/drivelab-act.sock"
  ports = [lk.port for lk in registry.LINKS.values()]
  assert len(set(ports)) == len(ports)
  for lk in registry.LINKS.values():
    assert set(lk.schemas) <= set(schemas.SCHEMAS), lk.name
  with pytest.raises(KeyError):
    registry.endpoint("nope")
