"""BC: cross-entropy equals log(num_actions) at a uniform policy, returns by hand, and a short cloning run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared import nets
from shared.algos import bc, training


@pytest.mark.parametrize("action_dims", [(7, 13), (91,)])
def test_policy_loss_is_log_num_actions_at_uniform(action_dims):
  logits = tuple(jnp.zeros((5, n)) for n in action_dims)
  actions = jnp.stack([jnp.arange(5) % n for n in action_dims], -1)
  loss = bc.policy_loss(logits, actions, jnp.ones(5))
  np.testing.assert_allclose(loss, np.log(91.0), rtol=1e-6)


def test_policy_loss_hand_computed_and_masked():
  # Head logits [log 1, log 3] -> probs [.25, .75]; actions 1 and 0 give -log .75 and -log .25.
  logits = (jnp.log(jnp.array([[1.0, 3.0], [1.0, 3.0], [1.0, 3.0]])),)
  actions = jnp.array([[1], [0], [0]])
  loss = bc.policy_loss(logits, actions, jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(loss, (-np.log(0.75) - np.log(0.25)) / 2, rtol=1e-6)


def test_discounted_returns_equal_hand_reverse_cumulative_sum():
  r = jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, -1.0]])  # (T=3, B=2)
  discount = jnp.array([[0.5, 0.9], [0.5, 0.0], [0.5, 0.9]])
  bootstrap = jnp.array([4.0, 10.0])
  returns = bc.discounted_returns(r, discount, bootstrap)
  # Column 0: G_2 = 3 + .5*4 = 5; G_1 = 2 + .5*5 = 4.5; G_0 = 1 + .5*4.5 = 3.25.
  # Column 1: G_2 = -1 + .9*10 = 8; G_1 = 1 + 0*8 = 1 (terminal); G_0 = 0 + .9*1 = .9.
  np.testing.assert_allclose(returns, [[3.25, 0.9], [4.5, 1.0], [5.0, 8.0]], rtol=1e-6)


def test_discounted_returns_match_paper_sum():
  # G_0 = sum_t gamma^t R(s_t) with no termination and zero bootstrap (paper 002 eq. 1).
  r = jnp.arange(1.0, 7.0)
  returns = bc.discounted_returns(r, jnp.full(6, 0.9), jnp.zeros(()))
  np.testing.assert_allclose(returns[0], sum(0.9**t * (t + 1) for t in range(6)), rtol=1e-6)


def test_value_loss_is_masked_mse():
  loss = bc.value_loss(jnp.array([1.0, 2.0, 5.0]), jnp.array([0.0, 4.0, 0.0]), jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(loss, (1.0 + 4.0) / 2, rtol=1e-6)


SHAPES = nets.InputShapes(ego_features=6, num_agents=4, agent_features=5, num_roads=6, road_features=4,
                          num_route=4, light_features=4)


def _synthetic_dataset(n, seed):
  """Random inputs (numpy: no per-op compiles); the expert's accel index is argmax(ego[:3]), steer argmax(light[:4])."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(size=(n,) + shape).astype(np.float32)  # noqa: E731
  x = nets.NetInput(
      ego=normal(SHAPES.ego_features),
      agents=normal(SHAPES.num_agents, SHAPES.agent_features),
      agents_mask=rng.random((n, SHAPES.num_agents)) < 0.6,
      roads=normal(SHAPES.num_roads, SHAPES.road_features),
      roads_mask=rng.random((n, SHAPES.num_roads)) < 0.8,
      route=normal(SHAPES.num_route, 2),
      light=normal(SHAPES.light_features),
      remaining_time=rng.random((n, 1)).astype(np.float32),
  )
  actions = np.stack([np.argmax(x.ego[:, :3], -1), np.argmax(x.light[:, :4], -1)], -1).astype(np.int32)
  returns = 2.0 * x.remaining_time[:, 0] + x.ego[:, 0]
  return bc.BCBatch(obs=x, actions=actions, returns=returns, mask=np.ones(n, np.float32))


@pytest.mark.slow
def test_bc_reaches_high_accuracy_on_synthetic_expert():
  config = nets.NetConfig(encoder="mlp", mlp=nets.mlp.MLPConfig(hidden=(128,), width=64), action_dims=(3, 4),
                          head_width=64, head_blocks=1)
  model = nets.ActorCritic(config)
  batch = _synthetic_dataset(512, 0)
  params = nets.host_init(model, batch.obs, seed=1)
  optimizer = training.make_optimizer(training.OptimizerConfig(learning_rate=3e-3))
  state = training.init_training_state(params, optimizer, jax.random.PRNGKey(2))
  update = training.make_update_step(bc.make_bc_loss(bc.BCConfig(value_coef=0.5), model.apply), optimizer)
  state, first = update(state, batch)  # metrics are the loss at the incoming (initial) params
  for _ in range(150):
    state, metrics = update(state, batch)
  # Chance accuracy is 1/12; both policy and value losses must fall.
  assert float(first["accuracy"]) < 0.2
  assert float(metrics["accuracy"]) > 0.95, metrics
  assert float(metrics["value_loss"]) < 0.1 * float(first["value_loss"])
  # The untrained cross-entropy is near log(12) = 2.48 (3 x 4 actions); the trained one is far below.
  assert 2.0 < float(first["policy_loss"]) < 4.0, first
  assert float(metrics["policy_loss"]) < 0.3, metrics
