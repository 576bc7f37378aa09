"""The one place algorithms are named: `--algo NAME` -> its `api.Algorithm` bundle.

  algo = registry.get("bc")            # imports shared.algos.bc_update on first use, returns its ALGORITHM
  registry.names()                     # ("bc", "ppo", ...) for argument choices
  registry.register(my_algorithm)      # a bundle defined elsewhere (a test), for this process
  registry.get("mypkg.algos:REINFORCE")   # a plug-in: "module:attribute" names an api.Algorithm anywhere importable

A built-in is a module holding `ALGORITHM`; adding one is that module and one line in BUILTIN. A plug-in needs no
edit here: "module:attribute" works wherever a name does (`--algo`, DRIVELAB_ALGO), in every process of a stack.
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
  """The bundle registered as `name` (or the plug-in "module:attribute"); ValueError naming the choices otherwise."""
  if name in _registered:
    return _registered[name]
  if ":" in name:
    return _plugin(name)
  if name not in BUILTIN:
    raise ValueError(f"unknown algorithm {name!r}: choose one of {names()}")
  algorithm = importlib.import_module(BUILTIN[name]).ALGORITHM
  if algorithm.name != name:
    raise ValueError(f"{BUILTIN[name]}.ALGORITHM is named {algorithm.name!r}, registered as {name!r}")
  return algorithm


def _plugin(name: str) -> api.Algorithm:
  module, _, attr = name.partition(":")
  try:
    algorithm = getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"algorithm plug-in {name!r} cannot be loaded: {e}") from None
  if not isinstance(algorithm, api.Algorithm):
    raise ValueError(f"algorithm plug-in {name!r} is a {type(algorithm).__name__}, not an api.Algorithm")
  return algorithm


def check(name: str) -> str:
  """`name` if the registry knows it, or "" (the caller's default): an argparse `type`, which turns the error into
  one usage line."""
  import argparse

  try:
    if name:
      get(name)
    return name
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


__all__ = ["BUILTIN", "check", "get", "names", "register", "unregister"]
