"""Behavioural cloning of the policy AND the value (paper 002, sec. 3.4.2).

  L_pi = mean(-log pi(a_expert | s))     (factorised heads: log pi = sum of the heads' log-probs)
  L_V  = mean((V(s_t) - G_t)^2),  G_t = r_t + discount_t G_{t+1},  G_T = bootstrap
  L    = L_pi + value_coef L_V

The returns G_t come from replaying the log through the reward (`discounted_returns`, time-major). Pre-training the
value alongside the policy keeps the first PPO updates from wrecking the cloned policy with an untrained critic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

from shared.nets import heads

Array = jax.Array
Params = Any
Metrics = dict[str, Array]
ApplyFn = Callable[[Params, Any], tuple[heads.Logits, Array]]
LossFn = Callable[[Params, "BCBatch", Array], tuple[Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class BCConfig:
  """BC loss weights.

  Attributes:
    value_coef: weight of the value MSE (paper 002 used 1e-4 with its unnormalised returns).
  """

  value_coef: float = 0.5


@flax.struct.dataclass
class BCBatch:
  """Expert samples, leading axes (...).

  Attributes:
    obs: network input pytree with leading axes (...).
    actions: (..., H) int32 expert actions (from inverse dynamics), one index per policy head.
    returns: (...) discounted returns G_t of the replayed log.
    mask: (...) float32, 1 where the expert action is valid (both log steps present).
  """

  obs: Any
  actions: Array
  returns: Array
  mask: Array


def discounted_returns(r_t: Array, discount_t: Array, bootstrap: Array) -> Array:
  """G_t = r_t + discount_t G_{t+1} with G_T = bootstrap, by reverse scan.

  Args:
    r_t: (T, ...) rewards of the replayed log.
    discount_t: (T, ...) gamma * (1 - terminated_t).
    bootstrap: (...) value after the last step (0 when the log ends the episode).

  Returns:
    (T, ...) returns.
  """
  chex.assert_equal_shape([r_t, discount_t])
  chex.assert_shape(bootstrap, r_t.shape[1:])

  def backward(carry: Array, xs: tuple[Array, Array]) -> tuple[Array, Array]:
    r, discount = xs
    g = r + discount * carry
    return g, g

  _, returns = jax.lax.scan(backward, bootstrap.astype(r_t.dtype), (r_t, discount_t), reverse=True)
  return returns


def _masked_mean(x: Array, mask: Array) -> Array:
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def policy_loss(logits: heads.Logits, actions: Array, mask: Array) -> Array:
  """Cross-entropy of the expert actions, () scalar."""
  return _masked_mean(-heads.log_prob(logits, actions), mask.astype(jnp.float32))


def value_loss(values: Array, returns: Array, mask: Array) -> Array:
  """Mean squared error to the discounted returns, () scalar."""
  chex.assert_equal_shape([values, returns, mask])
  return _masked_mean(jnp.square(values - jax.lax.stop_gradient(returns)), mask.astype(jnp.float32))


def make_bc_loss(config: BCConfig, apply_fn: ApplyFn) -> LossFn:
  """loss_fn(params, batch: BCBatch, rng) -> (loss, metrics incl. action accuracy over all heads)."""

  def loss_fn(params: Params, batch: BCBatch, rng: Array) -> tuple[Array, Metrics]:
    del rng
    logits, values = apply_fn(params, batch.obs)
    mask = batch.mask.astype(jnp.float32)
    pi_loss = policy_loss(logits, batch.actions, mask)
    v_loss = value_loss(values, batch.returns, mask)
    correct = jnp.all(heads.greedy(logits) == batch.actions, axis=-1).astype(jnp.float32)
    metrics = {"policy_loss": pi_loss, "value_loss": v_loss, "accuracy": _masked_mean(correct, mask)}
    return pi_loss + config.value_coef * v_loss, metrics

  return loss_fn
