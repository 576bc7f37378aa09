"""Atomic learner checkpoints: msgpack of the TrainingState (flax.serialization), written to a temporary file, fsynced
and renamed, so a reader (or a restart after a kill at any instant) sees a whole checkpoint or none.

  path = save(run_dir / "checkpoints", state, version, extra={"agent_steps": 123}, keep=3)
  restored = restore_latest(run_dir / "checkpoints", template_state)   # None when there is none
  state, version, extra = restored

A checkpoint file `ckpt_<version:010d>.msgpack` holds {"format", "version", "extra" (JSON text), "state"}. The state
is restored into `template` (same pytree structure: build it exactly as the run that saved it did), so PRNG keys,
optimizer moments and the step counter come back bit for bit and training continues as if never interrupted. Only
the newest `keep` files are kept. No pickle anywhere: msgpack holds only arrays, numbers and strings.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import tempfile
from typing import Any

import jax
import numpy as np
from flax import serialization

FORMAT = 1
PATTERN = re.compile(r"^ckpt_(\d{10})\.msgpack$")


def checkpoint_path(directory: str | os.PathLike, version: int) -> pathlib.Path:
  return pathlib.Path(directory) / f"ckpt_{int(version):010d}.msgpack"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, pathlib.Path]]:
  """(version, path) of every complete checkpoint, oldest first (temporary files never match the pattern)."""
  d = pathlib.Path(directory)
  if not d.is_dir():
    return []
  found = [(int(m.group(1)), d / name) for name in os.listdir(d) if (m := PATTERN.match(name))]
  return sorted(found)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".part", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  dir_fd = os.open(path.parent, os.O_RDONLY)
  try:
    os.fsync(dir_fd)  # the rename itself survives a power cut
  finally:
    os.close(dir_fd)


def save(directory: str | os.PathLike, state: Any, version: int, extra: dict | None = None,
         keep: int = 3) -> pathlib.Path:
  """Writes checkpoint `version` of `state` atomically, then deletes all but the newest `keep` checkpoints."""
  if keep < 1:
    raise ValueError("keep must be >= 1")
  d = pathlib.Path(directory)
  d.mkdir(parents=True, exist_ok=True)
  host_state = jax.tree.map(np.asarray, jax.device_get(state))
  payload = {"format": FORMAT, "version": int(version), "extra": json.dumps(extra or {}),
             "state": serialization.to_state_dict(host_state)}
  path = checkpoint_path(d, version)
  _atomic_write(path, serialization.msgpack_serialize(payload))
  for _, old in list_checkpoints(d)[:-keep]:
    old.unlink(missing_ok=True)
  return path


def read_raw(path: str | os.PathLike) -> tuple[dict, int, dict]:
  """(state as nested dicts of numpy arrays, version, extra): enough to read params without a template."""
  with open(path, "rb") as f:
    payload = serialization.msgpack_restore(f.read())
  if payload.get("format") != FORMAT:
    raise ValueError(f"{path}: unknown checkpoint format {payload.get('format')!r}")
  return payload["state"], int(payload["version"]), json.loads(payload["extra"])


def restore(path: str | os.PathLike, template: Any) -> tuple[Any, int, dict]:
  """(state shaped like `template`, version, extra) from one checkpoint file."""
  raw, version, extra = read_raw(path)
  state = serialization.from_state_dict(template, raw)
  state = jax.tree.map(lambda t, x: np.asarray(x, dtype=np.asarray(t).dtype).reshape(np.shape(t)), template, state)
  return state, version, extra


def restore_latest(directory: str | os.PathLike, template: Any) -> tuple[Any, int, dict] | None:
  """The newest checkpoint under `directory` restored into `template`, or None when there is none."""
  found = list_checkpoints(directory)
  if not found:
    return None
  return restore(found[-1][1], template)


def latest_version(directory: str | os.PathLike) -> int | None:
  found = list_checkpoints(directory)
  return found[-1][0] if found else None


__all__ = ["checkpoint_path", "latest_version", "list_checkpoints", "read_raw", "restore", "restore_latest", "save"]
