"""V-trace off-policy targets (IMPALA, Espeholt et al. 2018) over time-major trajectories.

Shapes as in `gae.py`: (T, ...) time-major, `v_tm1` = V(s_t), `v_t` = V(s_{t+1}) (final-observation value at a
truncation), `discount_t = gamma * (1 - terminated_t)`, `lambda_` scalar or per step (0 at episode ends).

  rho_t    = exp(log_rho_t) = pi_target(a_t|s_t) / pi_behaviour(a_t|s_t)
  rho_bar_t = min(clip_rho, rho_t);  c_t = lambda_t min(1, rho_t)
  err_t    = rho_bar_t (r_t + discount_t V(s_{t+1}) - V(s_t)) + discount_t c_t err_{t+1},  err_T = 0
  vs_t     = V(s_t) + err_t
  q_t      = r_t + discount_t (lambda_t vs_{t+1} + (1 - lambda_t) V(s_{t+1}))
  pg_adv_t = min(clip_pg_rho, rho_t) (q_t - V(s_t))

vs_{t+1} inside q_t is written as V(s_{t+1}) + err_{t+1}: equal to vs[t+1] inside an episode, equal to the bootstrap
value at the end of the sequence, and weighted by lambda_t = 0 across a boundary. With rho = 1 (on-policy) and
clip_rho >= 1, err_t is exactly GAE(lambda).
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array
Numeric = chex.Numeric


@flax.struct.dataclass
class VTraceOutput:
  """V-trace results, all (T, ...) and gradient-stopped.

  Attributes:
    vs: value targets.
    pg_advantages: policy-gradient advantages min(clip_pg_rho, rho) (q - V).
    q_estimate: the one-step-bootstrapped action values q_t.
    errors: vs - V(s_t).
  """

  vs: Array
  pg_advantages: Array
  q_estimate: Array
  errors: Array


def vtrace(
    r_t: Array,
    discount_t: Array,
    v_tm1: Array,
    v_t: Array,
    log_rho_t: Array,
    lambda_: Numeric = 1.0,
    clip_rho: float = 1.0,
    clip_pg_rho: float = 1.0,
) -> VTraceOutput:
  """V-trace value targets and policy-gradient advantages.

  Args:
    r_t: (T, ...) rewards.
    discount_t: (T, ...) gamma * (1 - terminated).
    v_tm1: (T, ...) V(s_t) under the learner's current params.
    v_t: (T, ...) V(s_{t+1}).
    log_rho_t: (T, ...) log pi_target(a_t|s_t) - log pi_behaviour(a_t|s_t).
    lambda_: scalar or (T, ...) trace parameter.
    clip_rho: rho_bar threshold for the value targets.
    clip_pg_rho: threshold for the policy-gradient importance weight.

  Returns:
    VTraceOutput, gradients stopped everywhere (targets, not differentiable paths).
  """
  chex.assert_rank(r_t, {1, 2, 3, 4})
  chex.assert_equal_shape([r_t, discount_t, v_tm1, v_t, log_rho_t])
  r_t, discount_t, v_tm1, v_t, log_rho_t = jax.lax.stop_gradient((r_t, discount_t, v_tm1, v_t, log_rho_t))
  lambda_t = jnp.broadcast_to(jnp.asarray(lambda_, jnp.float32), r_t.shape)
  rho_t = jnp.exp(log_rho_t)
  rho_bar_t = jnp.minimum(clip_rho, rho_t)
  c_t = lambda_t * jnp.minimum(1.0, rho_t)
  td_t = rho_bar_t * (r_t + discount_t * v_t - v_tm1)

  def backward(carry: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, Array]:
    td, discount, c = xs
    err = td + discount * c * carry
    return err, err

  _, errors = jax.lax.scan(backward, jnp.zeros_like(r_t[0]), (td_t, discount_t, c_t), reverse=True)
  errors_tp1 = jnp.concatenate([errors[1:], jnp.zeros_like(errors[:1])], axis=0)
  q_t = r_t + discount_t * (v_t + lambda_t * errors_tp1)
  pg_advantages = jnp.minimum(clip_pg_rho, rho_t) * (q_t - v_tm1)
  return VTraceOutput(vs=v_tm1 + errors, pg_advantages=pg_advantages, q_estimate=q_t, errors=errors)
