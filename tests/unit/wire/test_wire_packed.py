"""Wire format drivelab/2: small arrays packed into one frame at aligned offsets; its layout (hand-computed), zero-copy
views into it, drivelab/1 messages still decoding, and one test per malformed packed-descriptor class."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from shared.wire import codec
from shared.wire.codec import DecodeError, Message

BIG = codec.ZERO_COPY_MIN_BYTES  # 65536: from here on an array gets its own frame


def _msg(**arrays) -> Message:
  return Message("EvalReport", 1, "p", 0, 3, {"params_version": 1, "split": "val", "metrics": {}}, arrays)


def _header(arrays: list, frames: int, magic: str = codec.MAGIC) -> bytes:
  h = {"magic": magic, "schema": "EvalReport", "version": 1, "producer": "p", "epoch": 0, "seq": 0,
       "fields": {"params_version": 1, "split": "val", "metrics": {}}, "arrays": arrays}
  if magic == codec.MAGIC:
    h["frames"] = frames
    h["arrays"] = msgpack.packb(arrays)  # drivelab/2: the descriptor block is bin
  return msgpack.packb(h)


def test_layout_is_aligned_packed_in_order_after_the_large_frames():
  a = np.array([1, 2, 3], np.int8)                      # 3 B at 0
  b = np.array([1.5, -2.0], np.float64)                 # 16 B at 8 (5 B of padding)
  big = np.arange(BIG // 4, dtype=np.float32)           # 65536 B: own frame 1
  d = np.array(True)                                    # 1 B at 24
  e = np.zeros((0, 4), np.float32)                      # 0 B at 32 (aligned, nothing after it)
  frames = codec.encode(_msg(a=a, b=b, big=big, d=d, e=e))
  assert len(frames) == 3 and frames[1] is big  # the large array is sent by buffer, not copied
  header = msgpack.unpackb(frames[0])
  assert header["magic"] == "drivelab/2" and header["frames"] == 3
  assert msgpack.unpackb(header["arrays"]) == [
      ["a", "|i1", [3], 2, 0, 3], ["b", "<f8", [2], 2, 8, 16], ["big", "<f4", [16384], 1],
      ["d", "|b1", [], 2, 24, 1], ["e", "<f4", [0, 4], 2, 32, 0]]
  packed = bytes(frames[2])
  assert packed == bytes([1, 2, 3]) + bytes(5) + b.tobytes() + b"\x01" + bytes(7)
  out = codec.decode(frames)
  assert list(out.arrays) == ["a", "b", "big", "d", "e"]
  for name, want in (("a", a), ("b", b), ("big", big), ("d", d), ("e", e)):
    assert out.arrays[name].dtype == want.dtype and out.arrays[name].shape == want.shape
    np.testing.assert_array_equal(out.arrays[name], want)


def test_threshold_and_message_without_small_arrays():
  just_small = np.zeros(BIG - 1, np.uint8)
  just_big = np.zeros(BIG, np.uint8)
  frames = codec.encode(_msg(s=just_small, l=just_big))
  assert [memoryview(f).nbytes for f in frames[1:]] == [BIG, BIG - 1]
  frames = codec.encode(_msg(l=just_big))
  assert len(frames) == 2 and msgpack.unpackb(msgpack.unpackb(frames[0])["arrays"]) == [["l", "|u1", [BIG], 1]]
  assert len(codec.encode(_msg())) == 1


def test_packed_arrays_are_read_only_views_into_the_received_frame():
  small = {f"x{i}": np.full((2, 3), i, np.float32) for i in range(5)}
  frames = codec.encode(_msg(**small))
  buf = bytearray(memoryview(frames[1]))  # a writable buffer, as a worst case
  out = codec.decode([frames[0], buf])
  raw = np.frombuffer(buf, np.uint8)
  for i in range(5):
    x = out.arrays[f"x{i}"]
    assert np.shares_memory(x, raw) and not x.flags.writeable and x.tolist() == [[float(i)] * 3] * 2


def test_wire_v1_messages_still_decode():
  frames = [_header([["a", "<f4", [2, 3], 1], ["b", "|u1", [4], 2]], 3, magic="drivelab/1"),
            np.arange(6, dtype=np.float32).tobytes(), bytes([9, 8, 7, 6])]
  out = codec.decode(frames)
  assert out.arrays["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and out.arrays["b"].tolist() == [9, 8, 7, 6]
  # v1 never had packed descriptors
  with pytest.raises(DecodeError) as ei:
    codec.decode([_header([["a", "<f4", [2], 1, 0, 8]], 2, magic="drivelab/1"), bytes(8)])
  assert ei.value.reason == "bad_array_desc"


F8 = bytes(8)  # room for (2,) float32
MALFORMED = {
    "bad_wire_version": [_header([], 1, magic="drivelab/9")],
    "frame_count": [_header([["a", "<f4", [2], 1, 0, 8]], 3), F8],
    "frame_count_short": [_header([["a", "<f4", [2], 1, 0, 8], ["b", "<f4", [2], 2]], 3), F8],
    "misaligned": [_header([["a", "<f4", [1], 1, 4, 4]], 2), F8],
    "out_of_range": [_header([["a", "<f4", [2], 1, 8, 8]], 2), F8],
    "out_of_range_huge": [_header([["a", "<f4", [2], 1, 1 << 62, 8]], 2), F8],
    "overlap": [_header([["a", "<f4", [4], 1, 0, 16], ["b", "<f4", [2], 1, 8, 8]], 2), bytes(16)],
    "overlap_unsorted": [_header([["b", "<f4", [2], 1, 8, 8], ["a", "<f4", [3], 1, 0, 12]], 2), bytes(16)],
    "size_mismatch": [_header([["a", "<f4", [2], 1, 0, 12]], 2), bytes(16)],
    "size_mismatch_trailing": [_header([["a", "<f4", [2], 1, 0, 8]], 2), bytes(16)],
    "bad_array_desc": [_header([["a", "<f4", [2], 1, -8, 8]], 2), F8],
    "bad_array_desc_type": [_header([["a", "<f4", [2], 1, "0", 8]], 2), F8],
    "bad_frame_index": [_header([["a", "<f4", [2], 1], ["b", "<f4", [0], 1, 8, 0]], 2), F8],
    "bad_frame_index_packed": [_header([["a", "<f4", [2], 2, 0, 8]], 2), F8],
    "unused_frame": [_header([["a", "<f4", [2], 1, 0, 8]], 3), F8, F8],
    "bad_type_listed": [msgpack.packb({**msgpack.unpackb(_header([], 1)), "arrays": []})],  # v2 wants bin, not a list
    "bad_array_desc_block": [msgpack.packb({**msgpack.unpackb(_header([], 1)), "arrays": b"\xc1"})],
    "bad_array_desc_map": [msgpack.packb({**msgpack.unpackb(_header([], 1)), "arrays": msgpack.packb({"a": 1})})],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_packed_rejected_with_reason(case):
  with pytest.raises(DecodeError) as ei:
    codec.decode(MALFORMED[case])
  reason = case
  for suffix in ("_short", "_huge", "_unsorted", "_trailing", "_type", "_packed", "_block", "_map", "_listed"):
    reason = reason.removesuffix(suffix)
  assert ei.value.reason == reason


def test_valid_hand_built_packed_frames_decode():
  # gaps between packed arrays are allowed (only overlap and bytes after the last one are not); order is free
  frames = [_header([["b", "<i4", [1], 1, 16, 4], ["a", "<f4", [2], 1, 0, 8]], 2),
            np.array([1.0, 2.0], np.float32).tobytes() + bytes(8) + np.array([7], np.int32).tobytes()]
  out = codec.decode(frames)
  assert out.arrays["a"].tolist() == [1.0, 2.0] and out.arrays["b"].tolist() == [7]


def test_layout_memo_rechecks_when_frame_sizes_or_limits_differ():
  frames = codec.encode(_msg(a=np.arange(6, dtype=np.float32).reshape(2, 3), big=np.zeros(BIG, np.uint8)))
  assert codec.decode(frames).arrays["a"].shape == (2, 3)
  assert codec.decode(frames).arrays["big"].nbytes == BIG  # same layout again: from the memo
  for bad, reason in (([frames[0], frames[1], bytes(28)], "size_mismatch"),  # packed frame 4 bytes too long
                      ([frames[0], bytes(BIG - 8), frames[2]], "size_mismatch"),
                      ([frames[0], frames[1]], "frame_count")):
    with pytest.raises(DecodeError) as ei:
      codec.decode(bad)
    assert ei.value.reason == reason
  with pytest.raises(DecodeError) as ei:
    codec.decode(frames, codec.Limits(max_dims=1))
  assert ei.value.reason == "too_many_dims"
