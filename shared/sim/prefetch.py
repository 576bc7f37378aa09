"""Double-buffered device prefetch (paper 002, section 3.2.3): the next batch is on the device before it is needed.

  for batch in Prefetcher(host_batches, size=2):   # host_batches yields numpy pytrees (e.g. stacked Scenarios)
    state = reset_jit(batch, rng)                   # batch is already on the device

`jax.device_put` is asynchronous: it starts the host-to-device copy and returns at once, so keeping `size` batches
in flight overlaps the copy of batch i+1 with the simulation of batch i. No threads are needed.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator

import jax


class Prefetcher:
  """Iterator over device-resident batches, keeping `size` of them already transferred.

  Attributes:
    size: batches in flight (2 = double buffering).
  """

  def __init__(self, iterator: Iterable[Any], size: int = 2, device: jax.Device | None = None):
    if size < 1:
      raise ValueError(f"Prefetcher size must be >= 1, got {size}")
    self.size = size
    self._source = iter(iterator)
    self._device = device
    self._queue: collections.deque = collections.deque()
    self._fill()

  def _fill(self) -> None:
    while len(self._queue) < self.size:
      try:
        host = next(self._source)
      except StopIteration:
        return
      self._queue.append(jax.device_put(host, self._device))

  def __iter__(self) -> Iterator[Any]:
    return self

  def __next__(self) -> Any:
    if not self._queue:
      raise StopIteration
    batch = self._queue.popleft()
    self._fill()
    return batch

  def __len__(self) -> int:
    """Batches already transferred and waiting."""
    return len(self._queue)
