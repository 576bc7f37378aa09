"""The one place algorithms are named: `--algo NAME` -> its `api.Algorithm` bundle.

  algo = registry.get("bc")            # imports shared.algos.bc_update on first use, returns its ALGORITHM
  registry.names()                     # ("bc", "ppo", ...) for argument choices
  registry.register(my_algorithm)      # a bundle defined elsewhere (a plug-in, a test), for this process

A built-in is a module holding `ALGORITHM`; adding one is that module and one line in BUILTIN.
"""

from __future__ import annotations

import importlib

from shared.algos import api

BUILTIN = {
    "ppo": "shared.algos.ppo_update",
    "bc": "shared.algos.bc_update",
}
_registered: dict[str, api.Algorithm] = {}


def register(algorithm: api.Algorithm, replace: bool = False) -> api.Algorithm:
  """Makes `algorithm` available by its name in this process; a name already taken is an error unless `replace`."""
  if not replace and (algorithm.name in BUILTIN or algorithm.name in _registered):
    raise ValueError(f"algorithm {algorithm.name!r} is already registered")
  _registered[algorithm.name] = algorithm
  return algorithm


def unregister(name: str) -> None:
  _registered.pop(name, None)


def names() -> tuple[str, ...]:
  return tuple(sorted(set(BUILTIN) | set(_registered)))


def get(name: str) -> api.Algorithm:
  """The bundle registered as `name`; ValueError naming the choices otherwise."""
  if name in _registered:
    return _registered[name]
  if name not in BUILTIN:
    raise ValueError(f"unknown algorithm {name!r}: choose one of {names()}")
  algorithm = importlib.import_module(BUILTIN[name]).ALGORITHM
  if algorithm.name != name:
    raise ValueError(f"{BUILTIN[name]}.ALGORITHM is named {algorithm.name!r}, registered as {name!r}")
  return algorithm


__all__ = ["BUILTIN", "get", "names", "register", "unregister"]
