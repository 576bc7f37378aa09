"""Pure replay buffers over pytrees: `init / insert / sample` on an immutable buffer state.

Two kinds, as the learners need them:
  * `FifoQueue` for on-policy data: sampling consumes the oldest items (each item is used once), so a PPO learner
    never trains on data older than the queue's capacity allows.
  * `UniformBuffer` for off-policy data and expert tables: a ring buffer sampled uniformly with replacement.

Every item is one pytree leaf-slice along the leading axis (e.g. one trajectory segment (T, ...)); a batch insert
adds `n` items at once. All three operations are jit-able with static shapes; the checks that need concrete values
(`can_insert`, `can_sample`) are separate host-side methods, as jit cannot raise on traced values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class BufferState:
  """Storage plus cursors.

  Attributes:
    data: pytree whose leaves have shape (capacity, ...).
    insert_position: () int32 total items ever inserted (write index = insert_position % capacity).
    read_position: () int32 total items consumed (FIFO only).
    key: PRNG key for uniform sampling.
  """

  data: PyTree
  insert_position: jax.Array
  read_position: jax.Array
  key: jax.Array


def _size(state: BufferState, capacity: int) -> jax.Array:
  return jnp.minimum(state.insert_position - state.read_position, capacity)


def _write(state: BufferState, items: PyTree, capacity: int) -> PyTree:
  n = jax.tree.leaves(items)[0].shape[0]
  idx = (state.insert_position + jnp.arange(n)) % capacity
  return jax.tree.map(lambda buf, x: buf.at[idx].set(x.astype(buf.dtype)), state.data, items)


@dataclasses.dataclass(frozen=True)
class UniformBuffer:
  """Ring buffer with uniform sampling.

  Attributes:
    capacity: items kept; the oldest are overwritten.
    sample_batch_size: items per `sample` call (drawn with replacement).
    min_size_to_sample: items that must be present before `can_sample` says yes.
  """

  capacity: int
  sample_batch_size: int
  min_size_to_sample: int = 1

  def init(self, item_example: PyTree, key: jax.Array) -> BufferState:
    data = jax.tree.map(lambda x: jnp.zeros((self.capacity,) + jnp.shape(x), jnp.asarray(x).dtype), item_example)
    return BufferState(data=data, insert_position=jnp.int32(0), read_position=jnp.int32(0), key=key)

  def insert(self, state: BufferState, items: PyTree) -> BufferState:
    n = jax.tree.leaves(items)[0].shape[0]
    return state.replace(data=_write(state, items, self.capacity), insert_position=state.insert_position + n)

  def sample(self, state: BufferState) -> tuple[BufferState, PyTree]:
    key, sub = jax.random.split(state.key)
    size = jnp.maximum(jnp.minimum(state.insert_position, self.capacity), 1)
    idx = jax.random.randint(sub, (self.sample_batch_size,), 0, size)
    return state.replace(key=key), jax.tree.map(lambda buf: buf[idx], state.data)

  def size(self, state: BufferState) -> int:
    return int(min(int(state.insert_position), self.capacity))

  def can_sample(self, state: BufferState) -> bool:
    return self.size(state) >= self.min_size_to_sample


@dataclasses.dataclass(frozen=True)
class FifoQueue:
  """First-in first-out queue; `sample` consumes the oldest `sample_batch_size` items.

  Attributes:
    capacity: most items held; inserting into a full queue is refused by `can_insert` (callers drop and count,
      they never overwrite unread on-policy data silently).
    sample_batch_size: items per `sample` call.
  """

  capacity: int
  sample_batch_size: int

  def init(self, item_example: PyTree, key: jax.Array) -> BufferState:
    return UniformBuffer(self.capacity, self.sample_batch_size).init(item_example, key)

  def insert(self, state: BufferState, items: PyTree) -> BufferState:
    n = jax.tree.leaves(items)[0].shape[0]
    return state.replace(data=_write(state, items, self.capacity), insert_position=state.insert_position + n)

  def sample(self, state: BufferState) -> tuple[BufferState, PyTree]:
    idx = (state.read_position + jnp.arange(self.sample_batch_size)) % self.capacity
    batch = jax.tree.map(lambda buf: buf[idx], state.data)
    return state.replace(read_position=state.read_position + self.sample_batch_size), batch

  def size(self, state: BufferState) -> int:
    return int(_size(state, self.capacity))

  def can_insert(self, state: BufferState, n: int) -> bool:
    return self.size(state) + n <= self.capacity

  def can_sample(self, state: BufferState) -> bool:
    return self.size(state) >= self.sample_batch_size
