"""One buffer holding several arrays of a message, so the whole batch goes out as ONE zero-copy frame.

Every zero-copy frame costs pyzmq a hand-off to its garbage-collector thread (which then takes the GIL) once
libzmq is done with it, and costs the receiver one more zmq.Frame; a batch of several large arrays paid that per
array. A producer that already copies its batch together (stacking per-step records, gathering replay samples)
can copy into an `Arena` instead, at no extra cost: its arrays are views at 8-byte aligned offsets of one uint8
buffer, and `codec.encode` sends that buffer as one packed frame (the drivelab/2 packed layout, so decoders need
nothing new).

  arena = Arena({"obs/flat": ((T, B, F), np.float32), "action": ((T, B), np.int32)})
  np.stack(obs_steps, out=arena["obs/flat"])           # fill the views in place
  msg = schemas.make("Trajectory", ..., arrays=arena.arrays)

A message may mix arena views with ordinary arrays, and may name the views as it likes. `encode` sends the arena
buffer whole only when the message's arena views are the arena's own (not slices of them), none twice, and the
last one ends the buffer (else those arrays go the ordinary way, copied or one frame each, so a sliced view never
drags its whole buffer onto the wire).
Like any zero-copy array, an arena must not be written to after it was sent: allocate one per message.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from shared.wire import framing


class ArenaBuffer(np.ndarray):
  """The uint8 buffer behind an Arena (a marker type: `codec.encode` recognises views of it by their `.base`).
  `plan` is its layout. It holds no reference to its Arena or views: numpy does not show a view's `.base` to the
  garbage collector, so buffer -> views -> buffer would be a cycle nothing frees (a replay leaked every batch so)."""

  plan: "Plan"


class Arena:
  """Arrays laid out back to back (each at a multiple of `framing.PACK_ALIGN`) in one buffer.

  Attributes:
    arrays: name -> writable C-contiguous view, in the order given.
    offsets: name -> byte offset of that view in `buffer`.
    buffer: the ArenaBuffer (uint8, 1-D) of exactly the bytes the views span.
  """

  def __init__(self, specs: Mapping[str, tuple[tuple[int, ...], "np.typing.DTypeLike"]]):
    key = tuple((name, tuple(int(d) for d in shape), np.dtype(dtype).str) for name, (shape, dtype) in specs.items())
    plan = _PLANS.get(key)
    if plan is None:
      plan = _plan(key)
    self.plan = plan
    self.buffer = ArenaBuffer((plan.nbytes,), np.uint8)  # owns its memory: every view's .base is this very object
    self.buffer.plan = plan
    self.offsets = plan.offsets
    self.arrays = {name: np.ndarray(shape, dt, buffer=self.buffer, offset=o) for name, shape, dt, o in plan.rows}
    self.nbytes = plan.nbytes

  def __getitem__(self, name: str) -> np.ndarray:
    return self.arrays[name]

  @classmethod
  def stack(cls, records: list[Mapping[str, np.ndarray]]) -> "Arena":
    """Per-step records (each name -> (B, ...)) stacked to (T, B, ...) straight into one arena (one copy, as
    np.stack would make)."""
    first = records[0]
    arena = cls({k: ((len(records),) + np.shape(v), np.asarray(v).dtype) for k, v in first.items()})
    for k, out in arena.arrays.items():
      np.stack([r[k] for r in records], out=out)
    return arena


class Plan:
  """The layout shared by every arena of the same specs (arenas are made per message; the layout is not).

  Attributes:
    rows: (name, shape, dtype, offset) per array, in order.
    offsets: name -> byte offset.
    by_offset: byte offset -> (shape, dtype) of the view that starts there.
    nbytes: buffer size.
    descs: per array, (dtype string, shape, offset, nbytes): the packed descriptor less its name and frame.
    blobs: `codec.encode`'s memo of the packed descriptor block, per (names, frame index).
  """

  def __init__(self, key: tuple):
    self.rows, off = [], 0
    for name, shape, dstr in key:
      if dstr not in framing.ALLOWED_DTYPES:
        raise TypeError(f"{name}: dtype {np.dtype(dstr)} not allowed on the wire")
      dt = np.dtype(dstr)
      off += -off % framing.PACK_ALIGN
      self.rows.append((name, shape, dt, off))
      off += math.prod(shape) * dt.itemsize
    self.nbytes = off
    self.offsets = {name: o for name, _, _, o in self.rows}
    self.by_offset = {o: (shape, dt) for _, shape, dt, o in self.rows}
    self.descs = [(dt.str, list(shape), o, math.prod(shape) * dt.itemsize) for _, shape, dt, o in self.rows]
    self.blobs: dict[tuple, bytes] = {}


_PLANS: dict[tuple, Plan] = {}
_MAX_PLANS = 256


def _plan(key: tuple) -> Plan:
  plan = Plan(key)
  if len(_PLANS) >= _MAX_PLANS:  # bounded whatever shapes producers use
    _PLANS.clear()
  _PLANS[key] = plan
  return plan


def offset_in(buf: ArenaBuffer, a: np.ndarray, start: int | None = None) -> int | None:
  """Byte offset of `a` in `buf` when `a` is one of the plan's views (same start, shape and dtype, C order), else
  None. Any array that passes covers exactly the bytes its plan row describes, whichever object it is. `start`:
  buf's address, when the caller checks several arrays of one buffer."""
  if start is None:
    start = buf.__array_interface__["data"][0]
  off = a.__array_interface__["data"][0] - start
  row = buf.plan.by_offset.get(off)
  if row is None or row[0] != a.shape or row[1] != a.dtype or not a.flags.c_contiguous:
    return None
  return off


def frame_of(arrays: list[tuple[str, np.ndarray]]) -> tuple[ArenaBuffer, list[tuple[str, np.ndarray, int]]] | None:
  """(buffer, [(name, view, offset)]) when `arrays` (all views of one ArenaBuffer) can be sent as that buffer
  whole: each is one of the plan's views (whatever its name here), none twice, and the last of them ends the
  buffer. None otherwise."""
  buf = arrays[0][1].base
  start = buf.__array_interface__["data"][0]
  out, seen = [], set()
  for name, a in arrays:
    off = offset_in(buf, a, start)
    if off is None or off in seen:
      return None
    seen.add(off)
    out.append((name, a, off))
  out.sort(key=lambda r: r[2])
  last = out[-1]
  if last[2] + last[1].nbytes != buf.nbytes:
    return None
  return buf, out


__all__ = ["Arena", "ArenaBuffer", "Plan", "frame_of", "offset_in"]
