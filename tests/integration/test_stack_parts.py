"""The stack's parts one at a time: configs, endpoints, the broker's load balancer with the real inference worker,
replay's batch layout, the evaluator's summary, the supervisor's restart bookkeeping, the simulator's shell. The
policy is the real network (shared.acting.policy_net, "tiny" preset). Real ZeroMQ on 127.0.0.1 where sockets
are involved; no simulator compile.
"""

from __future__ import annotations

import itertools
import math
import threading
import time

import numpy as np
import pytest

from services.broker import config as broker_config, service as broker_service
from services.common import runtime
from services.evaluator import service as evaluator_service
from services.inference import config as inference_config, service as inference_service
from shared.acting import policy_net
from services.replay import service as replay_service
from services.simulator import config as sim_config
from shared.acting import engine as engine_lib
from services.simulator import service as simulator_service
from services.stack import supervisor
from shared.sim import episode
from shared.wire import codec, schemas, transport


def test_config_env_then_cli_precedence_and_endpoints():
  env = {"DRIVELAB_SIMULATOR_MODE": "fused", "DRIVELAB_SIMULATOR_UNROLL": "32", "DRIVELAB_METRICS_PORT": "0",
         "DRIVELAB_PORT_OFFSET": "7", "DRIVELAB_REPLAY_HOST": "replay.svc"}
  cfg, common = sim_config.load(["--mode", "service", "--broker-host", "broker.svc"], env=env)
  assert (cfg.mode, cfg.unroll_length, common.metrics_port, common.port_offset) == ("service", 32, 0, 7)
  # Registry port + offset (trajectories 5553, act_backend 5559), host of the service that binds the link.
  assert runtime.endpoint(common, "trajectories") == "tcp://replay.svc:5560"
  assert runtime.endpoint(common, "act_backend") == "tcp://broker.svc:5566"
  assert runtime.endpoint(common, "params", bind=True) == "tcp://*:5563"
  with pytest.raises(SystemExit):
    sim_config.load(["--mode", "telepathy"], env={})


def test_replay_batch_puts_trajectories_side_by_side():
  # Two trajectories (K=2) of T=3 steps and B=2 agents: action[k, t, b] = 100 k + 10 t + b.
  k, t, b = np.meshgrid(np.arange(2), np.arange(3), np.arange(2), indexing="ij")
  sample = {"action": (100 * k + 10 * t + b).astype(np.int32), "obs/flat": np.zeros((2, 3, 2, 5), np.float32),
            replay_service.VERSION_KEY: np.array([4, 5], np.int32)}
  out = replay_service.to_batch_arrays(sample)
  assert out["action"].tolist() == [[0, 1, 100, 101], [10, 11, 110, 111], [20, 21, 120, 121]]
  assert out["obs/flat"].shape == (3, 4, 5)
  assert replay_service.VERSION_KEY not in out
  # K > 1 is a copy anyway: made into one wire arena, so the batch goes out as one frame after the header
  assert len(codec.encode(codec.Message("ReplayBatch", 2, "r", 0, 0, {"table": "trajectories"}, out))) == 2
  one = replay_service.to_batch_arrays({k: v[:1] for k, v in sample.items()})  # K = 1: views, no copy
  assert one["action"].tolist() == [[0, 1], [10, 11], [20, 21]]


def test_service_path_trajectory_goes_as_one_frame():
  records = [{"obs": np.full((2, 5), t, np.float32), "action": np.full(2, t, np.int32), "valid": np.ones(2, bool),
              "done": np.zeros(2, bool), "reward": np.zeros(2, np.float32), "log_prob": np.zeros(2, np.float32),
              "value": np.zeros(2, np.float32), "terminated": np.zeros(2, bool)} for t in range(3)]
  rec = engine_lib.stack_records(records)
  assert rec["obs"][:, 0, 0].tolist() == [0.0, 1.0, 2.0] and rec["action"].shape == (3, 2)
  arrays = simulator_service.trajectory_arrays(rec, np.zeros((2, 5), np.float32))
  frames = codec.encode(schemas.make("Trajectory", "s", 0, arrays=arrays, params_version=0, env_steps=6))
  assert len(frames) == 3  # header, the stacked records (one arena), the bootstrap features (packed)


def test_evaluator_flattens_episode_summary():
  # 4 agents, 3 scored (evaluated), 2 of them moving: 1 collision among the scored -> all/collision = 1/3.
  n = 4
  per_agent = {name: np.zeros(n, bool) for name in episode.BOOL_METRICS}
  per_agent.update(evaluated=np.array([1, 1, 1, 0], bool), moving=np.array([1, 1, 0, 0], bool),
                   progress_valid=np.array([1, 1, 0, 0], bool), offroad_steps=np.zeros(n, np.int32),
                   progress_ratio=np.array([0.5, 1.0, 0.0, 0.0], np.float32),
                   progress_m=np.array([5.0, 20.0, 0.0, 0.0]), path_m=np.array([10.0, 20.0, 0.0, 0.0]),
                   episodic_reward=np.array([-1.0, 1.0, 0.0, 1.0]), ade_m=np.zeros(n), fde_m=np.zeros(n))
  per_agent["collision"] = np.array([1, 0, 0, 1], bool)
  flat = evaluator_service.flatten(episode.summarize(per_agent))
  assert flat["all/agents"] == 3.0 and flat["moving/agents"] == 2.0 and flat["parked/agents"] == 1.0
  assert flat["all/collision"] == pytest.approx(1 / 3) and flat["moving/collision"] == 0.5
  assert flat["moving/progress_ratio"] == pytest.approx(0.75)  # mean of 0.5 and 1.0
  assert flat["all/episodic_reward"] == 0.0  # (-1 + 1 + 0) / 3
  assert "parked/progress_ratio" not in flat  # undefined (no parked agent has a path): left out, not 0


@pytest.fixture(params=["plain", "curve"])
def lb(tmp_path, request):
  """A broker plus one real inference worker in threads; with "curve", every link is CURVE-authenticated."""
  curve_dir = ""
  if request.param == "curve":
    curve_dir = str(tmp_path / "keys")
    transport.create_curve_keys(curve_dir)
  common = runtime.CommonConfig(metrics_port=0, port_offset=supervisor.find_port_offset(), run_dir=str(tmp_path),
                                curve_dir=curve_dir, net="mlp", preset="tiny")
  rts = {n: runtime.Runtime(n, common) for n in ("broker", "inference")}
  svcs = {"broker": broker_service.bootstrap(broker_config.BrokerConfig(inference_slots=2), rts["broker"]),
          "inference": inference_service.bootstrap(inference_config.InferenceConfig(), rts["inference"])}
  threads = [threading.Thread(target=rts[n].run, args=(svcs[n],), daemon=True) for n in rts]
  for th in threads:
    th.start()
  yield common, rts, svcs
  for rt in rts.values():
    rt.stop.set()
  for th in threads:
    th.join(10)


def test_load_balancer_routes_replies_to_their_clients(lb):
  common, rts, svcs = lb
  ctx = transport.new_context()
  keys = transport.curve_keys_from_files(common.curve_dir) if common.curve_dir else None
  clients = [transport.Client(ctx, runtime.endpoint(common, "act"), curve=keys) for _ in range(2)]
  f = policy_net.from_common(common).num_features
  try:
    for i, cli in enumerate(clients):
      for rid in (1, 2):
        n = 3 + i  # each client asks for a different number of agents
        req = schemas.make("ActRequest", f"sim-{i}", rid, arrays={"obs/flat": np.zeros((n, f), np.float32)},
                           request_id=rid)
        reply = cli.request(req, 60.0)
        assert reply is not None and reply.fields["request_id"] == rid
        assert reply.arrays["action"].shape == (n,) and reply.fields["params_version"] == 0
        # Version-0 params on all-zero features: every LayerNorm output is 0, so the logits are the (zero) output
        # biases: a uniform policy over the 7 x 13 grid, log p = -log 91 = -4.5109.
        np.testing.assert_allclose(reply.arrays["log_prob"], -math.log(91), rtol=1e-5)
    deadline = time.monotonic() + 5  # the worker counts a reply just after sending it
    while svcs["inference"].replies < 4 and time.monotonic() < deadline:
      time.sleep(0.01)
    assert svcs["inference"].replies == 4
    assert not svcs["broker"].pending
    # Features of another network's size are refused (counted), never fed to this one.
    req = schemas.make("ActRequest", "sim-odd", 9, arrays={"obs/flat": np.zeros((2, 7), np.float32)}, request_id=9)
    assert clients[0].request(req, 1.5) is None
    assert rts["inference"].registry.get_sample_value("drivelab_decode_errors_total", {"reason": "item_shape"}) == 1
    if keys is not None:  # a client without the keys is not let in: no reply, and nothing reaches the worker
      clients.append(transport.Client(ctx, runtime.endpoint(common, "act")))
      req = schemas.make("ActRequest", "intruder", 1, arrays={"obs/flat": np.zeros((1, f), np.float32)},
                         request_id=1)
      assert clients[-1].request(req, 1.5) is None
      assert svcs["inference"].replies == 4
  finally:
    for cli in clients:
      cli.close()
    ctx.term()


class _FakeProc:
  def __init__(self, code):
    self.returncode, self.pid = code, 4242

  def poll(self):
    return self.returncode


def test_supervisor_plan_restart_count_and_targets(tmp_path):
  cfg = supervisor.StackConfig(simulators=3, inference=2, scene_loaders=1, run_dir=str(tmp_path), max_restarts=1)
  started = []

  class Recording(supervisor.Supervisor):
    def start(self, child):  # no real processes: record and pretend it died at once
      started.append(child.name)
      child.proc, child.started_s = _FakeProc(1), time.monotonic() - 10

  sup = Recording(cfg, out=open(tmp_path / "out.txt", "w"))
  names = [c.name for c in sup.children]
  assert names[:3] == ["learner-0", "replay-0", "broker-0"]  # binders first
  assert sum(n.startswith("simulator-") for n in names) == 3 and sum(n.startswith("inference-") for n in names) == 2
  assert len({c.metrics_port for c in sup.children}) == len(names)
  for c in sup.children:
    sup.start(c)
  sup.watch_once()
  assert sup.exit_code() == 0  # every child restarted: nothing lost yet
  sup.watch_once()  # max_restarts=1: the second exit gives up instead of looping
  assert sup.exit_code() == 1  # and `drivelab up` says so in its exit status
  restarts = sup.registry.get_sample_value("drivelab_restarts_total", {"component": "simulator"})
  assert restarts == 3.0 and all(c.given_up for c in sup.children)
  targets = sup.targets()
  assert len(targets["simulator"]) == 3 and targets["stack"] == [f"127.0.0.1:{sup.metrics_port}"]


class _Fake:
  """A link or engine stand-in: attributes given, every other call recorded."""

  def __init__(self, **kw):
    self.__dict__.update(kw)
    self.calls = []

  def close(self):
    self.calls.append("close")


def test_simulator_shell_swaps_params_counts_steps_and_drops(tmp_path):
  from services.common import scenario_codec
  from services.simulator import service as sim_service
  from shared.scenes import types

  # One scene, no sockets, no JAX: the shell's own logic only.
  scn = types.stack([empty_scene()])
  scene_msg = schemas.make("ScenarioBatch", "loader", 0, arrays=scenario_codec.scenario_to_arrays(scn), num_scenes=1)
  pn = policy_net.build("mlp", "tiny")
  trained = pn.init_flat()
  bias = next(k for k in trained if k.endswith("logits_0/bias"))
  trained[bias] = np.full_like(trained[bias], 0.5)
  params_msg = schemas.make("Params", "learner", 0, arrays=trained, params_version=5)
  rec = {"obs": np.zeros((2, 4, 3), np.float32), "action": np.zeros((2, 4), np.int32),
         "reward": np.ones((2, 4), np.float32), "done": np.zeros((2, 4), bool),
         "valid": np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool), "log_prob": np.zeros((2, 4), np.float32),
         "value": np.zeros((2, 4), np.float32)}
  seen = []
  engine = _Fake(num_features=pn.num_features, num_actions=91, loaded=0, policy=pn, feat=np.zeros((4, 3)))
  engine.load = lambda s: setattr(engine, "loaded", engine.loaded + 1)
  engine.episode_over = lambda: False
  engine.collect = lambda p: (seen.append(p[bias][0]), rec)[1]
  sends = itertools.chain([True], itertools.repeat(False))  # then never a credit again
  traj = _Fake(sent=[])
  traj.send_fields = lambda schema, **kw: (traj.sent.append(kw["params_version"]), next(sends))[1]
  polls = iter([params_msg])
  links = sim_service.Links(scenes=_Fake(recv=lambda timeout_s: scene_msg, ack=lambda: None), trajectories=traj,
                            params=_Fake(poll=lambda t: next(polls, None)))
  cfg = sim_config.SimulatorConfig(send_timeout_s=0.3)
  rt = runtime.Runtime("simulator", runtime.CommonConfig(metrics_port=0, run_dir=str(tmp_path)))
  sim = sim_service.Simulator(cfg, rt, links, engine)
  sim.run_once()  # loads the batch, takes version 5, sends
  sim.run_once()  # the send finds no credit until the timeout: dropped and counted
  assert engine.loaded == 1 and seen == [0.5, 0.5] and traj.sent[0] == 5
  assert (sim.sent, sim.dropped) == (1, 1)
  # 3 valid agent steps in the one Trajectory that went out.
  assert rt.registry.get_sample_value("drivelab_agent_steps_total") == 3.0
  assert rt.registry.get_sample_value("drivelab_dropped_total", {"what": "trajectory_no_credit"}) == 1.0
  rt.ctx.term()


def empty_scene():
  from shared.scenes import native, types

  return native.empty_scenario(types.SceneConfig(max_objects=4, max_road_points=8, max_tl_lanes=2,
                                                 num_timesteps=5))


def test_replay_serves_expert_batches_under_bc_and_drains_unused_trajectories(tmp_path):
  from services.replay import config as replay_config

  t, b, f = 3, 2, 4
  expert = schemas.make("ExpertTrajectories", "loader", 0, scenario_ids=["a"], arrays={
      "obs/flat": np.arange(t * b * f, dtype=np.float32).reshape(t, b, f), "action": np.full((t, b), 45, np.int32),
      "valid": np.ones((t, b), bool), "reward": np.ones((t, b), np.float32), "done": np.zeros((t, b), bool),
      "terminated": np.zeros((t, b), bool)})
  traj = schemas.make("Trajectory", "sim", 0, params_version=0, env_steps=6, arrays={
      "obs/flat": np.zeros((t, b, f), np.float32), "action": np.zeros((t, b), np.int32),
      "reward": np.zeros((t, b), np.float32), "done": np.zeros((t, b), bool), "valid": np.ones((t, b), bool)})
  sent = []
  experts, trajs = iter([expert]), itertools.repeat(traj)
  links = replay_service.Links(
      trajectories=_Fake(recv=lambda timeout_s: next(trajs)), params=_Fake(poll=lambda timeout_s: None),
      samples=_Fake(wait_credit=lambda timeout_s: True, send_fields=lambda schema, **kw: sent.append(kw) or True),
      expert=_Fake(recv=lambda timeout_s: next(experts, None)))
  rt = runtime.Runtime("replay", runtime.CommonConfig(metrics_port=0, run_dir=str(tmp_path), algo="bc"))
  replay = replay_service.Replay(replay_config.ReplayConfig(capacity=2, sample_items=2), rt, links)
  for _ in range(4):
    replay.run_once()
  # Every ReplayBatch is expert data: 2 draws of the one message side by side, (T, 2 * B, ...).
  assert sent and all(kw["table"] == "expert" for kw in sent)
  arrays = sent[0]["arrays"]
  assert arrays["obs/flat"].shape == (t, 2 * b, f) and arrays["action"].tolist() == [[45] * 4] * t
  np.testing.assert_array_equal(arrays["obs/flat"][:, :b], expert.arrays["obs/flat"])
  # The simulators' Trajectories are consumed, counted, never sent to the BC learner.
  assert rt.registry.get_sample_value("drivelab_dropped_total", {"what": "unused_trajectory"}) >= 2
  rt.ctx.term()


def test_full_replay_blocks_on_the_learners_credit_instead_of_spinning(tmp_path):
  from services.replay import config as replay_config

  t, b, f = 2, 2, 3
  traj = schemas.make("Trajectory", "sim", 0, params_version=0, env_steps=4, arrays={
      "obs/flat": np.zeros((t, b, f), np.float32), "action": np.zeros((t, b), np.int32),
      "reward": np.zeros((t, b), np.float32), "done": np.zeros((t, b), bool), "valid": np.ones((t, b), bool)})
  waits, received = [], []
  links = replay_service.Links(
      trajectories=_Fake(recv=lambda timeout_s: received.append(1) or traj),
      params=_Fake(poll=lambda timeout_s: None),
      samples=_Fake(wait_credit=lambda timeout_s: waits.append(timeout_s) or False,  # the learner never asks
                    send_fields=lambda schema, **kw: True),
      expert=_Fake(recv=lambda timeout_s: None))
  rt = runtime.Runtime("replay", runtime.CommonConfig(metrics_port=0, run_dir=str(tmp_path)))
  replay = replay_service.Replay(replay_config.ReplayConfig(capacity=2, sample_items=2), rt, links)
  for _ in range(5):
    replay.run_once()
  # Two inserts fill the table; after that replay takes nothing more off the socket and each pass waits a bounded,
  # non-zero time for the learner's credit (was: returned at once, spinning a core away from the learner).
  assert replay.inserted == 2 and len(received) == 2
  blocking = [w for w in waits if w > 0]
  assert len(blocking) == 3 and all(0 < w <= 0.1 for w in blocking)
  rt.ctx.term()


T_, B_, F_ = 3, 2, 4  # the replay tests' Trajectory shape: steps, agents, features


def _versioned_traj(version: int) -> codec.Message:
  """A Trajectory acted with params `version`, its observations filled with that version (to tell columns apart)."""
  t, b, f = T_, B_, F_
  return schemas.make("Trajectory", "sim", 0, params_version=version, env_steps=6, arrays={
      "obs/flat": np.full((t, b, f), version, np.float32), "action": np.zeros((t, b), np.int32),
      "reward": np.zeros((t, b), np.float32), "done": np.zeros((t, b), bool), "valid": np.ones((t, b), bool)})


def _replay_run(tmp_path, params_fields: dict, versions: list[int], items: int):
  """A Replay (capacity 2, max_staleness_versions 8) fed Trajectories of `versions` under the newest Params
  `params_fields`, run 4 times; returns (the ReplayBatch fields sent, its Runtime)."""
  from services.replay import config as replay_config

  params = type("Params", (), {"fields": params_fields})()
  trajs = iter([_versioned_traj(v) for v in versions])
  sent = []
  links = replay_service.Links(
      trajectories=_Fake(recv=lambda timeout_s: next(trajs, None)), params=_Fake(poll=lambda timeout_s: params),
      samples=_Fake(wait_credit=lambda timeout_s: True, send_fields=lambda schema, **kw: sent.append(kw) or True),
      expert=_Fake(recv=lambda timeout_s: None))
  rt = runtime.Runtime("replay", runtime.CommonConfig(metrics_port=0, run_dir=str(tmp_path)))
  replay = replay_service.Replay(replay_config.ReplayConfig(capacity=2, sample_items=items, max_staleness_versions=8),
                                 rt, links)
  for _ in range(4):
    replay.run_once()
  return sent, rt


def test_replay_masks_data_acted_before_a_warm_start(tmp_path):
  """A fine-tuning learner publishes its warm start as version 1 with min_data_version 1: an item acted with the
  random version 0 (a simulator that had not yet received those params) goes out masked, counted apart from
  staleness, although it is well within max_staleness_versions."""
  sent, rt = _replay_run(tmp_path, {"params_version": 1, "min_data_version": 1}, [0, 1], items=2)
  valid = sent[0]["arrays"]["valid"]
  version = sent[0]["arrays"]["obs/flat"][..., 0]
  np.testing.assert_array_equal(valid, version >= 1)
  assert rt.registry.get_sample_value("drivelab_dropped_total", {"what": "before_warm_start"}) == 1.0
  assert rt.registry.get_sample_value("drivelab_dropped_total", {"what": "stale_item"}) == 0.0
  rt.ctx.term()


@pytest.mark.parametrize("items", [2, 1])
def test_replay_masks_stale_items_and_keeps_an_arena_batch_one_frame(tmp_path, items):
  """Items older than the newest params by more than max_staleness_versions go out with valid = False (counted);
  fresh items keep their valid. With 2 items per batch the mask is written into the batch's arena in place, so the
  ReplayBatch still encodes as header + one frame; with 1 item (views of the table) it is masked by a copy."""
  from shared.wire import arena as arena_lib

  t, b = T_, B_
  # the newest params: version 10; 0 < 10 - 8: stale; 5: fresh
  sent, rt = _replay_run(tmp_path, {"params_version": 10}, [0, 5], items)
  assert len(sent) == 2 // items
  valid = np.concatenate([kw["arrays"]["valid"] for kw in sent], axis=1)  # (T, 2 * B): both items, in send order
  version = np.concatenate([kw["arrays"]["obs/flat"][..., 0] for kw in sent], axis=1)  # each column's item
  np.testing.assert_array_equal(valid, version >= 2)
  assert valid.sum() == t * b  # the fresh item's columns alone
  assert rt.registry.get_sample_value("drivelab_dropped_total", {"what": "stale_item"}) == 1.0
  if items == 2:
    arrays = sent[0]["arrays"]
    assert type(arrays["valid"].base) is arena_lib.ArenaBuffer
    assert len(codec.encode(schemas.make("ReplayBatch", "replay", 0, table="trajectories", params_version=0,
                                         staleness_versions=10, arrays=arrays))) == 2
  rt.ctx.term()


def test_a_handler_error_costs_no_time_and_errors_in_a_row_back_off(tmp_path):
  """Runtime.run: an isolated handler error is counted and the loop goes straight on (no sleep); only errors in a row
  back off, doubling from 1 ms up to 100 ms, and the first success resets that."""
  rt = runtime.Runtime("x", runtime.CommonConfig(metrics_port=0, run_dir=str(tmp_path)))
  sleeps = []
  rt.sleep = sleeps.append
  # ok, error, ok, then 9 errors in a row, ok, error, then stop
  plan = iter([True, False, True] + [False] * 9 + [True, False])

  class Svc:
    def run_once(self):
      step = next(plan, None)
      if step is None:
        rt.stop.set()
      elif not step:
        raise ValueError("bad batch")

    def close(self):
      pass

  rt.run(Svc())
  assert sleeps == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.1]  # errors 2..9 of the run of 9
  assert rt.registry.get_sample_value("drivelab_decode_errors_total", {"reason": "handler_exception"}) == 11
