"""PPO: the clipped loss by hand, zero gradient on the clipped side, value clipping, masks, targets, and a short
learning run on a JAX chain task with a factorised (direction x stride) action."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.algos import gae, ppo, training
from shared import nets
from shared.nets import heads

NO_NORM = ppo.PPOConfig(normalize_advantages=False, entropy_coef=0.0, value_coef=0.0, clip_eps=0.2)


def _terms(config, logp, adv, value=None, v_old=None, targets=None, mask=None, entropy=None):
  n = logp.shape[0]
  zeros = jnp.zeros(n)
  return ppo.ppo_loss_terms(
      config, logp, zeros, zeros if entropy is None else entropy, zeros if value is None else value,
      zeros if v_old is None else v_old, adv, zeros if targets is None else targets,
      jnp.ones(n) if mask is None else mask)


def test_policy_loss_hand_computed():
  # ratios e^{log 1.5} = 1.5 and 0.5, advantages +2 and +2:
  # sample 0: min(1.5*2, 1.2*2) = 2.4; sample 1: min(0.5*2, 0.8*2) = 1.0; loss = -(2.4 + 1.0) / 2 = -1.7.
  loss, metrics = _terms(NO_NORM, jnp.log(jnp.array([1.5, 0.5])), jnp.array([2.0, 2.0]))
  np.testing.assert_allclose(loss, -1.7, rtol=1e-6)
  np.testing.assert_allclose(metrics["clip_fraction"], 1.0)


@pytest.mark.parametrize("ratio,adv,clipped", [
    (1.5, 1.0, True), (0.5, 1.0, False), (0.5, -1.0, True), (1.5, -1.0, False), (1.1, 1.0, False)])
def test_gradient_is_zero_only_on_the_clipping_side(ratio, adv, clipped):
  grad = jax.grad(lambda lp: _terms(NO_NORM, lp, jnp.array([adv]))[0])(jnp.log(jnp.array([ratio])))
  if clipped:
    np.testing.assert_array_equal(grad, [0.0])
  else:
    # d/dlogp of -ratio * A = -ratio * A.
    np.testing.assert_allclose(grad, [-ratio * adv], rtol=1e-6)


def test_value_clipping_takes_the_larger_error():
  config = dataclasses.replace(NO_NORM, value_coef=1.0, value_clip_eps=0.2)
  # V = 2, V_old = 0, target = 3: unclipped (2-3)^2 = 1, clipped V_clip = 0.2, (0.2-3)^2 = 7.84; 0.5 * 7.84.
  value, v_old, targets = jnp.array([2.0]), jnp.array([0.0]), jnp.array([3.0])
  loss, metrics = _terms(config, jnp.zeros(1), jnp.zeros(1), value, v_old, targets)
  np.testing.assert_allclose(metrics["value_loss"], 0.5 * 7.84, rtol=1e-6)
  # The larger error is the clipped one, so V gets no gradient.
  grad = jax.grad(lambda v: _terms(config, jnp.zeros(1), jnp.zeros(1), v, v_old, targets)[0])(value)
  np.testing.assert_array_equal(grad, [0.0])
  off = dataclasses.replace(config, value_clip_eps=None)
  _, metrics = _terms(off, jnp.zeros(1), jnp.zeros(1), value, v_old, targets)
  np.testing.assert_allclose(metrics["value_loss"], 0.5, rtol=1e-6)


def test_advantage_normalisation_and_mask():
  config = dataclasses.replace(NO_NORM, normalize_advantages=True)
  logp = jnp.log(jnp.array([1.1, 0.95, 1.0, 3.0]))
  adv = jnp.array([1.0, -2.0, 0.5, 7.0])
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])
  loss, _ = _terms(config, logp, adv, mask=mask)
  # Affine change of the advantages and any change to the masked sample leave the normalised loss unchanged.
  loss2, _ = _terms(config, logp, 3.0 * adv.at[3].set(-100.0) + 5.0, mask=mask)
  np.testing.assert_allclose(loss, loss2, rtol=1e-5)
  # By hand: masked mean 1/6 ... normalised A = (A - m) / s over the three real samples.
  a = np.array([1.0, -2.0, 0.5])
  a = (a - a.mean()) / a.std()
  r = np.array([1.1, 0.95, 1.0])
  np.testing.assert_allclose(loss, -np.mean(np.minimum(r * a, np.clip(r, 0.8, 1.2) * a)), rtol=1e-5)


def test_entropy_bonus_at_uniform_factorised_policy():
  config = ppo.PPOConfig(entropy_coef=1.0, value_coef=0.0, normalize_advantages=False)
  apply_fn = lambda params, obs: ((jnp.zeros((2, 3)), jnp.zeros((2, 2))), jnp.zeros(2))  # noqa: E731
  batch = ppo.PPOBatch(obs=None, actions=jnp.zeros((2, 2), jnp.int32), logp_old=jnp.full(2, -np.log(6.0)),
                       v_old=jnp.zeros(2), advantages=jnp.zeros(2), targets=jnp.zeros(2), mask=jnp.ones(2))
  loss, metrics = ppo.make_ppo_loss(config, apply_fn)(None, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(metrics["entropy"], np.log(3.0) + np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(loss, -np.log(6.0), rtol=1e-6)
  np.testing.assert_allclose(metrics["approx_kl"], 0.0, atol=1e-7)


def test_kl_divergence_of_factorised_policies_hand_computed():
  # head 1: KL([.5, .5] || [.9, .1]) = .5 ln(.5/.9) + .5 ln(.5/.1) = .5 ln(25/9); head 2 is the same in p and q.
  p = (jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.2, 0.8])))
  q = (jnp.log(jnp.array([0.9, 0.1])) + 3.0, jnp.log(jnp.array([0.2, 0.8])))  # logits: shifts do not matter
  np.testing.assert_allclose(heads.kl_divergence(p, q), 0.5 * np.log(25 / 9), rtol=1e-6)
  np.testing.assert_allclose(heads.kl_divergence(p, p), 0.0, atol=1e-7)
  with pytest.raises(ValueError, match="heads"):
    heads.kl_divergence(p, p[:1])


def test_reference_kl_term_adds_its_weighted_kl_and_pulls_toward_the_reference():
  # Every other term is zero (zero advantages, no value or entropy weight): the loss is c_ref KL(pi_ref || pi), and
  # gradient descent on it moves the policy to the reference.
  config = ppo.PPOConfig(entropy_coef=0.0, value_coef=0.0, normalize_advantages=False, ref_kl_coef=2.0)
  apply_fn = lambda params, obs: ((params["a"], params["b"]), jnp.zeros(2))  # noqa: E731
  ref = (jnp.log(jnp.array([[0.7, 0.2, 0.1]] * 2)), jnp.log(jnp.array([[0.4, 0.6]] * 2)))
  batch = ppo.PPOBatch(obs=None, actions=jnp.zeros((2, 2), jnp.int32), logp_old=jnp.zeros(2), v_old=jnp.zeros(2),
                       advantages=jnp.zeros(2), targets=jnp.zeros(2), mask=jnp.ones(2), ref_logits=ref)
  params = {"a": jnp.zeros((2, 3)), "b": jnp.zeros((2, 2))}
  loss_fn = ppo.make_ppo_loss(config, apply_fn)
  loss, metrics = loss_fn(params, batch, jax.random.PRNGKey(0))
  kl = heads.kl_divergence(ref, (params["a"], params["b"]))[0]
  assert kl > 0.1
  np.testing.assert_allclose(metrics["ref_kl"], kl, rtol=1e-6)
  np.testing.assert_allclose(loss, 2.0 * kl, rtol=1e-6)
  grad = jax.jit(jax.grad(lambda p: loss_fn(p, batch, None)[0]))
  for _ in range(300):
    params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grad(params))
  assert loss_fn(params, batch, None)[1]["ref_kl"] < 1e-3
  # Without the reference's logits the term cannot be computed: a clear error, not a silent zero.
  with pytest.raises(ValueError, match="ref_kl_coef"):
    loss_fn(params, batch.replace(ref_logits=None), None)


def test_compute_targets_gae_and_vtrace():
  rng = np.random.default_rng(3)
  t, b = 9, 3
  r = jnp.asarray(rng.normal(size=(t, b)), jnp.float32)
  term = jnp.asarray(rng.random((t, b)) < 0.2)
  trunc = jnp.asarray(rng.random((t, b)) < 0.2)
  v_tm1 = jnp.asarray(rng.normal(size=(t, b)), jnp.float32)
  v_t = jnp.asarray(rng.normal(size=(t, b)), jnp.float32)
  config = ppo.PPOConfig(gamma=0.9, lambda_=0.8)
  adv, targets = ppo.compute_targets(config, r, term, trunc, v_tm1, v_t)
  disc, lam = gae.episode_discounts(term, trunc, 0.9, 0.8)
  np.testing.assert_allclose(adv, gae.gae_advantages(r, disc, v_tm1, v_t, lam), atol=1e-6)
  np.testing.assert_allclose(targets, adv + v_tm1, atol=1e-6)
  vt_config = dataclasses.replace(config, use_vtrace=True)
  vt_adv, vt_targets = ppo.compute_targets(vt_config, r, term, trunc, v_tm1, v_t, jnp.zeros((t, b)))
  np.testing.assert_allclose(vt_targets, targets, atol=1e-5)
  # Off-policy: a large rho at a step is clipped to clip_pg_rho = 1 in the advantage.
  log_rho = jnp.zeros((t, b)).at[-1].set(2.0)
  vt_adv2, _ = ppo.compute_targets(vt_config, r, term, trunc, v_tm1, v_t, log_rho)
  np.testing.assert_allclose(vt_adv2[-1], vt_adv[-1], atol=1e-5)
  with pytest.raises(ValueError):
    ppo.compute_targets(vt_config, r, term, trunc, v_tm1, v_t)


# LEARNING: a chain of 11 cells, start at 0, goal at 10 (+1, terminates), 12-step time limit (truncation), reward
# for progress along the chain.
# Action = (direction in {left, stay, right}) x (stride in {1, 2}); the optimum is right x 2: 5 steps.
CHAIN, LIMIT, T, B = 11, 12, 16, 32


class ToyNet(nn.Module):

  @nn.compact
  def __call__(self, obs):
    h = nn.relu(nn.Dense(64)(obs))
    return heads.PolicyHead((3, 2), width=64, num_blocks=1)(h), heads.ValueHead(64, 1)(h, obs[..., -1:])


def _observe(pos, t):
  return jnp.concatenate([jax.nn.one_hot(pos, CHAIN), (1.0 - t / LIMIT)[..., None]], -1)


def _env_step(pos, t, action):
  stride = action[..., 1] + 1
  new_pos = jnp.clip(pos + (action[..., 0] - 1) * stride, 0, CHAIN - 1)
  terminated = new_pos == CHAIN - 1
  truncated = jnp.logical_and(~terminated, t + 1 >= LIMIT)
  # Progress (1 in total from start to goal) plus 1 at the goal: an undiscounted return of 2 at best.
  reward = (new_pos - pos) / (CHAIN - 1) + terminated.astype(jnp.float32)
  return new_pos, t + 1, reward, terminated, truncated


def _make_collect(model, config):
  @jax.jit
  def collect(params, carry, rng):
    def one_step(carry, rng):
      pos, t = carry
      obs = _observe(pos, t)
      logits, value = model.apply(params, obs)
      action = heads.sample(rng, logits)
      new_pos, new_t, reward, terminated, truncated = _env_step(pos, t, action)
      next_value = model.apply(params, _observe(new_pos, new_t))[1]
      done = terminated | truncated
      carry = (jnp.where(done, 0, new_pos), jnp.where(done, 0, new_t))
      out = (obs, action, heads.log_prob(logits, action), value, next_value, reward, terminated, truncated)
      return carry, out

    carry, traj = jax.lax.scan(one_step, carry, jax.random.split(rng, T))
    obs, actions, logp, v_tm1, v_t, r, term, trunc = traj
    adv, targets = ppo.compute_targets(config, r, term, trunc, v_tm1, v_t)
    flat = lambda x: x.reshape((T * B,) + x.shape[2:])  # noqa: E731
    batch = ppo.PPOBatch(obs=flat(obs), actions=flat(actions), logp_old=flat(logp), v_old=flat(v_tm1),
                         advantages=flat(adv), targets=flat(targets), mask=jnp.ones(T * B))
    return carry, batch, jnp.sum(r) / jnp.maximum(jnp.sum(term | trunc), 1)

  return collect


def _greedy_steps_to_goal(model, params):
  @jax.jit
  def run(params):
    def one_step(carry, _):
      pos, t, done, steps = carry
      action = heads.greedy(model.apply(params, _observe(pos, t))[0])
      pos, t, _, terminated, _ = _env_step(pos, t, action)
      return (pos, t, done | terminated, steps + (~done).astype(jnp.int32)), None
    zero = jnp.zeros((), jnp.int32)
    (_, _, done, steps), _ = jax.lax.scan(one_step, (zero, zero, jnp.array(False), zero), None, length=LIMIT)
    return jnp.where(done, steps, -1)
  return int(run(params))


@pytest.mark.slow
def test_ppo_learns_chain():
  model = ToyNet()
  config = ppo.PPOConfig(gamma=0.95, lambda_=0.9, entropy_coef=0.01)
  optimizer = training.make_optimizer(training.OptimizerConfig(learning_rate=3e-3))
  params = nets.host_init(model, jnp.zeros((1, CHAIN + 1)))
  state = training.init_training_state(params, optimizer, jax.random.PRNGKey(1))
  update = training.make_minibatch_update_step(ppo.make_ppo_loss(config, model.apply), optimizer, 4, 4)
  collect = _make_collect(model, config)
  carry = (jnp.zeros(B, jnp.int32), jnp.zeros(B, jnp.int32))
  rng = jax.random.PRNGKey(2)
  returns = []
  for _ in range(25):  # 25 x 512 = 12.8k environment steps
    rng, key = jax.random.split(rng)
    carry, batch, episode_return = collect(state.params, carry, key)
    state, metrics = update(state, batch)
    returns.append(float(episode_return))
  assert np.isfinite(float(metrics["loss"]))
  assert int(state.step) == 25 * 4 * 4
  # A uniform random policy reaches the goal in ~5% of 12-step episodes (return ~0.3); PPO should always reach it.
  assert returns[0] < 0.7, returns[:3]
  assert np.mean(returns[-5:]) >= 1.9, returns[-5:]
  assert _greedy_steps_to_goal(model, state.params) == 5
