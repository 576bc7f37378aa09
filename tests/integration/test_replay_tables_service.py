"""Replay serves what the algorithm declares: a bundle drawing half on-policy Trajectories and half expert data gets
both in one ReplayBatch, each under its table's prefix; one drawing from the off-policy ring re-serves items."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from services.common import runtime
from services.replay import config as replay_config
from services.replay import service as replay_service
from shared.algos import api, ppo_update, registry
from shared.wire import schemas

T, B, F, T_LOG = 3, 2, 4, 5


class _Link:
  def __init__(self, **kw):
    self.__dict__.update(kw)

  def close(self):
    pass


def _traj(version):
  return schemas.make("Trajectory", "sim", 0, params_version=version, env_steps=6, arrays={
      "obs/flat": np.full((T, B, F), version, np.float32), "action": np.zeros((T, B), np.int32),
      "reward": np.zeros((T, B), np.float32), "done": np.zeros((T, B), bool), "valid": np.ones((T, B), bool)})


def _expert():
  return schemas.make("ExpertTrajectories", "loader", 0, scenario_ids=["a"], arrays={
      "obs/flat": np.full((T_LOG, B, F), -1, np.float32), "action": np.full((T_LOG, B), 45, np.int32),
      "valid": np.ones((T_LOG, B), bool), "reward": np.ones((T_LOG, B), np.float32),
      "done": np.zeros((T_LOG, B), bool), "terminated": np.zeros((T_LOG, B), bool)})


def _replay(tmp_path, algo: str, trajs, experts, runs: int, sample_items: int = 2):
  sent = []
  links = replay_service.Links(
      trajectories=_Link(recv=lambda timeout_s: next(trajs, None)), params=_Link(poll=lambda timeout_s: None),
      samples=_Link(wait_credit=lambda timeout_s: True, send_fields=lambda schema, **kw: sent.append(kw) or True),
      expert=_Link(recv=lambda timeout_s: next(experts, None)))
  rt = runtime.Runtime("replay", runtime.CommonConfig(metrics_port=0, run_dir=str(tmp_path), algo=algo))
  replay = replay_service.Replay(replay_config.ReplayConfig(capacity=4, sample_items=sample_items), rt, links)
  for _ in range(runs):
    replay.run_once()
  rt.ctx.term()
  return replay, sent


@pytest.fixture()
def mixed():
  algo = registry.register(dataclasses.replace(
      ppo_update.ALGORITHM, name="mixed-test", replay=(api.Draw("onpolicy", 0.5), api.Draw("expert", 0.5))))
  off = registry.register(dataclasses.replace(ppo_update.ALGORITHM, name="offpolicy-test",
                                              replay=(api.Draw("offpolicy"),)))
  yield algo, off
  registry.unregister(algo.name)
  registry.unregister(off.name)


def test_one_sample_holds_each_declared_table_under_its_prefix(tmp_path, mixed):
  replay, sent = _replay(tmp_path, "mixed-test", iter([_traj(1), _traj(2)]), iter([None, _expert()]), runs=3)
  assert set(replay.tables) == {"onpolicy", "expert"}
  assert [kw["params_version"] for kw in sent] == [1, 2]  # none before the expert item came; then FIFO order
  kw = sent[0]
  assert kw["table"] == "trajectories+expert"
  arrays = kw["arrays"]
  # sample_items 2 at half and half: one Trajectory (T, B, ...) and one expert draw (T_LOG, B, ...)
  assert arrays["onpolicy/obs/flat"].shape == (T, B, F) and arrays["expert/obs/flat"].shape == (T_LOG, B, F)
  assert (arrays["onpolicy/obs/flat"] == 1).all() and (arrays["expert/action"] == 45).all()
  assert not any(k.startswith("obs/") for k in arrays)


def test_the_off_policy_ring_serves_items_again(tmp_path, mixed):
  replay, sent = _replay(tmp_path, "offpolicy-test", iter([_traj(3)]), itertools.repeat(None), runs=4)
  assert len(sent) == 4 and all(kw["table"] == "offpolicy" for kw in sent)  # one item, drawn again and again
  assert all((kw["arrays"]["obs/flat"] == 3).all() and kw["arrays"]["obs/flat"].shape == (T, 2 * B, F)
             for kw in sent)
  assert replay.tables["offpolicy"].size == 1 and replay.inserted == 1
