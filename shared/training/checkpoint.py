"""Atomic learner checkpoints with orbax: each version is written synchronously into a temporary directory, then
renamed into place, so a reader (or a restart after a kill at any instant) sees a whole checkpoint or none.

  path = save(run_dir / "checkpoints", state, version, extra={"agent_steps": 123}, keep=3)
  restored = restore_latest(run_dir / "checkpoints", template_state)   # None when there is none
  state, version, extra = restored

A checkpoint is the directory `ckpt_<version:010d>/` holding two orbax items: "state" (the pytree, tensorstore
arrays) and "extra" (JSON: format, version and the caller's metadata). A kill mid-write leaves a
`ckpt_<version>.orbax-checkpoint-tmp-*` directory, which never matches the name pattern and is removed by the next
save. The state is restored into `template` (same pytree structure and shapes, checked against the saved metadata:
build it exactly as the run that saved it did), so PRNG keys, optimizer moments and the step counter come back bit
for bit. Only the newest `keep` versions are kept; a version is written once (saving it again is a no-op, saving an
older one than the newest is an error). No pickle: arrays, numbers and JSON only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from shared.algos import distributed

FORMAT = 2
PREFIX = "ckpt"
PATTERN = re.compile(rf"^{PREFIX}_(\d{{10}})$")
COMMIT_MARKER = "commit_success.txt"  # written by orbax inside the temporary directory, before the rename
# orbax logs every save step at INFO through absl; a training run's console and the services' logs want one line
# per checkpoint (ours), not fifty.
for _name in ("absl", "orbax"):
  logging.getLogger(_name).setLevel(logging.WARNING)


def checkpoint_path(directory: str | os.PathLike, version: int) -> pathlib.Path:
  return pathlib.Path(directory) / f"{PREFIX}_{int(version):010d}"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, pathlib.Path]]:
  """(version, path) of every complete checkpoint, oldest first (temporary directories never match the pattern)."""
  d = pathlib.Path(directory)
  if not d.is_dir():
    return []
  found = [(int(m.group(1)), d / name) for name in os.listdir(d)
           if (m := PATTERN.match(name)) and (d / name / COMMIT_MARKER).is_file()]
  return sorted(found)


def _manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  multiprocessing = ocp.options.MultiprocessingOptions()
  if jax.process_count() > 1:  # one process writes (replicas hold identical state): no barrier with the others
    me = jax.process_index()
    multiprocessing = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  options = ocp.CheckpointManagerOptions(  # create=False: _exclusive made it (orbax refuses it with active_processes)
      max_to_keep=keep, enable_async_checkpointing=False, create=False, step_prefix=PREFIX,
      step_format_fixed_length=10, cleanup_tmp_directories=True, multiprocessing_options=multiprocessing)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "extra"))


@contextlib.contextmanager
def _exclusive(directory: pathlib.Path):
  """Writers sharing a directory (learner replicas on one run_dir) take turns: orbax's temporary directory name is
  the same for every writer of a version, and its cleanup would delete another writer's work in progress. The
  lock dies with its process, so a killed writer never blocks the next."""
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / ".lock", "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


def save(directory: str | os.PathLike, state: Any, version: int, extra: dict | None = None,
         keep: int = 3) -> pathlib.Path:
  """Writes checkpoint `version` of `state` atomically (returns when it is on disk), then deletes all but the
  newest `keep` checkpoints. Any JAX process may call it alone; writers sharing `directory` take turns (the
  second writer of a version finds it there and returns)."""
  if keep < 1:
    raise ValueError("keep must be >= 1")
  d = pathlib.Path(directory).absolute()
  path = checkpoint_path(d, version)
  host_state = jax.tree.map(np.asarray, distributed.host_copy(state))  # 0-d arrays, not numpy scalars
  meta = {"format": FORMAT, "version": int(version), "extra": extra or {}}
  with _exclusive(d), _manager(d, keep) as manager:
    written = manager.save(int(version), args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state), extra=ocp.args.JsonSave(meta)))
  if not written:
    if path.is_dir():
      return path
    raise ValueError(f"{d}: version {version} is older than the newest checkpoint {latest_version(d)}")
  return path


def _read_meta(path: pathlib.Path) -> dict:
  meta = ocp.JsonCheckpointHandler().restore(path / "extra")
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"{path}: unknown checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r}")
  return meta


def read_raw(path: str | os.PathLike) -> tuple[dict, int, dict]:
  """(state as nested dicts / lists of numpy arrays, version, extra): enough to read params without a template.
  Dataclass and namedtuple nodes come back as dicts of their fields, tuples as lists, empty nodes as None."""
  path = pathlib.Path(path)
  meta = _read_meta(path)
  raw = ocp.PyTreeCheckpointHandler().restore(path / "state")
  return raw, int(meta["version"]), meta["extra"]


def read_extra(path: str | os.PathLike) -> dict:
  """The caller's metadata (`extra`) of one checkpoint directory, without reading its arrays."""
  return _read_meta(pathlib.Path(path))["extra"]


def _key(entry: Any) -> str:
  for attr in ("name", "key", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _saved_leaves(node: Any, prefix: tuple = ()) -> dict[tuple, tuple]:
  """{key path: shape} of the saved array metadata tree (dicts and lists; None marks an empty node)."""
  if isinstance(node, dict):
    items = node.items()
  elif isinstance(node, (list, tuple)):
    items = enumerate(node)
  else:
    return {} if node is None else {prefix: tuple(node.shape)}
  out = {}
  for k, v in items:
    out.update(_saved_leaves(v, prefix + (str(k),)))
  return out


def restore(path: str | os.PathLike, template: Any) -> tuple[Any, int, dict]:
  """(state shaped like `template`, as numpy, version, extra) from one checkpoint directory; ValueError when the
  template's structure or shapes differ from the saved ones."""
  path = pathlib.Path(path)
  meta = _read_meta(path)
  handler = ocp.StandardCheckpointHandler()  # item-level reads: the step-level metadata sits one directory up
  saved = _saved_leaves(handler.metadata(path / "state").tree)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  wanted = {tuple(_key(k) for k in keys): tuple(np.shape(x)) for keys, x in leaves}
  if wanted != saved:
    diff = sorted(set(wanted.items()) ^ set(saved.items()))[:4]
    raise ValueError(f"{path}: template does not match the checkpoint (path, shape) e.g. {diff}")
  host_template = jax.tree.map(np.asarray, template)
  state = handler.restore(path / "state", args=ocp.args.StandardRestore(host_template))
  state = jax.tree.map(lambda t, x: np.asarray(x, dtype=t.dtype), host_template, state)
  return state, int(meta["version"]), meta["extra"]


def restore_latest(directory: str | os.PathLike, template: Any) -> tuple[Any, int, dict] | None:
  """The newest checkpoint under `directory` restored into `template`, or None when there is none."""
  found = list_checkpoints(directory)
  if not found:
    return None
  return restore(found[-1][1], template)


def latest_version(directory: str | os.PathLike) -> int | None:
  found = list_checkpoints(directory)
  return found[-1][0] if found else None


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """`obj` as JSON at `path`, atomically (a temporary file renamed into place)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(f"{path}.tmp", "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(f"{path}.tmp", path)


def policy_params_from(where: str, template: Any, phase: str = "bc") -> tuple[Any, pathlib.Path, int]:
  """(params shaped and typed like `template`, checkpoint path, version) of the newest checkpoint in `where` (a
  checkpoint folder, or a run_dir with checkpoints/<phase>) whose {"train": state} holds `params`; ValueError with
  one line when there is none or it does not fit `template`."""
  folder = where if list_checkpoints(where) else os.path.join(where, "checkpoints", phase)
  found = list_checkpoints(folder)
  if not found:
    raise ValueError(f"{where!r} holds no checkpoint (nor checkpoints/{phase})")
  raw, version, _ = read_raw(found[-1][1])
  try:
    params = jax.tree.map(lambda a, b: np.asarray(b, dtype=a.dtype), template, raw["train"]["params"])
    fits = all(np.shape(a) == b.shape for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(params)))
  except (KeyError, TypeError, ValueError):
    fits = False
  if not fits:
    raise ValueError(f"{found[-1][1]} does not fit this network")
  return params, found[-1][1], version


__all__ = ["checkpoint_path", "latest_version", "list_checkpoints", "policy_params_from", "read_extra", "read_raw",
           "restore", "restore_latest", "save", "write_json"]
