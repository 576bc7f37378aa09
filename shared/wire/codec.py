"""Multipart message codec: one msgpack header frame + raw array frames. No pickle, no jax.

Wire format "drivelab/2" (what `encode` writes). Frame 0 is a msgpack map:
  {"magic": "drivelab/2", "schema": str, "version": int, "producer": str, "epoch": int, "seq": int,
   "fields": {str: scalar | str | bytes | list | map}, "frames": int (all frames, header included),
   "arrays": bin: msgpack of [[name, dtype, shape, frame] |                 # the array is the whole of `frame`
                              [name, dtype, shape, frame, offset, nbytes]]  # bytes [offset, offset+nbytes) of a
                                                                            # *packed* frame
  }
Views of a `shared.wire.arena.Arena` go first: the arena's whole buffer is one packed frame (see arena.py for when).
Other arrays of `ZERO_COPY_MIN_BYTES` (64 KiB) or more get a frame of their own, sent zero-copy. All smaller arrays
share ONE packed frame (the last). In a packed frame every array sits at an offset that is a multiple of
`PACK_ALIGN` (8, the largest itemsize, so every array is viewed in place), arrays never overlap, and the last one
ends the frame (the encoder leaves only alignment padding between them). Array bytes are
C order, little-endian (dtype strings such as "<f4", "|b1"). A frame is either whole (one 4-element descriptor)
or packed (6-element ones), never both. The descriptor block is bin so a receiver can validate each distinct
layout once and recognise it by its bytes afterwards (`framing.parse_arrays`).

Versions: "drivelab/1" (descriptors as a plain msgpack list, 4 elements each, no "frames") still decodes, so old
producers keep working with new consumers; a decoder older than this rejects "drivelab/2" as `bad_magic` (the
detail names it), so upgrade consumers first. A "drivelab/N" this decoder does not know is `bad_wire_version`.
The per-schema "version" is separate (`schemas.py`) and unchanged by the framing.

`encode(msg)` returns frames ready for `transport.send_frames` (large arrays are sent by buffer, not copied here).
`decode(frames, limits)` validates everything before touching array bytes and returns read-only numpy views over
the received frames (zero-copy, packed arrays included). Every failure raises `DecodeError(reason, detail)`,
`reason` being the Prometheus label of `drivelab_decode_errors_total{reason}`:
  no_frames, too_many_frames, header_too_large, too_large, header_msgpack, header_not_map, bad_magic,
  bad_wire_version, missing_key, bad_type, bad_field, frame_count, bad_array_desc, duplicate_name, bad_dtype,
  too_many_dims, bad_shape, bad_frame_index, misaligned, out_of_range, overlap, unused_frame, size_mismatch, and
  (from `schemas.validate`) unknown_schema, bad_version, missing_array, unknown_array, array_dtype, array_rank,
  missing_field, unknown_field, field_type.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import msgpack
import numpy as np

from shared.wire import arena as arena_lib
from shared.wire import framing
from shared.wire.framing import (ALLOWED_DTYPES, HEADER_KEYS, MAGIC, MAGIC_V1, PACK_ALIGN,  # noqa: F401 (API)
                                 WIRE_DTYPE_STR, ZERO_COPY_MIN_BYTES, DecodeError, Limits)

__all__ = ["ALLOWED_DTYPES", "HEADER_KEYS", "MAGIC", "MAGIC_V1", "PACK_ALIGN", "ZERO_COPY_MIN_BYTES", "DecodeError",
           "Limits", "Message", "decode", "encode"]
_PADS = [bytes(i) for i in range(PACK_ALIGN)]


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


def _wire_array(a: Any) -> tuple[np.ndarray, str]:
  """(C-contiguous little-endian array, its dtype string); TypeError for a dtype outside the allow-list."""
  if type(a) is np.ndarray and a.flags.c_contiguous:
    s = WIRE_DTYPE_STR.get(a.dtype)
    if s is not None:
      return a, s  # the common case: no conversion, no copy
  a = np.asarray(a)
  if a.dtype.byteorder == ">":
    a = a.astype(a.dtype.newbyteorder("<"))
  s = WIRE_DTYPE_STR.get(a.dtype)
  if s is None:
    raise TypeError(f"dtype {a.dtype} not allowed on the wire (allowed: {sorted(ALLOWED_DTYPES)})")
  return np.asarray(a, order="C"), s  # not ascontiguousarray: it turns 0-d arrays into 1-d


def _whole_arena(msg: Message) -> tuple[list, bytes] | None:
  """(frames, descriptor block) when the message is exactly one arena's views, in the arena's order (what
  producers send): the descriptor block is then memoised per arena layout and names."""
  arrays = msg.arrays
  first = next(iter(arrays.values()))
  base = first.base if type(first) is np.ndarray else None
  if type(base) is not arena_lib.ArenaBuffer:
    return None
  plan = base.plan
  if len(plan.rows) != len(arrays):
    return None
  start = base.__array_interface__["data"][0]
  for a, row in zip(arrays.values(), plan.rows):
    if type(a) is not np.ndarray or a.base is not base or arena_lib.offset_in(base, a, start) != row[3]:
      return None
  names = tuple(arrays)
  blob = plan.blobs.get(names)
  if blob is None:
    blob = msgpack.packb([[name, d, shape, 1, off, n] for name, (d, shape, off, n) in zip(names, plan.descs)],
                         use_bin_type=True)
    if len(plan.blobs) < 64:
      plan.blobs[names] = blob
  return [b"", base], blob


def _arena_frames(msg: Message, frames: list) -> dict[str, list]:
  """Appends to `frames` the arena buffers (shared.wire.arena) that go whole; name -> its packed descriptor."""
  groups: dict[int, list] = {}
  for name, arr in msg.arrays.items():
    if type(arr) is np.ndarray and type(arr.base) is arena_lib.ArenaBuffer:
      groups.setdefault(id(arr.base), []).append((name, arr))
  out = {}
  for members in groups.values():
    whole = arena_lib.frame_of(members)
    if whole is None:
      continue  # sliced or partial views: the ordinary way below
    idx = len(frames)
    frames.append(whole[0])
    for name, a, off in whole[1]:
      out[name] = [name, WIRE_DTYPE_STR[a.dtype], a.shape, idx, off, a.nbytes]
  return out


def _header(msg: Message, n_frames: int, blob: bytes) -> bytes:
  return msgpack.packb({"magic": MAGIC, "schema": msg.schema, "version": int(msg.version),
                        "producer": msg.producer, "epoch": int(msg.epoch), "seq": int(msg.seq),
                        "fields": msg.fields, "frames": n_frames, "arrays": blob}, use_bin_type=True)


def encode(msg: Message) -> list:
  """Message -> [header bytes, one frame per whole arena buffer, one frame per other large array (the array
  itself), packed frame of the small ones]. Raises TypeError for a dtype outside the allow-list."""
  whole = _whole_arena(msg) if msg.arrays else None
  if whole is not None:
    frames, blob = whole
    frames[0] = _header(msg, 2, blob)
    return frames
  descs, frames, small, packed, off = [], [b""], [], [], 0
  in_arena = _arena_frames(msg, frames) if msg.arrays else {}
  for name, arr in msg.arrays.items():
    if in_arena:
      d = in_arena.get(name)
      if d is not None:
        descs.append(d)
        continue
    a, dstr = _wire_array(arr)
    n = a.nbytes
    if n >= ZERO_COPY_MIN_BYTES:
      descs.append((name, dstr, a.shape, len(frames)))
      frames.append(a)
      continue
    pad = -off % PACK_ALIGN
    if pad:
      small.append(_PADS[pad])
      off += pad
    d = [name, dstr, a.shape, 0, off, n]  # frame index set below, once the frame count is known
    descs.append(d)
    packed.append(d)
    small.append(a)
    off += n
  if packed:
    for d in packed:
      d[3] = len(frames)
    frames.append(b"".join(small))  # one copy of all small arrays, instead of one send + one frame each
  frames[0] = _header(msg, len(frames), msgpack.packb(descs, use_bin_type=True))
  return frames


_VERDICTS: dict[tuple, Any] = {}  # structural signature -> the Schema object it was validated against
_MAX_VERDICTS = 4096


def _check_schema(msg: Message, signature: tuple) -> None:
  """`schemas.validate(msg)`, memoised. validate reads the schema name and version, each array's name, dtype and
  rank, and each field's name and value type, nothing else; so its verdict on one message holds for every message
  with the same signature. A verdict is reused only while `schemas.SCHEMAS` still holds the very Schema object it
  was checked against. (A schema check that ever reads values or shapes must extend the signature.)"""
  from shared.wire import schemas  # late import: schemas builds on this module

  schema = schemas.SCHEMAS.get(msg.schema)
  key = (msg.schema, msg.version, signature, tuple([(k, type(v)) for k, v in msg.fields.items()]))
  if schema is not None and _VERDICTS.get(key) is schema:
    return
  schemas.validate(msg)
  if len(_VERDICTS) >= _MAX_VERDICTS:  # bounded whatever producers send
    _VERDICTS.clear()
  _VERDICTS[key] = schema


def decode(frames: Sequence[Any], limits: Limits = Limits(), check_schema: bool = True) -> Message:
  """Frames (bytes, memoryviews, numpy arrays or zmq.Frame) -> Message with read-only zero-copy arrays.

  With `check_schema` the message is also checked against `schemas.SCHEMAS` (name, version, arrays, fields).
  """
  n_frames = len(frames)
  if n_frames == 0 or n_frames > limits.max_frames:
    raise DecodeError("too_many_frames" if n_frames else "no_frames", f"{n_frames} frames")
  bufs = [memoryview(f).toreadonly() for f in frames]  # read-only views: the arrays cannot write into frames
  sizes = [b.nbytes for b in bufs]
  if sizes[0] > limits.max_header_bytes:
    raise DecodeError("header_too_large", f"{sizes[0]} > {limits.max_header_bytes}")
  if sum(sizes) > limits.max_total_bytes:
    raise DecodeError("too_large", f"{sum(sizes)} > {limits.max_total_bytes}")
  header = framing.parse_header(bufs[0], n_frames)
  rows, signature = framing.parse_arrays(header, sizes, limits)
  ndarray = np.ndarray
  arrays = {r[0]: ndarray(r[2], r[1], bufs[r[3]], r[4]) for r in rows}
  msg = Message(header["schema"], header["version"], header["producer"], header["epoch"], header["seq"],
                header["fields"], arrays)
  if check_schema:
    _check_schema(msg, signature)
  return msg
