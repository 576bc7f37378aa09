"""The acting bundle and the learners' target plumbing, on a tiny network and hand-made inputs (no simulator).

- grid mapping: a head sample (i_accel, i_steer) is the simulator's row i_accel * num_steer + i_steer;
- greedy = per-head argmax, its log-prob the sum of the heads' max log-softmax; sampling follows the probabilities;
- PPO targets: V-trace with the learner as its own behaviour gives GAE's value targets; a truncation bootstraps
  from V(s_T), a termination does not (hand-computed one-step targets);
- BC targets: a hand reverse cumulative sum with a termination inside.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.algos import agent as agent_lib
from shared.algos import bc_update, ppo, ppo_update
from shared.nets import actor_critic, inputs, mlp
from shared.sim import actions

GRID = actions.ActionGridConfig(accel=(-2.0, 2.0, 3), steer=(-0.3, 0.3, 5))
SHAPES = inputs.InputShapes(num_agents=2, num_roads=4, num_route=3)


@pytest.fixture(scope="module")
def agent():
  net = actor_critic.NetConfig(encoder="mlp", mlp=mlp.MLPConfig(hidden=(16,), width=16), head_width=16, head_blocks=1)
  return agent_lib.make_agent(net, GRID)


def _obs(batch_shape, seed=0):
  rng = np.random.default_rng(seed)
  noisy = lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32) if x.dtype == jnp.float32 else x
  return jax.tree.map(noisy, inputs.dummy_input(SHAPES, batch_shape))


@pytest.fixture(scope="module")
def params(agent):
  p = agent.host_init(3, _obs((1,)))
  # Larger output weights than the near-uniform init, so greedy and sampled actions differ visibly.
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x * 300.0 if "Dense_1" in jax.tree_util.keystr(path) and "policy" in
      jax.tree_util.keystr(path) else x, p)


def test_heads_follow_the_grid_rows(agent):
  assert agent.action_dims == (3, 5)
  factors = jnp.array([[0, 0], [0, 4], [1, 2], [2, 4]])
  rows = agent.to_grid(factors)
  np.testing.assert_array_equal(rows, [0, 4, 7, 14])  # i_accel * 5 + i_steer
  grid = np.asarray(actions.build_grid(GRID))
  np.testing.assert_allclose(grid[np.asarray(rows)], [[-2, -0.3], [-2, 0.3], [0, 0], [2, 0.3]], atol=1e-6)
  np.testing.assert_array_equal(agent.to_factors(rows), factors)


def test_greedy_and_sampled_actions(agent, params):
  obs = _obs((6,), seed=1)
  logits, value = jax.jit(agent.apply)(params, obs)
  greedy = jax.jit(functools.partial(agent.select_action, greedy=True))(params, obs, jax.random.PRNGKey(0))
  assert greedy.action.shape == (6,) and greedy.factors.shape == (6, 2) and greedy.value.shape == (6,)
  np.testing.assert_array_equal(greedy.factors[:, 0], jnp.argmax(logits[0], -1))
  np.testing.assert_array_equal(greedy.factors[:, 1], jnp.argmax(logits[1], -1))
  expected_logp = sum(jnp.max(jax.nn.log_softmax(l, -1), -1) for l in logits)
  np.testing.assert_allclose(greedy.logp, expected_logp, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(agent.value)(params, obs), value, rtol=1e-6)

  # 4000 draws of agent 0: the empirical frequencies of the accel head match its softmax to sampling error.
  keys = jax.random.split(jax.random.PRNGKey(1), 4000)
  draws = jax.jit(jax.vmap(lambda k: agent.select_action(params, jax.tree.map(lambda x: x[:1], obs), k).factors[0]))(
      keys)
  probs = np.asarray(jax.nn.softmax(logits[0][0]))
  freq = np.bincount(np.asarray(draws[:, 0]), minlength=3) / 4000
  assert np.abs(freq - probs).max() < 0.03, (freq, probs)
  assert probs.max() < 0.97  # the test would be vacuous with a deterministic head


def _trajectory(agent, params, reward, terminated, truncated):
  T = reward.shape[0]
  obs = _obs((T + 1, 1), seed=2)
  step = jax.jit(agent.select_action)(params, jax.tree.map(lambda x: x[:T], obs), jax.random.PRNGKey(4))
  return ppo_update.Trajectory(obs=obs, actions=step.factors, behaviour_logp=step.logp, behaviour_value=step.value,
                               reward=reward, terminated=terminated, truncated=truncated,
                               mask=jnp.ones_like(reward)), jax.jit(agent.value)(params, obs)


@functools.lru_cache(maxsize=None)
def _jitted_targets(agent, cfg):
  return jax.jit(functools.partial(ppo_update.trajectory_targets, agent, cfg))


def _targets(agent, cfg, params, traj):
  return _jitted_targets(agent, cfg)(params, traj)


def test_vtrace_on_policy_targets_equal_gae_targets(agent, params):
  T = 5
  reward = jnp.array([[0.0], [0.5], [1.0], [-1.0], [0.2]])
  term = jnp.zeros((T, 1), bool).at[2, 0].set(True)
  traj, _ = _trajectory(agent, params, reward, term, jnp.zeros((T, 1), bool))
  cfg = ppo.PPOConfig(gamma=0.9, lambda_=0.8)
  gae = _targets(agent, cfg, params, traj)
  vt = _targets(agent, dataclasses.replace(cfg, use_vtrace=True), params, traj)
  np.testing.assert_allclose(vt.targets, gae.targets, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(vt.logp_old, traj.behaviour_logp, rtol=1e-5, atol=1e-5)
  assert gae.obs.ego.shape[0] == T


def test_truncation_bootstraps_and_termination_does_not(agent, params):
  cfg = ppo.PPOConfig(gamma=0.9, lambda_=0.95)
  reward = jnp.array([[0.5]])
  for terminated, truncated in ((True, False), (False, True), (False, False)):
    traj, values = _trajectory(agent, params, reward, jnp.array([[terminated]]), jnp.array([[truncated]]))
    batch = _targets(agent, cfg, params, traj)
    # one step: target = r + gamma * V(s_1) unless terminated (then r)
    expected = 0.5 + (0.0 if terminated else 0.9 * float(values[1, 0]))
    assert float(batch.targets[0, 0]) == pytest.approx(expected, abs=1e-5)
    assert float(batch.advantages[0, 0]) == pytest.approx(expected - float(traj.behaviour_value[0, 0]), abs=1e-5)


def test_bc_value_targets_are_discounted_returns_of_the_replayed_log():
  reward = jnp.array([[1.0], [0.0], [2.0], [1.0]])
  term = jnp.array([[False], [True], [False], [False]])
  demo = bc_update.Demonstration(obs=_obs((4, 1)), actions=jnp.zeros((4, 1, 2), jnp.int32), reward=reward,
                                 terminated=term, mask=jnp.ones((4, 1)))
  batch = jax.jit(functools.partial(bc_update.demonstration_batch, bc_update.BCUpdateConfig(gamma=0.5)))(demo)
  # G_3 = 1; G_2 = 2 + .5 * 1 = 2.5; G_1 = 0 (terminated: no bootstrap); G_0 = 1 + .5 * 0 = 1
  np.testing.assert_allclose(batch.returns[:, 0], [1.0, 0.0, 2.5, 1.0], atol=1e-6)
