"""Fused path learning tests on a tiny synthetic scene set (4 scenes, 4-8 vehicles, 41-step logs: 30 simulated
steps), a tiny MLP agent, every vehicle controlled (up to 8 per scene).

- BC on the closed-loop grid expert's actions reaches >= 75% greedy grid-action accuracy (of 91 actions) on its
  training scenes (measured 2026-11-22: 0.55 after 40 iterations, 0.67 after 120, 0.81-0.89 from 240 to 400, with
  a dip to 0.78 at 360; steering alone 0.98+; untrained: 0.03).
- PPO from scratch raises the (sampled-policy) goal rate well above the untrained, uniform policy's (measured: the
  uniform policy reaches ~0.30 of goals, PPO ~0.85-0.95 after 300-400 iterations, lr 1e-3): asserted >= 2x the
  uniform rate and >= 0.6.
Both compile the simulator inside the training step (a minute or more on a busy 2-core machine): marked slow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.algos import agent as agent_lib
from shared.algos import bc_update, fused, ppo_update, training
from shared.nets import actor_critic, heads, mlp
from shared.scenes import synthetic, types
from shared.sim import actions, env

T = 41
SCENE_CFG = types.SceneConfig(max_objects=16, max_road_points=2000, num_timesteps=T)
ENV = env.EnvConfig(control_mode="all", max_controlled=8)


@pytest.fixture(scope="module")
def scenes():
  syn = synthetic.SyntheticConfig(num_timesteps=T, num_vehicles=(4, 8))
  return [s for s, _ in synthetic.generate_many(4, 0, syn, SCENE_CFG)]


@pytest.fixture(scope="module")
def agent():
  net = actor_critic.NetConfig(encoder="mlp", mlp=mlp.MLPConfig(hidden=(64,), width=64), head_width=64, head_blocks=1)
  return agent_lib.make_agent(net, actions.ActionGridConfig())


@pytest.mark.slow
def test_bc_reaches_high_grid_action_accuracy_on_its_training_scenes(scenes, agent):
  cfg = fused.FusedConfig(env=ENV, algo="bc", num_scenes=2,
                          learner=bc_update.BCUpdateConfig(num_epochs=2, num_minibatches=2))
  carry = fused.init_carry(agent, cfg, scenes, jax.random.PRNGKey(0))
  iteration = fused.make_train_iteration(agent, cfg)
  history = []
  for _ in range(320):
    carry, metrics = iteration(carry)
    history.append(jax.device_get(metrics))
  assert history[0]["accuracy"] < 0.2  # untrained: near-uniform over 91 actions

  @jax.jit
  def greedy_accuracy(params, pool, rng):
    c = fused.collect(agent, cfg, params, pool, rng, expert=True)
    logits, _ = agent.apply(params, jax.tree.map(lambda x: x[:-1], c.obs))
    correct = jnp.all(heads.greedy(logits) == c.factors, axis=-1) & c.label_ok
    return jnp.sum(correct) / jnp.sum(c.label_ok), jnp.sum(c.label_ok)

  acc, labels = greedy_accuracy(carry.train.params, types.stack(scenes), jax.random.PRNGKey(1))
  assert int(labels) > 300  # every training scene's demonstrations counted
  assert float(acc) >= 0.75, float(acc)
  assert float(history[-1]["value_loss"]) < 0.05  # the value fits the replayed returns too


@pytest.mark.slow
def test_ppo_raises_goal_rate_well_above_a_uniform_policy(scenes, agent):
  cfg = fused.FusedConfig(env=ENV, algo="ppo", num_scenes=4, learner=ppo_update.PPOUpdateConfig(
      num_epochs=4, num_minibatches=2, optimizer=training.OptimizerConfig(learning_rate=1e-3)))
  carry = fused.init_carry(agent, cfg, scenes, jax.random.PRNGKey(0))
  iteration = fused.make_train_iteration(agent, cfg)
  goal, entropy = [], []
  for _ in range(300):
    carry, metrics = iteration(carry)
    m = jax.device_get(metrics)
    goal.append(float(m["goal_rate"]))
    entropy.append(float(m["entropy"]))
  assert entropy[0] > np.log(91) - 0.05  # the first rollouts are the uniform policy's
  uniform = float(np.mean(goal[:3]))
  trained = float(np.mean(goal[-30:]))
  assert 0.1 < uniform < 0.45, goal[:3]
  assert trained >= max(2.0 * uniform, 0.6), (uniform, trained)
