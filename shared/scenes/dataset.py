"""Folders of scenes -> lists of padded Scenarios, and fixed-size shuffled batches of them.

A folder may mix GPUDrive JSON files (`*.json`) and native shards (`*.dlshard.npz`). A bad file never stops a
load: it is logged once (`skipping <file>: field '<field>': <why>`), recorded in `LoadResult.errors` and counted.

Shards padded to other caps than the requested ones are re-padded when that is exact (growing a cap, or shrinking
one where only padding is dropped) and rejected with a SceneError naming the cap otherwise: a real cut needs the
source scene (its full road polylines and every object), so re-convert from JSON with the new caps instead.

`batch_iterator` yields Scenario batches with a leading axis of `batch_size` (numpy), forever.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Callable, Iterator

import jax
import numpy as np

from shared.scenes import gpudrive, native, types
from shared.scenes.gpudrive import SceneError

log = logging.getLogger(__name__)

JSON_SUFFIX = ".json"
SHARD_SUFFIX = native.SHARD_SUFFIX
# Scenario group -> the cap that sizes its first per-scene axis.
_GROUP_CAP = {"objects": "max_objects", "roads": "max_road_points", "lights": "max_tl_lanes"}
ProgressFn = Callable[[int, int, str], None]  # (files done, files total, file name)


@dataclasses.dataclass
class LoadResult:
  """What `load_folder` read.

  Attributes:
    scenarios: unbatched numpy Scenarios padded to the requested caps, in file order.
    metas: one SceneMeta per scenario.
    sources: the file name each scenario came from (a shard holds many).
    errors: (file name, one-line message) per skipped file.
    num_files: scene files seen (loaded or skipped).
  """

  scenarios: list[types.Scenario] = dataclasses.field(default_factory=list)
  metas: list[types.SceneMeta] = dataclasses.field(default_factory=list)
  sources: list[str] = dataclasses.field(default_factory=list)
  errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  num_files: int = 0

  @property
  def num_skipped(self) -> int:
    return len(self.errors)


def is_scene_file(path: pathlib.Path) -> bool:
  return path.is_file() and (path.name.endswith(JSON_SUFFIX) or path.name.endswith(SHARD_SUFFIX))


def iter_files(path) -> list[pathlib.Path]:
  """Scene files directly in folder `path` (or `path` itself if it is one), sorted by name."""
  p = pathlib.Path(path)
  if p.is_file():
    return [p]
  if not p.is_dir():
    raise FileNotFoundError(f"no such scene folder: {p}")
  return sorted((f for f in p.iterdir() if is_scene_file(f)), key=lambda f: f.name)


def repad(batch: types.Scenario, src: types.SceneConfig, dst: types.SceneConfig, path: str) -> types.Scenario:
  """Changes the caps of a batch (leading axis N) exactly, or raises SceneError if real entries would be dropped."""
  if src.num_timesteps != dst.num_timesteps:
    raise SceneError(path, "config.num_timesteps", f"shard has {src.num_timesteps} steps, expected "
                                                   f"{dst.num_timesteps}")
  fill = native.flatten(native.empty_scenario(dst))
  out = {}
  for name, a in native.flatten(batch).items():
    cap_name = _GROUP_CAP[name.split(".")[0]]
    old, new = getattr(src, cap_name), getattr(dst, cap_name)
    one = fill[name][:1]  # one padding entry: padding is uniform along a cap axis
    if new < old:
      if not np.array_equal(a[:, new:], np.broadcast_to(one, a[:, new:].shape)):
        raise SceneError(path, f"config.{cap_name}", f"scenes use more than {new} entries (shard caps {old}); "
                                                     "re-convert from JSON with the new caps")
      a = a[:, :new]
    elif new > old:
      a = np.concatenate([a, np.broadcast_to(one, (a.shape[0], new - old) + one.shape[1:])], axis=1)
    out[name] = np.ascontiguousarray(a)
  return native.unflatten(out)


def load_file(path, config: types.SceneConfig) -> tuple[list[types.Scenario], list[types.SceneMeta]]:
  """Reads one JSON scene or shard, padded to `config`. Raises SceneError on any problem with the file."""
  path = pathlib.Path(path)
  if path.name.endswith(SHARD_SUFFIX):
    batch, metas, src = native.read_shard(path)
    if (src.max_objects, src.max_road_points, src.max_tl_lanes, src.num_timesteps) != (
        config.max_objects, config.max_road_points, config.max_tl_lanes, config.num_timesteps):
      batch = repad(batch, src, config, str(path))
    return types.unstack(batch), metas
  scenario, meta = gpudrive.read_scene(str(path), config)
  return [scenario], [meta]


def load_folder(path, config: types.SceneConfig = types.SceneConfig(), limit: int | None = None,
                progress: ProgressFn | None = None) -> LoadResult:
  """Loads every scene file in a folder (sorted); bad files are skipped, logged once and counted."""
  files = iter_files(path)
  result = LoadResult()
  for k, f in enumerate(files):
    if limit is not None and len(result.scenarios) >= limit:
      break
    result.num_files += 1
    try:
      scenarios, metas = load_file(f, config)
    except SceneError as e:
      _skip(result, f, str(e))
    except Exception as e:  # a reader bug on odd input must not stop a whole load; say what it was
      _skip(result, f, f"{f.name}: unexpected {type(e).__name__}: {e}")
    else:
      result.scenarios.extend(scenarios)
      result.metas.extend(metas)
      result.sources.extend([f.name] * len(scenarios))
    if progress is not None:
      progress(k + 1, len(files), f.name)
  if limit is not None:
    del result.scenarios[limit:], result.metas[limit:], result.sources[limit:]
  return result


def _skip(result: LoadResult, f: pathlib.Path, message: str) -> None:
  message = " ".join(message.split())  # one line, whatever the underlying error printed
  log.error("skipping %s", message)
  result.errors.append((f.name, message))


def batch_iterator(scenarios: list[types.Scenario], batch_size: int, seed: int = 0, shuffle: bool = True,
                   with_indices: bool = False) -> Iterator[types.Scenario]:
  """Yields stacked numpy Scenario batches of exactly `batch_size` scenes, forever.

  Each epoch visits every scene once, in a fresh permutation when `shuffle`; a batch that crosses an epoch end
  wraps into the next epoch, so a batch larger than the dataset simply repeats scenes. With `with_indices`, yields
  (batch, indices (batch_size,) int64) so callers can look up the SceneMetas.
  """
  if not scenarios:
    raise ValueError("batch_iterator: no scenarios")
  if batch_size < 1:
    raise ValueError(f"batch_iterator: batch_size must be >= 1, got {batch_size}")
  everything = types.stack(scenarios)  # gather by fancy indexing: one copy per batch, no per-scene loop
  n = len(scenarios)
  rng = np.random.default_rng(seed)
  order = np.zeros(0, np.int64)
  while True:
    while order.size < batch_size:
      epoch = rng.permutation(n) if shuffle else np.arange(n)
      order = np.concatenate([order, epoch])
    idx, order = order[:batch_size], order[batch_size:]
    batch = jax.tree.map(lambda a: a[idx], everything)
    yield (batch, idx) if with_indices else batch
