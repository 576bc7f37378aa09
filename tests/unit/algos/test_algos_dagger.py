"""BC with DAgger-style collection (FusedConfig.dagger): the policy drives some steps, the grid expert labels every
visited state. Two synthetic scenes, up to 4 controlled vehicles, 8 steps, a tiny untrained MLP (near-uniform
actions, so wherever it drives, the cars leave the expert's path)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.algos import agent as agent_lib
from shared.algos import fused
from shared.nets import actor_critic, heads
from shared.scenes import synthetic, types
from shared.sim import env

ECFG = env.EnvConfig(control_mode="all", max_controlled=4)
STEPS = 8


def test_dagger_must_be_a_probability():
  with pytest.raises(ValueError, match="dagger"):
    fused.FusedConfig(algo="bc", dagger=1.5)


def test_dagger_share_ramps_up_linearly():
  assert fused.dagger_probability(fused.FusedConfig(algo="bc"), 5) == 0.0  # plain BC: a static 0, no policy
  assert fused.dagger_probability(fused.FusedConfig(algo="bc", dagger=0.4), 5) == 0.4
  ramp = fused.FusedConfig(algo="bc", dagger=0.4, dagger_ramp_iters=10)
  got = [float(fused.dagger_probability(ramp, jnp.int32(i))) for i in (0, 5, 10, 50)]
  np.testing.assert_allclose(got, [0.0, 0.2, 0.4, 0.4], rtol=1e-6)


def test_policy_drives_and_the_expert_labels():
  scenes = [sc for sc, _ in synthetic.generate_many(2, seed=7)]
  pool = jax.tree.map(jnp.asarray, types.stack(scenes))
  agent = agent_lib.make_agent(actor_critic.preset("tiny", "mlp"), ECFG.actions)
  params = agent.host_init(0, fused.observation_example(scenes[0], ECFG))
  cfg = fused.FusedConfig(env=ECFG, algo="bc", num_scenes=2, num_steps=STEPS)

  @jax.jit
  def both(p, sc, k):
    return (fused.collect(agent, cfg, p, sc, k, expert=True),
            fused.collect(agent, cfg, p, sc, k, expert=True, dagger=1.0))

  expert, mixed = jax.tree.map(np.asarray, both(params, pool, jax.random.PRNGKey(0)))
  acting0 = expert.acting[0]
  assert acting0.sum() > 0 and np.array_equal(mixed.acting[0], acting0)
  # Same reset state: the expert's first labels are the same whoever drives.
  np.testing.assert_array_equal(mixed.factors[0][acting0], expert.factors[0][acting0])
  # The untrained policy drove: the controlled cars end elsewhere than under the expert ...
  moved = np.hypot(mixed.final.objects.x - expert.final.objects.x, mixed.final.objects.y - expert.final.objects.y)
  assert moved[expert.controlled0].max() > 0.5
  # ... so the expert labels correct the drift: later labels differ from the expert-driven run's ...
  later = expert.acting[1:] & mixed.acting[1:]
  assert np.any(np.any(mixed.factors[1:] != expert.factors[1:], axis=-1) & later)
  # ... and are still labels (valid, on the visited states of acting cars).
  assert mixed.label_ok.sum() > 0 and not np.any(mixed.label_ok & ~mixed.acting)
  # Cars the env replays from the log are untouched by who drives the controlled ones.
  replayed = ~expert.controlled0 & np.asarray(pool.objects.valid[..., ECFG.init_step + STEPS])
  np.testing.assert_allclose(mixed.final.objects.x[replayed], expert.final.objects.x[replayed])


def test_ppo_kl_to_a_frozen_reference_keeps_the_policy_near_it():
  """PPO with ref_kl_coef > 0 and the initial params as the reference: after a few large-step updates the policy
  stays much nearer the reference (KL on the visited states) than the same updates without the term."""
  from shared.algos import ppo, ppo_update, training

  scenes = [sc for sc, _ in synthetic.generate_many(2, seed=7)]
  agent = agent_lib.make_agent(actor_critic.preset("tiny", "mlp"), ECFG.actions)
  params = agent.host_init(0, fused.observation_example(scenes[0], ECFG))

  def drift(coef):
    up = ppo_update.PPOUpdateConfig(ppo=ppo.PPOConfig(ref_kl_coef=coef, entropy_coef=0.0),
                                    optimizer=training.OptimizerConfig(learning_rate=1e-2), num_minibatches=1)
    cfg = fused.FusedConfig(env=ECFG, algo="ppo", num_scenes=2, num_steps=STEPS, learner=up)
    carry = fused.init_carry(agent, cfg, scenes, jax.random.PRNGKey(0), params,
                             reference_params=params if coef > 0 else None)
    step = fused.make_train_iteration(agent, cfg)
    for _ in range(3):
      carry, metrics = step(carry)
    c = fused.collect(agent, cfg, carry.train.params, carry.scenes, jax.random.PRNGKey(1), expert=False)
    obs = jax.tree.map(lambda x: x[:STEPS], c.obs)
    kl = heads.kl_divergence(agent.apply(params, obs)[0], agent.apply(carry.train.params, obs)[0])
    return float(jnp.sum(kl * c.acting) / jnp.sum(c.acting)), {k: float(v) for k, v in metrics.items()}

  free, m_free = drift(0.0)
  held, m_held = drift(10.0)
  assert "ref_kl" in m_held and "ref_kl" not in m_free and np.isfinite(m_held["ref_kl"])
  assert free > 0.05 and held < 0.25 * free, (free, held)
  # The term needs the reference's params.
  up = ppo_update.PPOUpdateConfig(ppo=ppo.PPOConfig(ref_kl_coef=1.0))
  cfg = fused.FusedConfig(env=ECFG, algo="ppo", num_scenes=2, num_steps=STEPS, learner=up)
  with pytest.raises(ValueError, match="reference"):
    fused.make_train_iteration(agent, cfg)(fused.init_carry(agent, cfg, scenes, jax.random.PRNGKey(0), params))
