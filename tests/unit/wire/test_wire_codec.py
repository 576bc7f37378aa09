"""Codec: hypothesis round trip over dtypes/shapes, and one test per malformed-header class with its exact reason."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from shared.wire import codec
from shared.wire.codec import DecodeError, Limits, Message

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64"]


def _msg(**arrays) -> Message:
  return Message("EvalReport", 1, "p", 0, 3, {"params_version": 1, "split": "val", "metrics": {}}, arrays)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                                       max_side=5)), max_size=5),
       st.data())
def test_round_trip_any_dtype_and_shape(specs, data):
  arrays = {f"a{i}": data.draw(hnp.arrays(np.dtype(dt), shape)) for i, (dt, shape) in enumerate(specs)}
  frames = codec.encode(_msg(**arrays))
  assert len(frames) == (2 if arrays else 1)  # all small: header + one packed frame
  out = codec.decode([bytes(memoryview(f)) for f in frames])  # bytes(0-d int array) would mean "n zeros"
  assert list(out.arrays) == list(arrays)
  for k, a in arrays.items():
    b = out.arrays[k]
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)  # NaNs compare equal in assert_array_equal
    assert not b.flags.writeable


def test_large_and_noncontiguous_and_bigendian():
  big = np.arange(3 * 1024 * 1024, dtype=np.float32).reshape(1024, 3072)  # 12 MiB
  nc = np.arange(24, dtype=np.int64).reshape(4, 6)[:, ::2]
  be = np.arange(5, dtype=">i4")
  out = codec.decode(codec.encode(_msg(big=big, nc=nc, be=be)))
  np.testing.assert_array_equal(out.arrays["big"], big)
  np.testing.assert_array_equal(out.arrays["nc"], [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18, 20, 22]])
  assert out.arrays["be"].dtype.str == "<i4" and out.arrays["be"].tolist() == [0, 1, 2, 3, 4]
  assert (out.producer, out.epoch, out.seq, out.version) == ("p", 0, 3, 1)


def test_decode_is_zero_copy():
  a = np.arange(100_000, dtype=np.float64)
  frames = codec.encode(_msg(a=a))
  buf = bytearray(memoryview(frames[1]))
  out = codec.decode([frames[0], buf])
  assert np.shares_memory(out.arrays["a"], np.frombuffer(buf, np.uint8))


def test_encode_rejects_object_and_complex():
  for bad in (np.array([1, "x"], dtype=object), np.zeros(2, np.complex64), np.zeros(2, "U3")):
    with pytest.raises(TypeError):
      codec.encode(_msg(bad=bad))


def _header(**over) -> dict:
  h = {"magic": codec.MAGIC, "schema": "EvalReport", "version": 1, "producer": "p", "epoch": 0, "seq": 0,
       "fields": {"params_version": 1, "split": "val", "metrics": {}},
       "arrays": [["a", "<f4", [2, 3], 1]], "frames": 2}
  h.update(over)
  if h["magic"] == codec.MAGIC and isinstance(h["arrays"], list):  # drivelab/2 carries the descriptors as bin
    h["arrays"] = msgpack.packb(h["arrays"])
  return h


A24 = bytes(24)  # (2, 3) float32


def _desc(name="a", dtype="<f4", shape=(2, 3), frame=1) -> list:
  return [[name, dtype, list(shape), frame]]


MALFORMED = {
    "header_msgpack": [b"\xc1\xff\x00", A24],
    "header_not_map": [msgpack.packb([1, 2]), A24],
    "bad_magic": [msgpack.packb(_header(magic="other/9")), A24],
    "missing_key": [msgpack.packb({k: v for k, v in _header().items() if k != "seq"}), A24],
    "bad_type": [msgpack.packb(_header(seq="7")), A24],
    "bad_field": [msgpack.packb(_header(fields={"x": msgpack.ExtType(5, b"evil")})), A24],
    "bad_array_desc": [msgpack.packb(_header(arrays=[{"name": "a"}])), A24],
    "bad_array_desc_short": [msgpack.packb(_header(arrays=[["a", "<f4", [2, 3]]])), A24],
    "bad_dtype": [msgpack.packb(_header(arrays=_desc(dtype="|O"))), A24],
    "too_many_dims": [msgpack.packb(_header(arrays=_desc(shape=[1] * 9))), A24],
    "bad_shape": [msgpack.packb(_header(arrays=_desc(shape=[2, -3]))), A24],
    "bad_frame_index": [msgpack.packb(_header(arrays=_desc(frame=2))), A24],
    "size_mismatch": [msgpack.packb(_header()), bytes(20)],
    "unused_frame": [msgpack.packb(_header(frames=3)), A24, b"extra"],
    "duplicate_name": [msgpack.packb(_header(arrays=_desc() + _desc(frame=2), frames=3)), A24, A24],
    "unknown_schema": [msgpack.packb(_header(schema="Nope")), A24],
    "bad_version": [msgpack.packb(_header(version=99)), A24],
    "missing_field": [msgpack.packb(_header(fields={"params_version": 1, "split": "val"})), A24],
    "field_type": [msgpack.packb(_header(fields={"params_version": "1", "split": "val", "metrics": {}})), A24],
    "unknown_field": [msgpack.packb(_header(fields={"params_version": 1, "split": "v", "metrics": {}, "z": 1})),
                      A24],
    "no_frames": [],
}


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_malformed_rejected_with_reason(reason):
  with pytest.raises(DecodeError) as ei:
    codec.decode(MALFORMED[reason])
  assert ei.value.reason == reason.removesuffix("_short")


def test_structured_and_bigendian_dtypes_rejected_on_decode():
  for dt in ("|V8", ">f4", "<c8", "<U1", "<M8[s]"):
    with pytest.raises(DecodeError) as ei:
      codec.decode([msgpack.packb(_header(arrays=_desc(dtype=dt))), A24])
    assert ei.value.reason == "bad_dtype", dt


def test_caps():
  ok = [msgpack.packb(_header()), A24]
  with pytest.raises(DecodeError) as ei:
    codec.decode(ok + [b""] * 3, Limits(max_frames=4))
  assert ei.value.reason == "too_many_frames"
  with pytest.raises(DecodeError) as ei:
    codec.decode(ok, Limits(max_header_bytes=16))
  assert ei.value.reason == "header_too_large"
  with pytest.raises(DecodeError) as ei:
    codec.decode(ok, Limits(max_total_bytes=len(ok[0]) + 23))
  assert ei.value.reason == "too_large"
  # exactly at the cap passes: header + 24 bytes
  assert codec.decode(ok, Limits(max_total_bytes=len(ok[0]) + 24)).arrays["a"].shape == (2, 3)


def test_huge_claimed_shape_is_size_mismatch_not_allocation():
  frames = [msgpack.packb(_header(arrays=_desc(shape=[1 << 40, 1 << 40]))), A24]
  with pytest.raises(DecodeError) as ei:
    codec.decode(frames)
  assert ei.value.reason == "size_mismatch"


def test_zmq_frames_decode():
  zmq = pytest.importorskip("zmq")
  a = np.arange(40_000, dtype=np.int32)
  frames = [zmq.Frame(bytes(memoryview(f))) for f in codec.encode(_msg(a=a))]
  np.testing.assert_array_equal(codec.decode(frames).arrays["a"], a)


def test_memoised_schema_verdicts_still_catch_every_difference(monkeypatch):
  import dataclasses

  from shared.wire import schemas

  arrays = {"action": np.zeros((2, 3), np.int32), "valid": np.ones((2, 3), bool),
            "reward": np.zeros((2, 3), np.float32), "done": np.zeros((2, 3), bool)}
  ok = schemas.make("Trajectory", "sim", 0, arrays=arrays, params_version=1, env_steps=6)
  frames = codec.encode(ok)
  assert codec.decode(frames).fields == {"params_version": 1, "env_steps": 6}
  assert codec.decode(frames).seq == 0  # second time from the memo
  # same array signature, one field of another type / one array of another dtype or rank: each still rejected
  bad_field = Message("Trajectory", 1, "sim", 0, 1, {"params_version": 1.5, "env_steps": 6}, arrays)
  bad_dtype = Message("Trajectory", 1, "sim", 0, 1, ok.fields, {**arrays, "reward": np.zeros((2, 3), np.float64)})
  bad_rank = Message("Trajectory", 1, "sim", 0, 1, ok.fields, {**arrays, "reward": np.zeros(6, np.float32)})
  for msg, reason in ((bad_field, "field_type"), (bad_dtype, "array_dtype"), (bad_rank, "array_rank")):
    with pytest.raises(DecodeError) as ei:
      codec.decode(codec.encode(msg))
    assert ei.value.reason == reason
  # a replaced schema (new required field) invalidates the memo: the once-valid message is checked again
  base = schemas.SCHEMAS["Trajectory"]
  monkeypatch.setitem(schemas.SCHEMAS, "Trajectory",
                      dataclasses.replace(base, fields=base.fields + (schemas.FieldSpec("lane_m", "float"),)))
  with pytest.raises(DecodeError) as ei:
    codec.decode(frames)
  assert ei.value.reason == "missing_field"
