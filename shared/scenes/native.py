"""drivelab's native on-disk format for converted scenes: one shard = N padded scenes with equal caps.

A shard is an uncompressed `.npz` (written with `np.savez`, read with `allow_pickle=False`) holding one array per
Scenario leaf, stacked along a leading scene axis, plus a `__header__` entry: UTF-8 JSON bytes (a uint8 array) with
  format: "drivelab-scenes", version: FORMAT_VERSION, config: SceneConfig fields, metas: [SceneMeta dict] * N,
  num_scenes: N, arrays: {leaf: [dtype, shape]}, sha256: hex digest over every array (name, dtype, shape, bytes).
Leaf names are dotted paths, e.g. "objects.x" with shape (N, O, T) float32; see types.py for every leaf's shape.

Writes are atomic (temp file in the same folder, fsync, os.replace), so a reader never sees half a shard. Any
mismatch on read (version, checksum, missing or extra array, shape, dtype, zip damage) raises SceneError naming the
file and the field. The zip's own CRC catches most flipped bits first; the sha256 also covers edits that rewrote a
member consistently and a header whose arrays belong to another shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from shared.scenes import padding, types
from shared.scenes.gpudrive import SceneError

FORMAT_NAME = "drivelab-scenes"
FORMAT_VERSION = 1
SHARD_SUFFIX = ".dlshard.npz"
HEADER_KEY = "__header__"
MAX_CAP = 1 << 24
_GROUPS = (("objects", types.ObjectTracks), ("roads", types.RoadPoints), ("lights", types.TrafficLights))


def leaf_names() -> list[str]:
  """Dotted names of every Scenario leaf, in pytree order (e.g. "objects.x", "lights.valid")."""
  return [f"{g}.{f.name}" for g, cls in _GROUPS for f in dataclasses.fields(cls)]


def flatten(scenario: types.Scenario) -> dict[str, np.ndarray]:
  """Scenario -> {dotted leaf name: numpy array} (leading axes kept)."""
  return {f"{g}.{f.name}": np.asarray(getattr(getattr(scenario, g), f.name))
          for g, cls in _GROUPS for f in dataclasses.fields(cls)}


def unflatten(arrays: dict[str, np.ndarray]) -> types.Scenario:
  """Inverse of `flatten`."""
  parts = {g: cls(**{f.name: arrays[f"{g}.{f.name}"] for f in dataclasses.fields(cls)}) for g, cls in _GROUPS}
  return types.Scenario(**parts)


def empty_scenario(config: types.SceneConfig) -> types.Scenario:
  """One all-padding scene: every leaf holds its fill value, with the shape and dtype `config` implies."""
  scenario, _ = padding.pad_scene(padding.empty_raw("empty", config.num_timesteps), config)
  return scenario


def leaf_specs(config: types.SceneConfig) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
  """{leaf: (dtype, per-scene shape)}, derived from the padder so the format can never drift from it."""
  return {k: (a.dtype, a.shape) for k, a in flatten(empty_scenario(config)).items()}


def _digest(arrays: dict[str, np.ndarray]) -> str:
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


def write_shard(path, scenarios: list[types.Scenario], metas: list[types.SceneMeta],
                config: types.SceneConfig) -> None:
  """Writes N unbatched scenes padded to `config` as one shard, atomically. Raises ValueError on bad input."""
  path = os.fspath(path)
  if not scenarios or len(scenarios) != len(metas):
    raise ValueError(f"write_shard: need as many metas as scenarios (>= 1), got {len(scenarios)} and {len(metas)}")
  specs = leaf_specs(config)
  per_scene = [flatten(s) for s in scenarios]
  for i, leaves in enumerate(per_scene):
    for name, (dtype, shape) in specs.items():
      a = leaves[name]
      if a.shape != shape or a.dtype != dtype:
        raise ValueError(f"write_shard: scene {i} ({metas[i].name}) field '{name}' is {a.dtype}{a.shape}, "
                         f"caps imply {dtype}{shape}")
  arrays = {name: np.stack([leaves[name] for leaves in per_scene]) for name in specs}
  header = {
      "format": FORMAT_NAME, "version": FORMAT_VERSION, "config": dataclasses.asdict(config),
      "num_scenes": len(scenarios), "metas": [m.to_dict() for m in metas],
      "arrays": {k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()}, "sha256": _digest(arrays),
  }
  arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
  _atomic_savez(path, arrays)


def _atomic_savez(path: str, arrays: dict[str, np.ndarray]) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  # The temp name does not end in SHARD_SUFFIX, so a folder scan never picks up a half-written shard.
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a shard is data other users and containers should read
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  try:  # persist the rename itself; not every filesystem lets a directory be opened
    dfd = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(dfd)
    finally:
      os.close(dfd)
  except OSError:
    pass


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError)


def _read_header(path: str, z) -> dict:
  if HEADER_KEY not in z.files:
    raise SceneError(path, HEADER_KEY, "missing (not a drivelab shard)")
  try:
    raw = z[HEADER_KEY]
    header = json.loads(raw.tobytes().decode())
  except _ZIP_ERRORS + (UnicodeDecodeError,) as e:
    raise SceneError(path, HEADER_KEY, f"unreadable ({type(e).__name__}: {e})") from None
  if not isinstance(header, dict):
    raise SceneError(path, HEADER_KEY, "not a JSON object")
  if header.get("format") != FORMAT_NAME:
    raise SceneError(path, "format", f"expected {FORMAT_NAME!r}, got {header.get('format')!r}")
  if header.get("version") != FORMAT_VERSION:
    raise SceneError(path, "version", f"unsupported version {header.get('version')!r} "
                                      f"(this reader knows {FORMAT_VERSION}); re-convert the scenes")
  return header


def _parse_config_and_metas(path: str, header: dict) -> tuple[types.SceneConfig, list[types.SceneMeta], int]:
  try:
    config = types.SceneConfig(**header["config"])
  except (KeyError, TypeError) as e:
    raise SceneError(path, "config", f"malformed ({type(e).__name__}: {e})") from None
  caps = (config.max_objects, config.max_road_points, config.max_tl_lanes, config.num_timesteps)
  # Bounded so a damaged header cannot make the reader allocate the padding of a gigantic scene.
  if not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= MAX_CAP for c in caps):
    raise SceneError(path, "config", f"caps out of range: {config}")
  n = header.get("num_scenes")
  if not isinstance(n, int) or n < 1:
    raise SceneError(path, "num_scenes", f"expected a positive integer, got {n!r}")
  try:
    metas = [types.SceneMeta.from_dict(m) for m in header["metas"]]
  except (KeyError, TypeError, ValueError) as e:
    raise SceneError(path, "metas", f"malformed ({type(e).__name__}: {e})") from None
  if len(metas) != n:
    raise SceneError(path, "metas", f"has {len(metas)} entries, num_scenes is {n}")
  return config, metas, n


def read_shard(path) -> tuple[types.Scenario, list[types.SceneMeta], types.SceneConfig]:
  """Reads a shard: (Scenario with leading axis N, N metas, the caps it was padded to). Raises SceneError."""
  path = os.fspath(path)
  try:
    z = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise SceneError(path, "<file>", "not found") from None
  except _ZIP_ERRORS as e:
    raise SceneError(path, "<file>", f"not a readable shard ({type(e).__name__}: {e})") from None
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise SceneError(path, "<file>", "a bare .npy array, not a shard")
  with z:
    header = _read_header(path, z)
    config, metas, n = _parse_config_and_metas(path, header)
    specs = leaf_specs(config)
    extra = sorted(set(z.files) - set(specs) - {HEADER_KEY})
    if extra:
      raise SceneError(path, extra[0], "unexpected array")
    arrays = {}
    for name, (dtype, shape) in specs.items():
      if name not in z.files:
        raise SceneError(path, name, "missing array")
      try:
        a = z[name]
      except _ZIP_ERRORS as e:
        raise SceneError(path, name, f"corrupt data ({type(e).__name__}: {e})") from None
      if a.dtype != dtype or a.shape != (n, *shape):
        raise SceneError(path, name, f"is {a.dtype}{a.shape}, expected {dtype}{(n, *shape)}")
      arrays[name] = a
  if _digest(arrays) != header.get("sha256"):
    raise SceneError(path, "sha256", "checksum mismatch: the arrays are not the ones this shard was written with")
  return unflatten(arrays), metas, config

