"""Replay buffers: exact FIFO order, ring overwrite, uniform sampling covers only written items."""

import jax
import jax.numpy as jnp
import numpy as np

from shared.replay import buffers


def _items(start, n):
  # item i is (value i, vector [i, 2i]) so order and content are both checkable
  v = jnp.arange(start, start + n, dtype=jnp.float32)
  return {"v": v, "w": jnp.stack([v, 2 * v], -1)}


def test_fifo_consumes_in_insert_order_across_wraparound():
  q = buffers.FifoQueue(capacity=5, sample_batch_size=2)
  s = q.init({"v": jnp.float32(0), "w": jnp.zeros(2)}, jax.random.PRNGKey(0))
  s = q.insert(s, _items(0, 4))
  s, b = q.sample(s)
  np.testing.assert_array_equal(b["v"], [0, 1])
  assert q.size(s) == 2 and q.can_insert(s, 3) and not q.can_insert(s, 4)
  s = q.insert(s, _items(4, 3))  # writes slots 4, 0, 1 (wraps)
  out = []
  while q.can_sample(s):
    s, b = q.sample(s)
    out += list(np.asarray(b["v"]))
    np.testing.assert_array_equal(b["w"][:, 1], 2 * b["w"][:, 0])
  assert out == [2, 3, 4, 5]  # 6 is left: one item is less than a batch
  assert q.size(s) == 1


def test_fifo_sample_is_jittable_and_matches_eager():
  q = buffers.FifoQueue(capacity=8, sample_batch_size=3)
  s = q.insert(q.init({"v": jnp.float32(0), "w": jnp.zeros(2)}, jax.random.PRNGKey(0)), _items(10, 6))
  s1, b1 = jax.jit(q.sample)(s)
  s2, b2 = q.sample(s)
  np.testing.assert_array_equal(b1["v"], b2["v"])
  np.testing.assert_array_equal(b1["v"], [10, 11, 12])
  assert int(s1.read_position) == int(s2.read_position) == 3


def test_uniform_ring_overwrites_oldest_and_samples_only_written():
  u = buffers.UniformBuffer(capacity=4, sample_batch_size=256)
  s = u.init({"v": jnp.float32(0), "w": jnp.zeros(2)}, jax.random.PRNGKey(1))
  s = u.insert(s, _items(0, 3))
  s, b = jax.jit(u.sample)(s)
  assert set(np.asarray(b["v"]).tolist()) == {0.0, 1.0, 2.0}  # slot 3 unwritten: never sampled
  s = u.insert(s, _items(3, 3))  # 3 -> slot 3, 4 -> slot 0, 5 -> slot 1
  np.testing.assert_array_equal(s.data["v"], [4, 5, 2, 3])
  s, b = u.sample(s)
  counts = np.bincount(np.asarray(b["v"]).astype(int), minlength=6)
  assert counts[0] == counts[1] == 0 and (counts[2:] > 30).all()  # 256 draws over 4 items: ~64 each
  assert u.size(s) == 4 and u.can_sample(s)
  empty = u.init({"v": jnp.float32(0), "w": jnp.zeros(2)}, jax.random.PRNGKey(2))
  assert not u.can_sample(empty)
