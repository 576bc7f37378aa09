"""Generalised advantage estimation (GAE) over time-major trajectories.

Shapes: every array is time-major, (T, ...) with any trailing batch axes. `v_tm1` holds V(s_t) for t = 0..T-1 and
`v_t` holds V(s_{t+1}), the value of the state reached after step t. Keeping the two apart (rather than one (T+1)
array) lets a caller bootstrap a time-limit truncation inside a sequence from the value of the episode's final
observation instead of the value of the state the environment was reset to.

Conventions: `discount_t = gamma * (1 - terminated_t)`, so a termination cuts the bootstrap while a
truncation keeps it. The trace parameter may vary per step: `lambda_t = lambda * (1 - episode_end_t)` stops the
recursion at any episode boundary (termination or truncation) so no advantage leaks across a reset.

  delta_t = r_t + discount_t V(s_{t+1}) - V(s_t)
  A_t     = delta_t + discount_t lambda_t A_{t+1},  A_T = 0
  target_t = A_t + V(s_t)
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array
Numeric = chex.Numeric


def episode_discounts(
    terminated_t: Array, truncated_t: Array, gamma: float, lambda_: float
) -> tuple[Array, Array]:
  """Per-step discount and trace parameter from episode-end flags.

  Args:
    terminated_t: (T, ...) bool, the episode ended in an absorbing state (crash, goal with stop-at-goal).
    truncated_t: (T, ...) bool, the episode was cut by a time limit (or any non-absorbing reset).
    gamma: discount factor.
    lambda_: GAE / V-trace trace parameter.

  Returns:
    discount_t: (T, ...) float32 gamma * (1 - terminated): a truncation still bootstraps.
    lambda_t: (T, ...) float32 lambda * (1 - (terminated | truncated)): traces stop at every episode end.
  """
  chex.assert_equal_shape([terminated_t, truncated_t])
  terminated = terminated_t.astype(jnp.float32)
  ended = jnp.logical_or(terminated_t, truncated_t).astype(jnp.float32)
  return gamma * (1.0 - terminated), lambda_ * (1.0 - ended)


def gae_advantages(
    r_t: Array, discount_t: Array, v_tm1: Array, v_t: Array, lambda_: Numeric = 0.95
) -> Array:
  """GAE(lambda) advantages by a reverse `lax.scan` (gradients stopped: these are regression targets).

  Args:
    r_t: (T, ...) rewards for the transition s_t -> s_{t+1}.
    discount_t: (T, ...) gamma * (1 - terminated_t).
    v_tm1: (T, ...) V(s_t).
    v_t: (T, ...) V(s_{t+1}); at a truncation this must be the value of the final observation.
    lambda_: scalar or (T, ...) per-step trace parameter.

  Returns:
    (T, ...) advantages A_t; add `v_tm1` for the value targets.
  """
  chex.assert_rank(r_t, {1, 2, 3, 4})
  chex.assert_equal_shape([r_t, discount_t, v_tm1, v_t])
  lambda_t = jnp.broadcast_to(jnp.asarray(lambda_, jnp.float32), r_t.shape)
  delta_t = r_t + discount_t * v_t - v_tm1

  def backward(carry: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, Array]:
    delta, discount, lam = xs
    advantage = delta + discount * lam * carry
    return advantage, advantage

  init = jnp.zeros_like(r_t[0])
  _, advantages = jax.lax.scan(backward, init, (delta_t, discount_t, lambda_t), reverse=True)
  return jax.lax.stop_gradient(advantages)


def gae_from_values(r_t: Array, discount_t: Array, values: Array, lambda_: Numeric = 0.95) -> Array:
  """GAE when the sequence has no inner truncation: `values` is (T+1, ...) = V(s_0..s_T).

  Returns:
    (T, ...) advantages.
  """
  chex.assert_axis_dimension(values, 0, r_t.shape[0] + 1)
  return gae_advantages(r_t, discount_t, values[:-1], values[1:], lambda_)
