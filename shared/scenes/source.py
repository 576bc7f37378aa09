"""Where scenes come from: one spec string -> a SceneSource -> padded Scenarios, and a record to make them again.

`parse(spec, num, seed, vehicles)` checks a spec and returns a frozen SceneSource; the forms are
  "synthetic"      the seeded generator (shared.scenes.synthetic): `num` scenes (default 16), seeds seed .. seed+num-1
  "synthetic:N"    the same with N scenes (N wins over `num`)
  a folder         every GPUDrive JSON file and native shard in it (shared.scenes.dataset.load_folder), at most `num`
  a shard file     one `.dlshard.npz` (shared.scenes.native), at most `num` of its scenes
  a JSON file      one GPUDrive JSON scene
A missing path, another kind of file or a malformed spec raises ValueError with a one-line message (a missing path
reads "no such scene folder: <spec>", as dataset.iter_files says it). `vehicles` (low, high) narrows the generator's
SyntheticConfig.num_vehicles; it is dropped for folders and shards. `is_synthetic(spec)` tells the generator's forms
apart before parsing, for callers whose count means "generate" for one and "at most" for the other.

`load(source, scene_cfg, progress)` returns Loaded: scenarios padded to scene_cfg (numpy, unbatched), their SceneMetas,
the files a folder load skipped ((file name, one-line reason), `skipped` counts them) and `record`, a JSON-able dict
that `from_record` turns back into the same source:
  {"scenes": "synthetic", "num", "seed", "vehicles": [low, high]}   or   {"scenes": absolute path, "num", "seed"}.
Synthetic scenes take num_timesteps and init_step from scene_cfg (other SyntheticConfig fields keep their defaults),
so scene i is `synthetic.generate(seed + i, ...)`, as `synthetic.generate_many` makes it. `progress(done, total,
name)` is called per scene generated or per file read.
Library code: no env vars, no network, no console output; the generator is imported only when it is asked for.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Mapping

from shared.scenes import dataset, native, types

SYNTHETIC = "synthetic"
DEFAULT_SYNTHETIC_NUM = 16
KINDS = ("synthetic", "folder", "shard", "file")
FORMS = f"'{SYNTHETIC}', '{SYNTHETIC}:N', a folder, a {native.SHARD_SUFFIX} shard or a .json scene"


@dataclasses.dataclass(frozen=True)
class SceneSource:
  """A checked scene spec (make it with `parse` or `from_record`).

  Attributes:
    kind: "synthetic", "folder", "shard" or "file" (one JSON scene).
    path: absolute path of the folder or shard (None for synthetic).
    num: synthetic: scenes generated (>= 1); folder or shard: most scenes read (None: all).
    seed: synthetic: first generator seed; kept in the record for every kind (training splits use it).
    vehicles: synthetic: (low, high) vehicles per scene, None for the generator's default range.
  """

  kind: str
  path: str | None = None
  num: int | None = None
  seed: int = 0
  vehicles: tuple[int, int] | None = None


@dataclasses.dataclass
class Loaded:
  """What `load` made.

  Attributes:
    scenarios: unbatched numpy Scenarios padded to the requested caps, in seed or file order.
    metas: one SceneMeta per scenario.
    record: JSON-able dict saying how to make the same scenes again (`from_record`).
    errors: (file name, one-line reason) per file a folder or shard load skipped (empty for synthetic).
    num_files: scene files seen (0 for synthetic).
  """

  scenarios: list[types.Scenario]
  metas: list[types.SceneMeta]
  record: dict[str, Any]
  errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  num_files: int = 0

  @property
  def skipped(self) -> int:
    return len(self.errors)


def is_synthetic(spec: str) -> bool:
  """Whether `spec` names the generator ("synthetic" or "synthetic:N"), well formed or not."""
  return spec == SYNTHETIC or spec.startswith(SYNTHETIC + ":")


def _count(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"scene source: {what} must be an integer >= 1, got {value!r}")
  return value


def _vehicles(vehicles) -> tuple[int, int] | None:
  if vehicles is None:
    return None
  try:
    low, high = (int(v) for v in vehicles)
  except (TypeError, ValueError):
    raise ValueError(f"scene source: vehicles must be (low, high), got {vehicles!r}") from None
  if not 1 <= low <= high:
    raise ValueError(f"scene source: vehicles must satisfy 1 <= low <= high, got {vehicles!r}")
  return low, high


def parse(spec: str, num: int | None = None, seed: int = 0,
          vehicles: tuple[int, int] | None = None) -> SceneSource:
  """The SceneSource of `spec` (see the module docstring); raises ValueError with a one-line reason."""
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"scene source: empty spec {spec!r} (want {FORMS})")
  if num is not None:
    num = _count(num, "scene count")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"scene source: seed must be an integer, got {seed!r}")
  if is_synthetic(spec):
    if spec != SYNTHETIC:
      tail = spec[len(SYNTHETIC) + 1:]
      if not re.fullmatch(r"[0-9]+", tail) or int(tail) < 1:
        raise ValueError(f"scene source: bad synthetic count in {spec!r} (want {SYNTHETIC}:N with N >= 1)")
      num = int(tail)
    if seed < 0:
      raise ValueError(f"scene source: synthetic seed must be >= 0, got {seed}")
    return SceneSource(SYNTHETIC, None, DEFAULT_SYNTHETIC_NUM if num is None else num, seed, _vehicles(vehicles))
  path = pathlib.Path(spec)
  if path.is_dir():
    return SceneSource("folder", os.path.abspath(spec), num, seed)
  if path.is_file():
    if path.name.endswith(native.SHARD_SUFFIX):
      return SceneSource("shard", os.path.abspath(spec), num, seed)
    if path.suffix == ".json":
      return SceneSource("file", os.path.abspath(spec), num, seed)
    raise ValueError(f"scene source: {spec} is not a scene file (want {FORMS})")
  raise ValueError(f"no such scene folder: {spec}")


def record(source: SceneSource) -> dict[str, Any]:
  """How to make the same scenes again: JSON-able, read back by `from_record`."""
  if source.kind == SYNTHETIC:
    from shared.scenes import synthetic  # the generator's default vehicle range, when none was asked for

    vehicles = source.vehicles or synthetic.SyntheticConfig().num_vehicles
    return {"scenes": SYNTHETIC, "num": source.num, "seed": source.seed, "vehicles": list(vehicles)}
  return {"scenes": source.path, "num": source.num, "seed": source.seed}


def from_record(rec: Mapping[str, Any]) -> SceneSource:
  """The SceneSource of a `record` dict ({"scenes", "num", "seed"[, "vehicles"]}); raises ValueError."""
  if not isinstance(rec, Mapping) or "scenes" not in rec:
    raise ValueError(f"scene source: a record needs a 'scenes' entry, got {rec!r}")
  num, vehicles = rec.get("num"), rec.get("vehicles")
  return parse(rec["scenes"], num=None if num is None else int(num), seed=int(rec.get("seed") or 0),
               vehicles=tuple(vehicles) if vehicles else None)


def load(source: SceneSource, scene_cfg: types.SceneConfig,
         progress: dataset.ProgressFn | None = None) -> Loaded:
  """The scenes of `source`, padded to `scene_cfg`. A folder's bad files are skipped and listed in `errors`; the
  generator's errors (ValueError, RuntimeError) propagate."""
  if source.kind not in KINDS:
    raise ValueError(f"scene source: unknown kind {source.kind!r} (want one of {', '.join(KINDS)})")
  if source.kind != SYNTHETIC:
    res = dataset.load_folder(source.path, scene_cfg, limit=source.num, progress=progress)
    return Loaded(res.scenarios, res.metas, record(source), errors=res.errors, num_files=res.num_files)
  from shared.scenes import synthetic

  syn = dataclasses.replace(synthetic.SyntheticConfig(), num_timesteps=scene_cfg.num_timesteps,
                            init_step=scene_cfg.init_step)
  if source.vehicles is not None:
    syn = dataclasses.replace(syn, num_vehicles=tuple(source.vehicles))
  scenarios, metas = [], []
  for i in range(source.num):
    scenario, meta = synthetic.generate(source.seed + i, syn, scene_cfg)
    scenarios.append(scenario)
    metas.append(meta)
    if progress is not None:
      progress(i + 1, source.num, meta.name)
  return Loaded(scenarios, metas, record(source))


__all__ = ["SceneSource", "Loaded", "SYNTHETIC", "DEFAULT_SYNTHETIC_NUM", "KINDS", "is_synthetic", "parse", "record",
           "from_record", "load"]
