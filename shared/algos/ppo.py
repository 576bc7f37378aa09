"""PPO: advantage/target computation (GAE, or V-trace for stale actor data) and the clipped loss factory.

  ratio = exp(logp - logp_old);  A normalised per minibatch (masked mean/std)
  L = -mean(min(ratio A, clip(ratio, 1-eps, 1+eps) A))
      + c_v 0.5 mean(max((V - target)^2, (V_clip - target)^2)),  V_clip = V_old + clip(V - V_old, -eps_v, eps_v)
      - c_ent mean(H(pi))
      + c_ref mean(KL(pi_ref || pi))     (only with ref_kl_coef > 0: a frozen reference policy, e.g. the BC one)

Batches are sample-major pytrees with any leading axes (...); `mask` (...) weights every mean so padded agents and
steps after an agent's episode ended count for nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

from shared.algos import gae
from shared.algos import vtrace as vtrace_lib
from shared.nets import heads

Array = jax.Array
Params = Any
Metrics = dict[str, Array]
ApplyFn = Callable[[Params, Any], tuple[heads.Logits, Array]]
LossFn = Callable[[Params, "PPOBatch", Array], tuple[Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """PPO hyperparameters (defaults: the common ones; paper 002 used clip .3, c_v 1e-2, c_ent 3e-2).

  Attributes:
    gamma: discount.
    lambda_: GAE / V-trace trace parameter.
    clip_eps: policy ratio clip.
    value_clip_eps: value clip around V_old; None turns value clipping off.
    value_coef: c_v.
    entropy_coef: c_ent.
    normalize_advantages: normalise advantages per minibatch.
    use_vtrace: targets from V-trace (actor params lag the learner's) instead of GAE.
    clip_rho: V-trace rho_bar threshold.
    clip_pg_rho: V-trace policy-gradient rho threshold.
    ref_kl_coef: c_ref, weight of KL(pi_ref || pi) to a frozen reference policy whose logits the batch carries
      (`ref_logits`): fine-tuning a BC policy with it keeps PPO near the demonstrations' action distribution on the
      states PPO visits (AlphaStar's KL to its supervised policy; paper 002's conclusion proposes such divergence
      terms for keeping the RL policy close to the imitation one). 0 turns it off.
  """

  gamma: float = 0.99
  lambda_: float = 0.95
  clip_eps: float = 0.2
  value_clip_eps: float | None = 0.2
  value_coef: float = 0.5
  entropy_coef: float = 0.01
  normalize_advantages: bool = True
  use_vtrace: bool = False
  clip_rho: float = 1.0
  clip_pg_rho: float = 1.0
  ref_kl_coef: float = 0.0


@flax.struct.dataclass
class PPOBatch:
  """One (mini)batch of samples, leading axes (...).

  Attributes:
    obs: network input pytree (e.g. NetInput) with leading axes (...).
    actions: (..., H) int32 behaviour actions, one index per policy head.
    logp_old: (...) log-probability of `actions` under the behaviour policy.
    v_old: (...) value estimate the targets were computed with (for value clipping).
    advantages: (...) from `compute_targets`.
    targets: (...) value targets from `compute_targets`.
    mask: (...) float32, 1 for real samples.
    ref_logits: the reference policy's logits, one (..., n_i) array per head; needed with ref_kl_coef > 0.
  """

  obs: Any
  actions: Array
  logp_old: Array
  v_old: Array
  advantages: Array
  targets: Array
  mask: Array
  ref_logits: Any = None


def compute_targets(
    config: PPOConfig,
    r_t: Array,
    terminated_t: Array,
    truncated_t: Array,
    v_tm1: Array,
    v_t: Array,
    log_rho_t: Array | None = None,
) -> tuple[Array, Array]:
  """Advantages and value targets for a time-major trajectory (T, ...).

  Args:
    config: gamma, lambda_, and whether to use V-trace.
    r_t, terminated_t, truncated_t: (T, ...) rewards and episode-end flags of each transition.
    v_tm1: (T, ...) V(s_t); v_t: (T, ...) V(s_{t+1}) (final-observation value at a truncation).
    log_rho_t: (T, ...) log pi_learner(a_t|s_t) - log pi_behaviour(a_t|s_t); required with use_vtrace.

  Returns:
    advantages, targets: (T, ...) each, gradients stopped.
  """
  chex.assert_equal_shape([r_t, terminated_t, truncated_t, v_tm1, v_t])
  discount_t, lambda_t = gae.episode_discounts(terminated_t, truncated_t, config.gamma, config.lambda_)
  if config.use_vtrace:
    if log_rho_t is None:
      raise ValueError("use_vtrace needs log_rho_t")
    out = vtrace_lib.vtrace(r_t, discount_t, v_tm1, v_t, log_rho_t, lambda_t, config.clip_rho, config.clip_pg_rho)
    return out.pg_advantages, out.vs
  advantages = gae.gae_advantages(r_t, discount_t, v_tm1, v_t, lambda_t)
  return advantages, jax.lax.stop_gradient(advantages + v_tm1)


def masked_mean(x: Array, mask: Array) -> Array:
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def normalize(x: Array, mask: Array) -> Array:
  mean = masked_mean(x, mask)
  std = jnp.sqrt(masked_mean(jnp.square(x - mean), mask))
  return (x - mean) / (std + 1e-8)


def ppo_loss_terms(
    config: PPOConfig,
    logp: Array,
    logp_old: Array,
    entropy: Array,
    value: Array,
    v_old: Array,
    advantages: Array,
    targets: Array,
    mask: Array,
    ref_kl: Array | None = None,
) -> tuple[Array, Metrics]:
  """The clipped PPO objective from per-sample quantities, all (...) arrays of one shape; `ref_kl` is
  KL(pi_ref || pi) per sample, required with config.ref_kl_coef > 0."""
  chex.assert_equal_shape([logp, logp_old, entropy, value, v_old, advantages, targets, mask])
  mask = mask.astype(jnp.float32)
  advantages = jax.lax.stop_gradient(advantages)
  if config.normalize_advantages:
    advantages = normalize(advantages, mask)
  log_ratio = logp - logp_old
  ratio = jnp.exp(log_ratio)
  clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
  policy_loss = -masked_mean(jnp.minimum(ratio * advantages, clipped_ratio * advantages), mask)

  value_error = jnp.square(value - targets)
  if config.value_clip_eps is not None:
    v_clipped = v_old + jnp.clip(value - v_old, -config.value_clip_eps, config.value_clip_eps)
    value_error = jnp.maximum(value_error, jnp.square(v_clipped - targets))
  value_loss = 0.5 * masked_mean(value_error, mask)
  mean_entropy = masked_mean(entropy, mask)

  loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * mean_entropy
  metrics = {
      "policy_loss": policy_loss,
      "value_loss": value_loss,
      "entropy": mean_entropy,
      "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
      "clip_fraction": masked_mean((jnp.abs(ratio - 1.0) > config.clip_eps).astype(jnp.float32), mask),
  }
  if config.ref_kl_coef > 0:
    if ref_kl is None:
      raise ValueError("PPOConfig.ref_kl_coef > 0 needs the reference policy's KL per sample (PPOBatch.ref_logits)")
    chex.assert_equal_shape([ref_kl, mask])
    metrics["ref_kl"] = masked_mean(ref_kl, mask)
    loss = loss + config.ref_kl_coef * metrics["ref_kl"]
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def make_ppo_loss(config: PPOConfig, apply_fn: ApplyFn) -> LossFn:
  """loss_fn(params, batch: PPOBatch, rng) -> (loss, metrics); `apply_fn(params, obs) -> (logits, value)`."""

  def loss_fn(params: Params, batch: PPOBatch, rng: Array) -> tuple[Array, Metrics]:
    del rng  # the loss is deterministic; the argument keeps one LossFn signature for every learner
    logits, value = apply_fn(params, batch.obs)
    logp = heads.log_prob(logits, batch.actions)
    ref_kl = None
    if config.ref_kl_coef > 0 and batch.ref_logits is not None:
      ref_kl = heads.kl_divergence(jax.lax.stop_gradient(batch.ref_logits), logits)
    return ppo_loss_terms(
        config, logp, batch.logp_old, heads.entropy(logits), value, batch.v_old, batch.advantages, batch.targets,
        batch.mask, ref_kl)

  return loss_fn
