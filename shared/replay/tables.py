"""Replay's tables, host-side numpy: what an algorithm declares (shared.algos.api.Draw) is what replay keeps.

  tables = make_tables(algorithm.replay, capacity=8, expert_capacity=32, seed=0)   # {name: Table}
  tables["onpolicy"].insert(item)              # item: {key: (T, B, ...) array} plus its params version
  sampler = Sampler(algorithm.replay, sample_items=2)
  if sampler.ready(tables): parts = sampler.sample(tables)     # {table: {key: (K_table, T, B, ...)}}

Kinds (one per table name):
  onpolicy   `Fifo`: each item is taken once, oldest first; full means full (the caller holds back credit, so the
             producers wait instead of anything being overwritten).
  offpolicy  `Ring`: the newest `capacity` items, sampled uniformly with replacement.
  expert     `Ring` over the scene loaders' expert trajectories.
A sample of `sample_items` items takes round(share * sample_items) items (at least one) from each declared table.
Storage is allocated once, at the first item, as (capacity, ...) arrays per key; an item whose keys, shapes or
dtypes differ from the first is refused (`accepts`), so one producer with other caps cannot break a table.
Items carry `VERSION_KEY` (the params version that acted them; 0 for expert data) beside their arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

VERSION_KEY = "params_version"
Item = dict[str, np.ndarray]


class Table:
  """Fixed-capacity storage of items (dicts of equally-shaped arrays) in preallocated (capacity, ...) arrays."""

  def __init__(self, name: str, capacity: int, seed: int = 0):
    if capacity < 1:
      raise ValueError(f"replay table {name}: capacity must be >= 1, got {capacity}")
    self.name, self.capacity = name, int(capacity)
    self.shapes: dict[str, tuple[tuple[int, ...], str]] | None = None
    self.data: dict[str, np.ndarray] = {}
    self.inserted = 0  # items ever inserted
    self.read = 0  # items ever taken (Fifo)
    self.rng = np.random.default_rng(seed)

  @staticmethod
  def shapes_of(item: Item) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (np.shape(v), np.asarray(v).dtype.str) for k, v in item.items()}

  def accepts(self, item: Item) -> bool:
    return self.shapes is None or self.shapes_of(item) == self.shapes

  @property
  def size(self) -> int:
    return min(self.inserted - self.read, self.capacity)

  def can_insert(self) -> bool:
    return True

  def insert(self, item: Item) -> None:
    """Copies `item` into the next slot; ValueError if it does not fit the table's first item."""
    if self.shapes is None:
      self.shapes = self.shapes_of(item)
      self.data = {k: np.zeros((self.capacity,) + np.shape(v), np.asarray(v).dtype) for k, v in item.items()}
    elif not self.accepts(item):
      raise ValueError(f"replay table {self.name}: item shapes {self.shapes_of(item)} != {self.shapes}")
    slot = self.inserted % self.capacity
    for k, v in item.items():
      self.data[k][slot] = v
    self.inserted += 1

  def gather(self, slots: np.ndarray) -> Item:
    """(n, ...) copies of the items in `slots`."""
    return {k: v[slots] for k, v in self.data.items()}


class Fifo(Table):
  """On-policy: `take(n)` returns and consumes the oldest n items; inserting into a full table is refused."""

  def can_insert(self) -> bool:
    return self.size < self.capacity

  def insert(self, item: Item) -> None:
    if not self.can_insert():
      raise ValueError(f"replay table {self.name}: full ({self.capacity} items); wait for a take")
    super().insert(item)

  def can_take(self, n: int) -> bool:
    return self.size >= n

  def take(self, n: int) -> Item:
    slots = (self.read + np.arange(n)) % self.capacity
    self.read += n
    return self.gather(slots)


class Ring(Table):
  """Off-policy and expert data: the newest `capacity` items, `take(n)` draws n uniformly with replacement."""

  def can_take(self, n: int) -> bool:
    return self.size >= 1

  def take(self, n: int) -> Item:
    return self.gather(self.rng.integers(0, self.size, n))


KINDS = {"onpolicy": Fifo, "offpolicy": Ring, "expert": Ring}


def make_tables(draws: Sequence[Any], capacity: int, expert_capacity: int, seed: int = 0) -> dict[str, Table]:
  """One table per declared draw (api.Draw: .table), expert tables sized `expert_capacity`, the others `capacity`."""
  return {d.table: KINDS[d.table](d.table, expert_capacity if d.table == "expert" else capacity, seed + i)
          for i, d in enumerate(draws)}


@dataclasses.dataclass(frozen=True)
class Sampler:
  """How many items each declared table gives to one sample of `sample_items` items."""

  draws: tuple[Any, ...]
  sample_items: int

  @property
  def counts(self) -> dict[str, int]:
    return {d.table: max(1, int(round(d.share * self.sample_items))) for d in self.draws}

  def ready(self, tables: dict[str, Table]) -> bool:
    return all(tables[name].can_take(n) for name, n in self.counts.items())

  def sample(self, tables: dict[str, Table]) -> dict[str, Item]:
    """{table: {key: (n_table, T, B, ...)}}; call only when `ready`."""
    return {name: tables[name].take(n) for name, n in self.counts.items()}


__all__ = ["Fifo", "KINDS", "Ring", "Sampler", "Table", "VERSION_KEY", "make_tables"]
