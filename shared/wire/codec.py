"""Multipart message codec: one msgpack header frame + one raw frame per numpy array. No pickle, no jax.

Frame 0 is a msgpack map:
  {"magic": "drivelab/1", "schema": str, "version": int, "producer": str, "epoch": int, "seq": int,
   "fields": {str: scalar | str | bytes | list | map}, "arrays": [[name, dtype, shape, frame], ...]}
Frames 1..N hold the bytes of each array (C order, little-endian dtype strings such as "<f4", "|b1").

`encode(msg)` returns frames ready for `transport.send_frames` (the arrays themselves, sent by buffer).
`decode(frames, limits)` validates everything before touching array bytes and returns read-only
`np.frombuffer` views over the received frames (zero-copy). Every failure raises `DecodeError(reason, detail)`,
where `reason` is a short label used as the Prometheus label value of `drivelab_decode_errors_total{reason}`:
  no_frames, too_many_frames, header_too_large, too_large, header_msgpack, header_not_map, bad_magic, missing_key, bad_type,
  bad_field, bad_array_desc, duplicate_name, bad_dtype, too_many_dims, bad_shape, bad_frame_index, unused_frame,
  size_mismatch, and (from `schemas.validate`) unknown_schema, bad_version, missing_array, unknown_array,
  array_dtype, array_rank, missing_field, unknown_field, field_type.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import msgpack
import numpy as np

MAGIC = "drivelab/1"
HEADER_KEYS = {"magic": str, "schema": str, "version": int, "producer": str, "epoch": int, "seq": int,
               "fields": dict, "arrays": list}
ALLOWED_DTYPES = frozenset(np.dtype(d).str for d in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64"))
_DTYPES = {d: np.dtype(d) for d in ALLOWED_DTYPES}  # parsing a dtype string costs more than the lookup
ZERO_COPY_MIN_BYTES = 64 * 1024  # below this a copying send is cheaper than pinning the buffer
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


@dataclasses.dataclass
class Message:
  """One decoded (or to-be-encoded) message.

  Attributes:
    schema: schema name (see `schemas.SCHEMAS`).
    version: schema version the producer wrote.
    producer: producer id, unique per process (e.g. "simulator-3:4121").
    epoch: producer incarnation; a restart bumps it so sequence tracking starts over.
    seq: per-producer sequence number (0, 1, 2, ...), used to count gaps.
    fields: msgpack-able scalars, strings, lists and maps; names carry SI units (`speed_mps`).
    arrays: name -> numpy array with an allowed dtype.
  """

  schema: str
  version: int
  producer: str
  epoch: int
  seq: int
  fields: dict[str, Any] = dataclasses.field(default_factory=dict)
  arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def nbytes(self) -> int:
    return sum(int(a.nbytes) for a in self.arrays.values())


def _wire_array(a: Any) -> np.ndarray:
  if type(a) is np.ndarray and a.flags.c_contiguous and a.dtype.str in ALLOWED_DTYPES:
    return a  # the common case: no conversion, no copy
  a = np.asarray(a)
  if a.dtype.byteorder == ">":
    a = a.astype(a.dtype.newbyteorder("<"))
  if a.dtype.str not in ALLOWED_DTYPES:
    raise TypeError(f"dtype {a.dtype} not allowed on the wire (allowed: {sorted(ALLOWED_DTYPES)})")
  return np.asarray(a, order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d


def encode(msg: Message) -> list:
  """Message -> [header bytes, one C-contiguous array per frame] (arrays are sent by buffer, not copied here).
  Raises TypeError for a dtype outside the allow-list."""
  descs, frames = [], [b""]
  for name, arr in msg.arrays.items():
    a = _wire_array(arr)
    descs.append((name, a.dtype.str, a.shape, len(frames)))
    frames.append(a)
  header = {"magic": MAGIC, "schema": msg.schema, "version": int(msg.version), "producer": msg.producer,
            "epoch": int(msg.epoch), "seq": int(msg.seq), "fields": msg.fields, "arrays": descs}
  frames[0] = msgpack.packb(header, use_bin_type=True)
  return frames


def _nbytes(frame) -> int:
  return memoryview(frame).nbytes


def _check_field(value: Any, depth: int = 0) -> bool:
  if depth > _MAX_FIELD_DEPTH:
    return False
  if value is None or isinstance(value, (bool, int, float, str, bytes)):
    return True
  if isinstance(value, list):
    return all(_check_field(v, depth + 1) for v in value)
  if isinstance(value, dict):
    return all(isinstance(k, str) and _check_field(v, depth + 1) for k, v in value.items())
  return False  # msgpack ExtType / Timestamp


def _parse_header(frame: Any) -> dict:
  try:
    header = msgpack.unpackb(memoryview(frame), raw=False, strict_map_key=True, use_list=True,
                             timestamp=0)
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise DecodeError("header_msgpack", f"{type(e).__name__}: {e}") from None
  if not isinstance(header, dict):
    raise DecodeError("header_not_map", type(header).__name__)
  if header.get("magic") != MAGIC:
    raise DecodeError("bad_magic", repr(header.get("magic"))[:60])
  for key, typ in HEADER_KEYS.items():
    if key not in header:
      raise DecodeError("missing_key", key)
    v = header[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
      raise DecodeError("bad_type", f"{key}: {type(v).__name__}")
  if not _check_field(header["fields"]):
    raise DecodeError("bad_field", "fields hold a non-msgpack-scalar value or nest too deep")
  return header


def _parse_desc(d: Any, limits: Limits, n_frames: int) -> tuple[str, np.dtype, tuple[int, ...], int]:
  if type(d) is not list or len(d) != 4 or type(d[0]) is not str or type(d[2]) is not list:
    raise DecodeError("bad_array_desc", repr(d)[:80])
  name, dtype, shape, frame = d
  dt = _DTYPES.get(dtype) if type(dtype) is str else None
  if dt is None:
    raise DecodeError("bad_dtype", f"{name}: {dtype!r}")
  if len(shape) > limits.max_dims:
    raise DecodeError("too_many_dims", f"{name}: {len(shape)} > {limits.max_dims}")
  for s in shape:
    if type(s) is not int or s < 0:
      raise DecodeError("bad_shape", f"{name}: {shape!r}"[:80])
  if type(frame) is not int or not 1 <= frame < n_frames:
    raise DecodeError("bad_frame_index", f"{name}: {frame!r} (frames 1..{n_frames - 1})")
  return name, dt, tuple(shape), frame


def decode(frames: Sequence[Any], limits: Limits = Limits(), check_schema: bool = True) -> Message:
  """Frames (bytes, memoryviews or zmq.Frame) -> Message with read-only zero-copy arrays.

  With `check_schema` the message is also checked against `schemas.SCHEMAS` (name, version, arrays, fields).
  """
  if len(frames) == 0 or len(frames) > limits.max_frames:
    raise DecodeError("too_many_frames" if frames else "no_frames", f"{len(frames)} frames")
  sizes = [_nbytes(f) for f in frames]
  if sizes[0] > limits.max_header_bytes:
    raise DecodeError("header_too_large", f"{sizes[0]} > {limits.max_header_bytes}")
  if sum(sizes) > limits.max_total_bytes:
    raise DecodeError("too_large", f"{sum(sizes)} > {limits.max_total_bytes}")
  header = _parse_header(frames[0])
  arrays, used = {}, set()
  for d in header["arrays"]:
    name, dtype, shape, idx = _parse_desc(d, limits, len(frames))
    if name in arrays:
      raise DecodeError("duplicate_name", name)
    if idx in used:
      raise DecodeError("bad_frame_index", f"{name}: frame {idx} used twice")
    expect = math.prod(shape) * dtype.itemsize
    if expect != sizes[idx]:
      raise DecodeError("size_mismatch", f"{name}: shape {shape} x {dtype.itemsize} B = {expect} != {sizes[idx]}")
    a = np.frombuffer(memoryview(frames[idx]), dtype=dtype).reshape(shape)
    a.flags.writeable = False
    arrays[name] = a
    used.add(idx)
  if len(used) != len(frames) - 1:
    raise DecodeError("unused_frame", f"{len(frames) - 1 - len(used)} frames not named by any array")
  msg = Message(header["schema"], header["version"], header["producer"], header["epoch"], header["seq"],
                header["fields"], arrays)
  if check_schema:
    from shared.wire import schemas  # late import: schemas builds on this module
    schemas.validate(msg)
  return msg
