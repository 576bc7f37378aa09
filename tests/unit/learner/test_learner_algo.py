"""The learner service's algorithm on the real network (mlp, "tiny" preset): the flat-feature layout round-trips a
real observation, every process builds the same version 0, a PPO update (V-trace targets) on a fixed batch lowers
the loss and raises the rewarded action's probability, and ReplayBatch arrays map onto the update's batch with the
right episode ends."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from services.common import runtime
from shared.acting import policy_net
from services.learner import algo as algo_lib
from shared.training import checkpoint
from services.learner import config as config_lib
from services.learner import service as learner_service
from shared.acting import engine as engine_lib
from shared.algos import ppo_update
from shared.nets import heads, inputs
from shared.scenes import synthetic, types
from shared.sim import env
from shared.wire import schemas

T, B = 4, 16


@pytest.fixture(scope="module")
def pn():
  return policy_net.build("mlp", "tiny")


def test_flat_features_round_trip_a_real_observation(pn):
  sc = types.SceneConfig(max_objects=8, max_road_points=400, max_tl_lanes=4)
  scenario = types.stack([synthetic.generate_many(1, seed=3, scene_config=sc)[0][0]])
  cfg = env.EnvConfig(max_controlled=4)
  observe = jax.jit(lambda s: jax.vmap(lambda x: env.observe(x, cfg))(env.reset_batch(s, jax.random.PRNGKey(0), cfg)))
  obs = observe(scenario)  # (S=1, O=8, ...)
  flat = engine_lib.flat_features(obs)
  assert flat.shape == (8, pn.num_features) == (8, 505)  # 9 + 8*14 + 32*11 + 8*3 + 7 + 1
  back = pn.net_input(flat)
  want = jax.tree.map(lambda x: x.reshape((8,) + x.shape[2:]), inputs.from_observation(obs))
  for name in ("ego", "agents", "agents_mask", "roads", "roads_mask", "route", "route_mask", "light",
               "remaining_time"):
    a, b = getattr(back, name), getattr(want, name)
    assert a.dtype == b.dtype and a.shape == b.shape, name
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
  assert bool(jnp.any(back.agents_mask)) and bool(jnp.any(back.roads_mask))  # a real scene, not all padding
  np.testing.assert_array_equal(inputs.flatten(want, pn.layout), flat)


def test_version_zero_is_identical_everywhere_and_flat_keys_round_trip(pn):
  a, b = pn.init_flat(), policy_net.PolicyNet("mlp", "tiny", env.EnvConfig().obs,
                                              env.EnvConfig().actions).init_flat()
  assert sorted(a) == sorted(b) and all(k.startswith("params/") for k in a)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert policy_net.to_flat(policy_net.from_flat(a)).keys() == a.keys()
  assert pn.matches(a) and not pn.matches({k: v for k, v in list(a.items())[1:]})
  other = policy_net.PolicyNet("mlp", "tiny", env.EnvConfig().obs, env.EnvConfig().actions, seed=1).init_flat()
  assert any(not np.array_equal(a[k], other[k]) for k in a if a[k].std() > 0)


@functools.lru_cache
def _select(pn):
  return jax.jit(pn.select_action)


def _bandit_batch(pn, params_flat, rng):
  """Every step ends its episode (terminated); reward 1 when the acceleration head picks its top index."""
  r = np.random.default_rng(0)
  flat = r.normal(size=(T + 1, B, pn.num_features)).astype(np.float32)
  out = _select(pn)(params_flat, jnp.asarray(flat[:T].reshape(T * B, -1)), rng)
  action, logp, value = (np.asarray(x).reshape(T, B) for x in out)
  factors = np.asarray(pn.agent.to_factors(action))
  reward = (factors[..., 0] == pn.agent.action_dims[0] - 1).astype(np.float32)
  ones = np.ones((T, B), bool)
  return {"obs/flat": flat[:T], "bootstrap_obs/flat": flat[T:], "action": np.asarray(action),
          "log_prob": np.asarray(logp), "value": np.asarray(value), "reward": reward, "done": ones,
          "terminated": ones, "valid": ones}


# One PPO configuration for every test here: one compile of the update step per process.
CFG = config_lib.LearnerConfig(learning_rate=3e-3, num_epochs=2, num_minibatches=2, entropy_coef=0.0)


@pytest.mark.slow  # compiles the PPO update step (~10 s on a quiet 2-core machine)
def test_ppo_update_on_a_fixed_batch_lowers_the_loss_and_favours_the_rewarded_action(pn):
  la = algo_lib.make(pn, "ppo", CFG)
  state = la.init_state()
  p0 = jax.device_get(state.params)
  arrays = _bandit_batch(pn, pn.init_flat(), jax.random.PRNGKey(1))
  assert 0 < arrays["reward"].mean() < 0.5  # ~1/7 of a near-uniform policy's actions are rewarded
  batch = la.to_batch(arrays)
  losses = []
  for _ in range(8):
    state, metrics = la.update(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.05, losses
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(state.params)))
  assert moved > 1e-3
  logits, _ = pn.agent.apply(state.params, batch.obs)
  p_top = float(jnp.mean(jax.nn.softmax(logits[0])[..., -1]))
  assert p_top > 1.5 / pn.agent.action_dims[0], p_top  # from ~1/7 (uniform) to well above


def test_replay_arrays_map_to_trajectory_ends(pn):
  # 3 steps, 2 agents: agent 0 terminates at step 1, agent 1 leaves the log (truncated) at step 0.
  f = pn.num_features
  arrays = {"obs/flat": np.zeros((3, 2, f), np.float32), "bootstrap_obs/flat": np.ones((1, 2, f), np.float32),
            "action": np.array([[90, 0], [45, 0], [0, 0]], np.int32), "log_prob": np.zeros((3, 2), np.float32),
            "value": np.zeros((3, 2), np.float32), "reward": np.zeros((3, 2), np.float32),
            "done": np.array([[0, 1], [1, 0], [0, 0]], bool), "terminated": np.array([[0, 0], [1, 0], [0, 0]], bool),
            "valid": np.array([[1, 1], [1, 0], [0, 0]], bool)}
  traj = ppo_update.from_arrays(pn, arrays)
  assert traj.obs.ego.shape == (4, 2, 9)  # T + 1 observations: s_T from bootstrap_obs
  np.testing.assert_array_equal(traj.obs.ego[3], 1.0)
  np.testing.assert_array_equal(traj.actions[:, 0], [[6, 12], [3, 6], [0, 0]])  # 7 x 13 grid, row-major
  np.testing.assert_array_equal(traj.terminated, [[0, 0], [1, 0], [0, 0]])
  np.testing.assert_array_equal(traj.truncated, [[0, 1], [0, 0], [1, 1]])  # the unroll's end bootstraps
  np.testing.assert_array_equal(traj.mask, [[1, 1], [1, 0], [0, 0]])
  old = {k: v for k, v in arrays.items() if k not in ("bootstrap_obs/flat", "terminated")}
  assert ppo_update.from_arrays(pn, old).reward.shape == (2, 2)  # v1: the last step only bootstraps


class _Publisher:
  def __init__(self):
    self.msgs = []

  def publish(self, msg):
    self.msgs.append(msg)

  def close(self):
    pass


def _learner(pn, run_dir, cfg):
  common = runtime.CommonConfig(metrics_port=0, run_dir=str(run_dir), algo="ppo", net="mlp", preset="tiny")
  rt = runtime.Runtime("learner", common)
  pub = _Publisher()
  return learner_service.Learner(cfg, rt, learner_service.Links(samples=None, params=pub, eval_in=None), pn), pub


@pytest.mark.slow  # the same PPO compile as above when run in the same process
def test_learner_killed_mid_run_resumes_with_the_same_version_and_identical_params(pn, tmp_path):
  cfg = dataclasses.replace(CFG, checkpoint_every=2)
  msgs = [schemas.make("ReplayBatch", "replay", i, arrays=_bandit_batch(pn, pn.init_flat(), jax.random.PRNGKey(i)),
                       table="trajectories", params_version=0) for i in range(3)]
  first, pub = _learner(pn, tmp_path, cfg)
  for msg in msgs:
    first.learn(msg)
  assert [m.fields["params_version"] for m in pub.msgs] == [1, 2, 3]
  assert checkpoint.latest_version(tmp_path / "checkpoints" / "ppo") == 2  # every 2 updates; then a kill (no close)
  assert first.rt.registry.get_sample_value("drivelab_learner_updates_total") == 3.0
  assert first.rt.registry.get_sample_value("drivelab_learner_loss", {"name": "value_loss"}) > 0
  v0 = pn.init_flat()
  assert max(float(np.abs(pub.msgs[0].arrays[k] - v0[k]).max()) for k in v0) > 1e-4  # version 1 != version 0

  second, pub2 = _learner(pn, tmp_path, cfg)  # the restart
  assert second.version == 2
  resumed = second.params_flat()
  for k, v in pub.msgs[1].arrays.items():
    np.testing.assert_array_equal(resumed[k], v, err_msg=k)
  second.learn(msgs[2])  # the update the killed learner did after its checkpoint: bit for bit the same
  assert pub2.msgs[-1].fields["params_version"] == 3
  for k, v in pub.msgs[2].arrays.items():
    np.testing.assert_array_equal(pub2.msgs[-1].arrays[k], v, err_msg=k)
  meta = json.loads((tmp_path / "policy.json").read_text())
  assert (meta["net"], meta["preset"], meta["algo"], meta["num_features"]) == ("mlp", "tiny", "ppo", 505)
  for lrn in (first, second):
    lrn.rt.ctx.term()


def _bc_checkpoint(pn, run_dir, scale=0.05):
  """A BC run's checkpoint (run_dir/checkpoints/bc) whose params differ from version 0; returns those params."""
  la = algo_lib.make(pn, "bc", config_lib.LearnerConfig())
  state = la.init_state()
  noise = jax.tree.map(lambda x: scale * np.random.default_rng(x.size).normal(size=x.shape).astype(x.dtype),
                       jax.device_get(state.params))
  state = state.replace(params=jax.tree.map(lambda a, b: a + b, state.params, noise))
  checkpoint.save(run_dir / "checkpoints" / "bc", algo_lib.host({"train": state}), 7)
  return jax.device_get(state.params)


def test_init_from_starts_from_the_bc_checkpoint_and_carries_its_logits(pn, tmp_path):
  bc_params = _bc_checkpoint(pn, tmp_path / "bc")
  cfg = dataclasses.replace(CFG, init_from=str(tmp_path / "bc"), ref_kl_coef=0.5)
  lrn, pub = _learner(pn, tmp_path / "ppo", cfg)
  # a fresh run from those params, not a resume of the BC run: version 1 (0 is every process's own random init),
  # and data collected with older params is not to be learned from
  assert (lrn.version, lrn.min_data_version) == (1, 1)
  lrn._publish()
  assert (pub.msgs[-1].fields["params_version"], pub.msgs[-1].fields["min_data_version"]) == (1, 1)
  got = lrn.params_flat()
  for k, v in policy_net.to_flat(bc_params).items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  # the checkpoint folder itself works too
  again, _ = _learner(pn, tmp_path / "ppo2", dataclasses.replace(cfg, init_from=str(tmp_path / "bc/checkpoints/bc")))
  np.testing.assert_array_equal(again.params_flat()[k], got[k])
  # each batch carries the frozen reference's logits at s_0 .. s_{T-1}
  arrays = _bandit_batch(pn, pn.init_flat(), jax.random.PRNGKey(0))
  batch = lrn.algo.prepare(arrays)
  want = pn.agent.apply(bc_params, jax.tree.map(lambda x: x[:T], batch.obs))[0]
  assert len(batch.ref_logits) == len(want)
  for a, b in zip(batch.ref_logits, want):
    assert a.shape == (T, B, b.shape[-1])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert algo_lib.make(pn, "ppo", CFG).prepare(arrays).ref_logits is None  # no reference: no logits
  # the floor survives a restart: the resumed learner still tells replay to drop version-0 data
  lrn.save()
  resumed, _ = _learner(pn, tmp_path / "ppo", cfg)
  assert (resumed.version, resumed.min_data_version) == (1, 1)
  resumed.rt.ctx.term()
  for lrn_ in (lrn, again):
    lrn_.rt.ctx.term()


def test_init_from_errors_are_one_line(pn, tmp_path):
  with pytest.raises(SystemExit, match="holds no checkpoint"):
    _learner(pn, tmp_path / "a", dataclasses.replace(CFG, init_from=str(tmp_path / "nothing")))
  _bc_checkpoint(policy_net.build("mlp", "small"), tmp_path / "big")  # another network's checkpoint
  with pytest.raises(SystemExit, match="does not fit this network"):
    _learner(pn, tmp_path / "b", dataclasses.replace(CFG, init_from=str(tmp_path / "big")))
  with pytest.raises(SystemExit, match="needs init_from"):
    _learner(pn, tmp_path / "c", dataclasses.replace(CFG, ref_kl_coef=0.5))
  with pytest.raises(SystemExit, match="needs --init-from"):
    config_lib.load(["--ref-kl-coef", "0.5"], env={})
  cfg, _ = config_lib.load(["--init-from", "x", "--ref-kl-coef", "0.5"], env={})
  assert (cfg.init_from, cfg.ref_kl_coef) == ("x", 0.5)
  assert config_lib.load([], env={"DRIVELAB_LEARNER_REF_KL": "0.2", "DRIVELAB_LEARNER_INIT_FROM": "y"})[0].ref_kl_coef \
      == 0.2


@pytest.mark.slow  # compiles the PPO update twice (with and without the KL term)
def test_ref_kl_keeps_the_fine_tuned_policy_near_its_init(pn, tmp_path):
  bc_params = _bc_checkpoint(pn, tmp_path / "bc")
  msgs = [schemas.make("ReplayBatch", "replay", i, arrays=_bandit_batch(pn, pn.init_flat(), jax.random.PRNGKey(i)),
                       table="trajectories", params_version=0) for i in range(6)]
  kls = {}
  for coef in (0.0, 10.0):
    cfg = dataclasses.replace(CFG, init_from=str(tmp_path / "bc"), ref_kl_coef=coef, checkpoint_every=0)
    lrn, _ = _learner(pn, tmp_path / f"ppo{coef}", cfg)
    for msg in msgs:
      metrics = lrn.learn(msg)
    assert ("ref_kl" in metrics) == (coef > 0)
    obs = lrn.algo.to_batch(msgs[0].arrays).obs
    logits = pn.agent.apply(lrn.state.params, obs)[0]
    ref = pn.agent.apply(bc_params, obs)[0]
    kls[coef] = float(jnp.mean(heads.kl_divergence(ref, logits)))
    lrn.rt.ctx.term()
  assert kls[0.0] > 1e-3, kls  # PPO alone moves the policy away from its init
  assert kls[10.0] < 0.25 * kls[0.0], kls
