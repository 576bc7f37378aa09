"""shared.wire.arena: a batch built in one buffer goes out as ONE packed frame; the layout is hand-checked, the
decoder needs nothing new, and every case where sending the buffer whole would be wrong falls back to the
ordinary frames (sliced views, a view named twice, the buffer's last view left out)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.wire import codec, transport
from shared.wire.arena import Arena, ArenaBuffer
from shared.wire.codec import Message


def _msg(arrays) -> Message:
  return Message("Trajectory", 1, "p", 0, 3, {"params_version": 1}, arrays)


def _descs(frames) -> list:
  return msgpack.unpackb(msgpack.unpackb(frames[0])["arrays"])


def _filled() -> Arena:
  a = Arena({"x": ((3, 5), np.float32), "y": ((7,), np.int8), "z": ((2, 2), np.float64)})
  a["x"][:] = np.arange(15).reshape(3, 5)
  a["y"][:] = np.arange(7)
  a["z"][:] = [[1.5, -2.0], [3.25, 4.0]]
  return a


def test_layout_is_aligned_back_to_back():
  a = _filled()
  assert a.offsets == {"x": 0, "y": 64, "z": 72}  # 60 B of x, padded to 64; 7 B of y, padded to 72
  assert a.nbytes == a.buffer.nbytes == 104
  for name, v in a.arrays.items():
    assert v.base is a.buffer and v.flags.c_contiguous and v.flags.writeable
    assert v.ctypes.data - a.buffer.ctypes.data == a.offsets[name]


def test_whole_arena_is_one_frame_sent_by_buffer_and_decodes_unchanged():
  a = _filled()
  q = np.array([1, 2, 3], np.int16)
  msg = _msg({"z": a["z"], "x": a["x"], "q": q, "y": a["y"]})  # any order, mixed with an ordinary array
  frames = codec.encode(msg)
  assert len(frames) == 3 and frames[1] is a.buffer  # header, the arena (not copied), the packed small ones
  assert _descs(frames) == [["z", "<f8", [2, 2], 1, 72, 32], ["x", "<f4", [3, 5], 1, 0, 60], ["q", "<i2", [3], 2, 0, 6],
                            ["y", "|i1", [7], 1, 64, 7]]
  out = codec.decode([bytes(memoryview(f)) for f in frames], check_schema=False)
  assert list(out.arrays) == ["z", "x", "q", "y"]
  for k, v in msg.arrays.items():
    np.testing.assert_array_equal(out.arrays[k], v)
    assert out.arrays[k].dtype == v.dtype and not out.arrays[k].flags.writeable


def test_views_may_be_renamed():
  a = _filled()
  frames = codec.encode(_msg({"obs/x": a["x"], "obs/y": a["y"], "obs/z": a["z"]}))
  assert len(frames) == 2 and frames[1] is a.buffer


@pytest.mark.parametrize("case", ["sliced", "last_left_out", "named_twice"])
def test_falls_back_to_ordinary_frames_where_whole_would_be_wrong(case):
  a = _filled()
  arrays = {"sliced": {"x": a["x"][:1], "y": a["y"], "z": a["z"]},
            "last_left_out": {"x": a["x"], "y": a["y"]},
            "named_twice": {"x": a["x"], "x2": a["x"], "y": a["y"], "z": a["z"]}}[case]
  frames = codec.encode(_msg(arrays))
  out = codec.decode([bytes(memoryview(f)) for f in frames], check_schema=False)  # named twice would overlap
  for k, v in arrays.items():
    np.testing.assert_array_equal(out.arrays[k], v)
  if case == "sliced":  # the slice is an ordinary array; y and z still end the buffer, so it goes whole
    assert frames[1] is a.buffer and _descs(frames)[0][3] == 2
  else:
    assert not any(type(f) is ArenaBuffer for f in frames)


def test_stack_equals_np_stack():
  rng = np.random.default_rng(0)
  records = [{"obs": rng.normal(size=(4, 6)).astype(np.float32), "done": rng.random(4) < 0.5,
              "action": rng.integers(0, 9, 4).astype(np.int32)} for _ in range(5)]
  a = Arena.stack(records)
  for k in records[0]:
    want = np.stack([r[k] for r in records])
    np.testing.assert_array_equal(a[k], want)
    assert a[k].dtype == want.dtype


def test_disallowed_dtype_is_refused_up_front():
  with pytest.raises(TypeError, match="not allowed"):
    Arena({"c": ((2,), np.complex64)})


_DTYPES = st.sampled_from(["bool", "int8", "uint16", "int32", "float16", "float32", "int64", "float64"])
_SPEC = st.tuples(st.lists(st.integers(0, 6), max_size=3), _DTYPES)


@settings(max_examples=60, deadline=None)
@given(st.lists(_SPEC, min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_round_trip_any_layout(specs, seed):
  rng = np.random.default_rng(seed)
  a = Arena({f"a{i}": (tuple(shape), dt) for i, (shape, dt) in enumerate(specs)})
  for v in a.arrays.values():
    v[...] = (rng.random(v.shape) * 100).astype(v.dtype)
  frames = codec.encode(_msg(dict(a.arrays)))
  out = codec.decode([bytes(memoryview(f)) for f in frames], check_schema=False)
  for k, v in a.arrays.items():
    np.testing.assert_array_equal(out.arrays[k], v)
    assert out.arrays[k].shape == v.shape and out.arrays[k].dtype == v.dtype


def test_over_a_real_socket_large_arena_is_zero_copy_and_intact():
  ctx = transport.new_context()
  push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
  try:
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    a = Arena({"obs": ((16, 64, 300), np.float32), "action": ((16, 64), np.int32), "valid": ((16, 64), bool)})
    a["obs"][:] = np.arange(a["obs"].size, dtype=np.float32).reshape(a["obs"].shape)
    a["action"][:] = 7
    a["valid"][:] = True
    msg = _msg(dict(a.arrays))
    frames = codec.encode(msg)
    assert len(frames) == 2 and frames[1].nbytes >= codec.ZERO_COPY_MIN_BYTES
    transport.send_frames(push, frames)
    got = transport.recv_frames(pull, 10.0)
    assert got is not None and len(got) == 2
    out = codec.decode(got, check_schema=False)
    for k, v in msg.arrays.items():
      np.testing.assert_array_equal(out.arrays[k], v)
  finally:
    push.close(0)
    pull.close(0)


def test_an_arena_is_freed_by_reference_counting_once_dropped():
  """No cycle through the buffer: numpy hides a view's .base from the garbage collector, so a buffer that held its
  views would never be freed (a replay leaked every ReplayBatch so). Dropped, the buffer goes at once, no gc run."""
  import gc
  import weakref

  gc.disable()
  try:
    a = _filled()
    frames = codec.encode(_msg(dict(a.arrays)))
    assert frames[1] is a.buffer
    ref = weakref.ref(a.buffer)
    del a, frames
    assert ref() is None
  finally:
    gc.enable()
