"""Header validation for `codec.decode`: wire-format constants, `Limits`, `DecodeError`, and the checks that run
before any array byte is touched. No jax, no numpy allocation proportional to what a header claims.

`parse_arrays(header, sizes, limits)` turns the "arrays" descriptors (see codec.py for the format) into
(name, dtype, shape, frame, byte offset, dtype string) rows after checking, in this order per descriptor:
form (`bad_array_desc`), name unique (`duplicate_name`), dtype on the allow-list (`bad_dtype`), rank
(`too_many_dims`), shape entries (`bad_shape`), frame index (`bad_frame_index`); for a whole frame, frame used once
and shape x itemsize == frame length (`size_mismatch`); for a packed array, offset a multiple of PACK_ALIGN
(`misaligned`), shape x itemsize == declared nbytes (`size_mismatch`), bytes inside the frame (`out_of_range`).
Then per packed frame: no two arrays overlap (`overlap`), no bytes after the last one (`size_mismatch`); and every
frame is named by some array (`unused_frame`). A drivelab/2 descriptor block (bin) is checked once per distinct
(block bytes, frame sizes, max_dims) and the checked rows reused for later messages with that very layout, so a
steady stream of same-shaped batches pays one dict lookup instead of the per-array Python checks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import numpy as np

MAGIC = "drivelab/2"
MAGIC_V1 = "drivelab/1"
_MAGIC_PREFIX = "drivelab/"
HEADER_KEYS = {"magic": str, "schema": str, "version": int, "producer": str, "epoch": int, "seq": int,
               "fields": dict, "arrays": list}  # drivelab/1
_KEYS = {MAGIC_V1: tuple(HEADER_KEYS.items()),  # drivelab/2: "arrays" is bin (the msgpack of the list), + "frames"
         MAGIC: tuple({**HEADER_KEYS, "arrays": bytes, "frames": int}.items())}
ALLOWED_DTYPES = frozenset(np.dtype(d).str for d in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64"))
_DTYPES = {d: np.dtype(d) for d in ALLOWED_DTYPES}  # parsing a dtype string costs more than the lookup
WIRE_DTYPE_STR = {np.dtype(d): d for d in ALLOWED_DTYPES}  # `dtype.str` formats a new string on every call
ZERO_COPY_MIN_BYTES = 64 * 1024  # arrays below this share the packed frame; at or above, a zero-copy frame each
PACK_ALIGN = 8  # the largest itemsize on the allow-list: every packed array can be viewed in place
_MAX_FIELD_DEPTH = 8


class DecodeError(ValueError):
  """A message failed validation; `reason` is a short stable label, `detail` says what exactly."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class Limits:
  """Caps checked before any allocation on decode.

  Attributes:
    max_frames: frames per message, header included.
    max_header_bytes: size of the msgpack header frame.
    max_total_bytes: all frames together.
    max_dims: rank of any array.
  """

  max_frames: int = 257
  max_header_bytes: int = 1 << 20
  max_total_bytes: int = 1 << 30
  max_dims: int = 8


_SCALARS = frozenset((type(None), bool, int, float, str, bytes))


def _check_field(value: Any, depth: int = 0) -> bool:
  if type(value) in _SCALARS:
    return True
  if depth >= _MAX_FIELD_DEPTH:
    return False
  if type(value) is list:
    return all(_check_field(v, depth + 1) for v in value)
  if type(value) is dict:
    return all(type(k) is str and _check_field(v, depth + 1) for k, v in value.items())
  return False  # msgpack ExtType / Timestamp


def parse_header(frame: Any, n_frames: int) -> dict:
  """Unpacks and checks frame 0: magic (wire version), key types, fields, declared frame count."""
  try:
    header = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True, timestamp=0)
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise DecodeError("header_msgpack", f"{type(e).__name__}: {e}") from None
  if type(header) is not dict:
    raise DecodeError("header_not_map", type(header).__name__)
  magic = header.get("magic")
  keys = _KEYS.get(magic)
  if keys is None:
    if type(magic) is str and magic.startswith(_MAGIC_PREFIX):
      raise DecodeError("bad_wire_version", f"{magic!r} (this decoder reads {MAGIC_V1!r} and {MAGIC!r})"[:120])
    raise DecodeError("bad_magic", repr(magic)[:60])
  for key, typ in keys:  # msgpack builds exact types: `type(v) is int` also keeps bools out
    v = header.get(key, header)  # the header itself marks "absent": it can never be a value in itself
    if v is header:
      raise DecodeError("missing_key", key)
    if type(v) is not typ:
      raise DecodeError("bad_type", f"{key}: {type(v).__name__}")
  if not _check_field(header["fields"]):
    raise DecodeError("bad_field", "fields hold a non-msgpack-scalar value or nest too deep")
  if header.get("frames", n_frames) != n_frames:
    raise DecodeError("frame_count", f"header says {header['frames']} frames, message has {n_frames}")
  return header


def _bad_desc(d: Any) -> DecodeError:
  return DecodeError("bad_array_desc", repr(d)[:80])


def _check_shape(name: str, shape: list, limits: Limits) -> int:
  """Number of elements of a valid shape (before any allocation: the caller compares bytes with frame sizes)."""
  if len(shape) > limits.max_dims:
    raise DecodeError("too_many_dims", f"{name}: {len(shape)} > {limits.max_dims}")
  for s in shape:
    if type(s) is not int or s < 0:
      raise DecodeError("bad_shape", f"{name}: {shape!r}"[:80])
  return math.prod(shape)


def _packed_range(d: list, name: str, nbytes: int, size: int) -> int:
  offset, declared = d[4], d[5]
  if type(offset) is not int or type(declared) is not int or offset < 0 or declared < 0:
    raise DecodeError("bad_array_desc", f"{name}: offset {offset!r}, nbytes {declared!r}"[:80])
  if offset % PACK_ALIGN:
    raise DecodeError("misaligned", f"{name}: offset {offset} is not a multiple of {PACK_ALIGN}")
  if nbytes != declared:
    raise DecodeError("size_mismatch", f"{name}: shape x itemsize = {nbytes} != declared {declared}")
  if offset + nbytes > size:
    raise DecodeError("out_of_range", f"{name}: bytes [{offset}, {offset + nbytes}) outside frame of {size}")
  return offset


def _check_packed(ranges: dict[int, list], sizes: list[int]) -> None:
  for idx, spans in ranges.items():
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
      if start < end:
        raise DecodeError("overlap", f"{a} and {b} share bytes of frame {idx}")
    if spans[-1][1] != sizes[idx]:  # sorted and disjoint: the last span ends last
      raise DecodeError("size_mismatch", f"packed frame {idx}: {sizes[idx]} bytes, arrays end at {spans[-1][1]}")


def _check_descs(descs: Any, sizes: list[int], limits: Limits, v2: bool) -> list[tuple]:
  """Checked rows (name, dtype, shape, frame, byte offset, dtype string), in header order: one flat loop with
  few helper calls on the good path."""
  if type(descs) is not list:
    raise _bad_desc(descs)
  out, names, whole, ranges = [], set(), set(), {}
  n_desc = (4, 6) if v2 else (4,)
  n_frames = len(sizes)
  for d in descs:
    if type(d) is not list or len(d) not in n_desc:
      raise _bad_desc(d)
    name, dtype, shape, idx = d[0], d[1], d[2], d[3]
    if type(name) is not str or type(shape) is not list:
      raise _bad_desc(d)
    if name in names:
      raise DecodeError("duplicate_name", name)
    names.add(name)
    dt = _DTYPES.get(dtype) if type(dtype) is str else None
    if dt is None:
      raise DecodeError("bad_dtype", f"{name}: {dtype!r}")
    nbytes = _check_shape(name, shape, limits) * dt.itemsize
    if type(idx) is not int or not 0 < idx < n_frames:
      raise DecodeError("bad_frame_index", f"{name}: {idx!r} (frames 1..{n_frames - 1})")
    if len(d) == 4:
      if idx in whole or idx in ranges:
        raise DecodeError("bad_frame_index", f"{name}: frame {idx} used twice")
      if nbytes != sizes[idx]:
        raise DecodeError("size_mismatch", f"{name}: shape {shape} x {dt.itemsize} B = {nbytes} != {sizes[idx]}")
      whole.add(idx)
      out.append((name, dt, tuple(shape), idx, 0, dtype))
      continue
    if idx in whole:
      raise DecodeError("bad_frame_index", f"{name}: frame {idx} is whole and packed")
    offset = _packed_range(d, name, nbytes, sizes[idx])
    ranges.setdefault(idx, []).append((offset, offset + nbytes, name))
    out.append((name, dt, tuple(shape), idx, offset, dtype))
  if ranges:
    _check_packed(ranges, sizes)
  if len(whole) + len(ranges) != n_frames - 1:
    raise DecodeError("unused_frame", f"{n_frames - 1 - len(whole) - len(ranges)} frames not named by any array")
  return out


_LAYOUTS: dict[tuple, tuple] = {}  # (descriptor bytes, frame sizes, max_dims) -> (rows, signature)
_MAX_LAYOUTS, _MAX_LAYOUT_KEY_BYTES = 256, 16 << 10  # at most ~4 MiB of keys, whatever producers send


def parse_arrays(header: dict, sizes: list[int], limits: Limits) -> tuple[list[tuple], tuple]:
  """(rows, signature): checked rows (see `_check_descs`) and ((name, dtype string, rank), ...) for the schema
  check. A drivelab/2 descriptor block is validated once per distinct (bytes, frame sizes, max_dims): the same
  layout message after message (static shapes) then costs one dict lookup instead of Python checks per array."""
  if header["magic"] != MAGIC:
    rows = _check_descs(header["arrays"], sizes, limits, v2=False)
    return rows, tuple([(r[0], r[5], len(r[2])) for r in rows])
  blob = header["arrays"]
  key = (blob, tuple(sizes), limits.max_dims)
  hit = _LAYOUTS.get(key)
  if hit is not None:
    return hit
  try:
    descs = msgpack.unpackb(blob, raw=False, strict_map_key=True, use_list=True, timestamp=0)
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise DecodeError("bad_array_desc", f"descriptor block: {type(e).__name__}: {e}"[:120]) from None
  rows = _check_descs(descs, sizes, limits, v2=True)
  hit = rows, tuple([(r[0], r[5], len(r[2])) for r in rows])
  if len(blob) <= _MAX_LAYOUT_KEY_BYTES:
    if len(_LAYOUTS) >= _MAX_LAYOUTS:
      _LAYOUTS.clear()
    _LAYOUTS[key] = hit
  return hit
