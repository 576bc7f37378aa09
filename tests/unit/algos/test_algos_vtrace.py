"""V-trace: rlax golden values, an independent numpy reference, hand numbers, on-policy == GAE, clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from shared.algos import gae
from shared.algos import vtrace

# rlax vtrace_test.py, batch-major (B=2, T=4).
BEHAVIOUR_LOGITS = np.array(
    [[[8.9, 0.7], [5.0, 1.0], [0.6, 0.1], [-0.9, -0.1]], [[0.3, -5.0], [1.0, -8.0], [0.3, 1.7], [4.7, 3.3]]],
    np.float32)
TARGET_LOGITS = np.array(
    [[[0.4, 0.5], [9.2, 8.8], [0.7, 4.4], [7.9, 1.4]], [[1.0, 0.9], [1.0, -1.0], [-4.3, 8.7], [0.8, 0.3]]],
    np.float32)
ACTIONS = np.array([[0, 1, 0, 0], [1, 0, 0, 1]], np.int32)
REWARDS = np.array([[-1.3, -1.3, 2.3, 42.0], [1.3, 5.3, -3.3, -5.0]], np.float32)
DISCOUNTS = np.array([[0.0, 0.89, 0.85, 0.99], [0.88, 1.0, 0.83, 0.95]], np.float32)
VALUES = np.array([[2.1, 1.1, -3.1, 0.0], [3.1, 0.1, -1.1, 7.4]], np.float32)
BOOTSTRAP = np.array([8.4, -1.2], np.float32)
EXPECTED_ERRORS = np.array(
    [[-1.6155143, -3.4973226, 1.8670533, 5.0316002e1], [1.4662437, 3.6116405, -8.3327293e-5, -1.3540000e1]])
EXPECTED_PG = np.array(
    [[-1.6155143, -3.4973226, 1.8670534, 5.0316002e1], [1.4662433, 3.6116405, -8.3369283e-05, -1.3540000e1]])


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _log_rho():
  pick = lambda logits: np.take_along_axis(_log_softmax(logits), ACTIONS[..., None], -1)[..., 0]  # noqa: E731
  return pick(TARGET_LOGITS.astype(np.float64)) - pick(BEHAVIOUR_LOGITS.astype(np.float64))


def _time_major_inputs():
  v_t = np.concatenate([VALUES[:, 1:], BOOTSTRAP[:, None]], axis=1)
  return [jnp.asarray(x.T, jnp.float32) for x in (REWARDS, DISCOUNTS, VALUES, v_t, _log_rho())]


def _vtrace_reference(r, disc, v_tm1, v_t, log_rho, lam, clip_rho, clip_pg_rho):
  """Plain numpy IMPALA equations, written from the paper with an explicit loop (float64)."""
  r, disc, v_tm1, v_t, log_rho = (np.asarray(x, np.float64) for x in (r, disc, v_tm1, v_t, log_rho))
  rho = np.exp(log_rho)
  t_len = r.shape[0]
  vs = np.zeros_like(r)
  vs_next = v_t[-1]
  for t in reversed(range(t_len)):
    delta = min(clip_rho, rho[t]) * (r[t] + disc[t] * v_t[t] - v_tm1[t])
    vs[t] = v_tm1[t] + delta + disc[t] * lam * min(1.0, rho[t]) * (vs_next - v_t[t])
    vs_next = vs[t]
  vs_tp1 = np.append(vs[1:], v_t[-1])
  q = r + disc * (lam * vs_tp1 + (1 - lam) * v_t)
  return vs, np.minimum(clip_pg_rho, rho) * (q - v_tm1)


def test_vtrace_rlax_golden_values():
  r, disc, v_tm1, v_t, log_rho = _time_major_inputs()
  out = vtrace.vtrace(r, disc, v_tm1, v_t, log_rho, lambda_=1.0, clip_rho=1.0, clip_pg_rho=1.0)
  np.testing.assert_allclose(np.asarray(out.errors).T, EXPECTED_ERRORS, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(out.vs - v_tm1).T, EXPECTED_ERRORS, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(out.pg_advantages).T, EXPECTED_PG, rtol=1e-3)


def test_vtrace_matches_numpy_reference():
  rng = np.random.default_rng(1)
  for lam, clip_rho, clip_pg_rho in [(1.0, 1.0, 1.0), (0.8, 1.0, 5.0), (0.5, 2.0, 1.5)]:
    r, disc, v_tm1, v_t, log_rho = _time_major_inputs()
    log_rho = log_rho + jnp.asarray(rng.normal(scale=0.5, size=log_rho.shape), jnp.float32)
    out = vtrace.vtrace(r, disc, v_tm1, v_t, log_rho, lam, clip_rho, clip_pg_rho)
    for b in range(2):
      vs, pg = _vtrace_reference(r[:, b], disc[:, b], v_tm1[:, b], v_t[:, b], log_rho[:, b], lam, clip_rho,
                                 clip_pg_rho)
      np.testing.assert_allclose(np.asarray(out.vs[:, b]), vs, rtol=1e-5, atol=1e-4)
      np.testing.assert_allclose(np.asarray(out.pg_advantages[:, b]), pg, rtol=1e-5, atol=1e-4)


def test_vtrace_hand_computed():
  # rho = [2, .5]; rho_bar = [1, .5]; c = [1, .5].
  # err_1 = .5 (2 + .5*3 - 1) = 1.25;  err_0 = 1 (1 + .5*1 - 0) + .5*1*1.25 = 2.125;  vs = [2.125, 2.25]
  # q_1 = 2 + .5*3 = 3.5, pg_1 = .5 (3.5 - 1) = 1.25;  q_0 = 1 + .5 (1 + 1.25) = 2.125, pg_0 = min(1, 2) 2.125
  args = (jnp.array([1.0, 2.0]), jnp.array([0.5, 0.5]), jnp.array([0.0, 1.0]), jnp.array([1.0, 3.0]),
          jnp.log(jnp.array([2.0, 0.5])))
  out = vtrace.vtrace(*args, lambda_=1.0, clip_rho=1.0, clip_pg_rho=1.0)
  np.testing.assert_allclose(out.vs, [2.125, 2.25], rtol=1e-6)
  np.testing.assert_allclose(out.pg_advantages, [2.125, 1.25], rtol=1e-6)
  # clip_pg_rho = 1.5 scales pg_0 by 1.5: 3.1875. clip_rho = 2: td_0 = 2 * 1.5 = 3, err_0 = 3 + .625 = 3.625.
  out = vtrace.vtrace(*args, lambda_=1.0, clip_rho=2.0, clip_pg_rho=1.5)
  np.testing.assert_allclose(out.vs[0], 3.625, rtol=1e-6)
  # q_0 = 1 + .5 (1 + err_1) with err_1 unchanged (rho_1 = .5 < both clips): 2.125; pg_0 = 1.5 * 2.125.
  np.testing.assert_allclose(out.pg_advantages[0], 3.1875, rtol=1e-6)


def test_on_policy_vtrace_equals_gae():
  rng = np.random.default_rng(2)
  t, b = 13, 4
  r = jnp.asarray(rng.normal(size=(t, b)), jnp.float32)
  terminated = jnp.asarray(rng.random((t, b)) < 0.15)
  truncated = jnp.asarray(rng.random((t, b)) < 0.1)
  v_tm1 = jnp.asarray(rng.normal(size=(t, b)), jnp.float32)
  v_t = jnp.asarray(rng.normal(size=(t, b)), jnp.float32)
  for lam in (1.0, 0.9, 0.5):
    disc, lam_t = gae.episode_discounts(terminated, truncated, 0.99, lam)
    out = vtrace.vtrace(r, disc, v_tm1, v_t, jnp.zeros((t, b)), lam_t, clip_rho=1.0, clip_pg_rho=1.0)
    advantages = gae.gae_advantages(r, disc, v_tm1, v_t, lam_t)
    np.testing.assert_allclose(out.vs - v_tm1, advantages, atol=1e-6)


def test_vtrace_weights_follow_clip_thresholds():
  r, disc, v_tm1, v_t = jnp.array([1.0]), jnp.array([0.9]), jnp.array([0.5]), jnp.array([2.0])
  td = 1.0 + 0.9 * 2.0 - 0.5  # 2.3
  for rho in (0.25, 3.0, 5.0):
    out = vtrace.vtrace(r, disc, v_tm1, v_t, jnp.log(jnp.array([rho])), 1.0, clip_rho=2.0, clip_pg_rho=4.0)
    np.testing.assert_allclose(out.errors[0], min(2.0, rho) * td, rtol=1e-5)
    np.testing.assert_allclose(out.pg_advantages[0], min(4.0, rho) * td, rtol=1e-5)


def test_vtrace_trace_coefficient_is_capped_at_one():
  # rho_0 = 3 > 1: the trace c_0 = lambda min(1, rho_0) = 1 even with clip_rho = 10.
  out = vtrace.vtrace(jnp.array([0.0, 1.0]), jnp.array([1.0, 1.0]), jnp.zeros(2), jnp.zeros(2),
                      jnp.log(jnp.array([3.0, 1.0])), 1.0, clip_rho=10.0, clip_pg_rho=10.0)
  # err_1 = 1; err_0 = 3 * 0 + 1 * 1 * 1 = 1.
  np.testing.assert_allclose(out.errors, [1.0, 1.0], rtol=1e-6)


def test_vtrace_stops_gradients():
  def total(v):
    return jnp.sum(vtrace.vtrace(jnp.ones(3), jnp.ones(3) * 0.9, v, v, jnp.zeros(3)).vs)
  np.testing.assert_array_equal(jax.grad(total)(jnp.ones(3)), np.zeros(3))
