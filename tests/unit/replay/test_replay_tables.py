"""Replay tables: exact FIFO order, ring overwrite, uniform sampling covers only written items, shares per sample."""

import numpy as np
import pytest

from shared.algos import api
from shared.replay import tables


def _item(i):
  # item i is (value i, vector [i, 2i]) so order and content are both checkable
  return {"v": np.float32(i), "w": np.array([i, 2 * i], np.float32)}


def test_fifo_consumes_in_insert_order_across_wraparound():
  q = tables.Fifo("onpolicy", capacity=5)
  for i in range(4):
    q.insert(_item(i))
  np.testing.assert_array_equal(q.take(2)["v"], [0, 1])
  assert q.size == 2 and q.can_insert()
  for i in range(4, 7):  # writes slots 4, 0, 1 (wraps)
    q.insert(_item(i))
  assert q.size == 5 and not q.can_insert()
  with pytest.raises(ValueError, match="full"):
    q.insert(_item(7))
  out = []
  while q.can_take(2):
    b = q.take(2)
    out += b["v"].tolist()
    np.testing.assert_array_equal(b["w"][:, 1], 2 * b["w"][:, 0])
  assert out == [2, 3, 4, 5]  # 6 is left: one item is less than a batch
  assert q.size == 1


def test_a_taken_batch_is_a_copy_the_next_insert_cannot_change():
  q = tables.Fifo("onpolicy", capacity=2)
  q.insert(_item(1))
  b = q.take(1)
  q.insert(_item(9))
  assert b["v"].tolist() == [1.0]


def test_uniform_ring_overwrites_oldest_and_samples_only_written():
  u = tables.Ring("offpolicy", capacity=4, seed=1)
  assert not u.can_take(1)
  for i in range(3):
    u.insert(_item(i))
  assert set(u.take(256)["v"].tolist()) == {0.0, 1.0, 2.0}  # slot 3 unwritten: never sampled
  for i in range(3, 6):  # 3 -> slot 3, 4 -> slot 0, 5 -> slot 1
    u.insert(_item(i))
  np.testing.assert_array_equal(u.data["v"], [4, 5, 2, 3])
  counts = np.bincount(u.take(256)["v"].astype(int), minlength=6)
  assert counts[0] == counts[1] == 0 and (counts[2:] > 30).all()  # 256 draws over 4 items: ~64 each
  assert u.size == 4 and u.can_take(1)


def test_an_item_of_other_shapes_is_refused():
  t = tables.Ring("expert", capacity=2)
  t.insert(_item(0))
  odd = {"v": np.float32(0), "w": np.zeros(3, np.float32)}
  assert not t.accepts(odd) and t.accepts(_item(1))
  with pytest.raises(ValueError, match="shapes"):
    t.insert(odd)


def test_a_sample_mixes_tables_by_their_declared_shares():
  draws = (api.Draw("onpolicy", 0.5), api.Draw("expert", 0.5))
  ts = tables.make_tables(draws, capacity=8, expert_capacity=4)
  assert isinstance(ts["onpolicy"], tables.Fifo) and isinstance(ts["expert"], tables.Ring)
  assert ts["expert"].capacity == 4
  sampler = tables.Sampler(draws, sample_items=4)
  assert sampler.counts == {"onpolicy": 2, "expert": 2}
  for i in range(3):
    ts["onpolicy"].insert(_item(i))
  assert not sampler.ready(ts)  # no expert item yet
  ts["expert"].insert(_item(100))
  parts = sampler.sample(ts)
  assert parts["onpolicy"]["v"].tolist() == [0.0, 1.0] and parts["expert"]["v"].tolist() == [100.0, 100.0]
  assert ts["onpolicy"].size == 1 and not sampler.ready(ts)  # the FIFO gave its items; one is not a share
  with pytest.raises(ValueError, match="sum to 1"):
    api.Algorithm(name="x", config_type=object, configure=None, make_update=None, from_rollout=None,
                  from_arrays=None, replay=(api.Draw("onpolicy", 0.5),))
