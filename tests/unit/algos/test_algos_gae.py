"""GAE: rlax golden values, scan == Python loop, truncation bootstraps while termination does not."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from shared.algos import gae

# rlax multistep_test.py, batch-major (B=2, T=5); values have T+1 entries.
R = np.array([[0.0, 0.0, 1.0, 0.0, -0.5], [0.0, 0.0, 0.0, 0.0, 1.0]], np.float32)
V = np.array([[1.0, 4.0, -3.0, -2.0, -1.0, -1.0], [-3.0, -2.0, -1.0, 0.0, 5.0, -1.0]], np.float32)
DISC = np.array([[0.99] * 5, [0.9, 0.9, 0.9, 0.0, 0.9]], np.float32)
EXPECTED = {
    1.0: [[-1.45118, -4.4557, 2.5396, 0.5249, -0.49], [3.0, 2.0, 1.0, 0.0, -4.9]],
    0.7: [[-0.676979, -5.248167, 2.4846, 0.6704, -0.49], [2.2899, 1.73, 1.0, 0.0, -4.9]],
}


@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_gae_golden_values(lam):
  # Time-major: transpose (B, T) -> (T, B).
  adv = gae.gae_from_values(jnp.asarray(R.T), jnp.asarray(DISC.T), jnp.asarray(V.T), lam)
  np.testing.assert_allclose(np.asarray(adv).T, EXPECTED[lam], rtol=1e-4, atol=1e-4)


def test_gae_hand_computed_last_steps():
  # Row 1, last step: -4.9 = 1 + 0.9 * (-1) - 5. Row 1, t=3 is terminal (disc 0): 0 + 0 * 5 - 0 = 0, and the
  # trace stops there, so t=2: 0 + 0.9 * 0 - (-1) + 0.9 * lam * 0 = 1 for any lambda.
  for lam in (0.0, 0.5, 1.0):
    adv = np.asarray(gae.gae_from_values(jnp.asarray(R.T), jnp.asarray(DISC.T), jnp.asarray(V.T), lam)).T
    np.testing.assert_allclose(adv[1, 2:], [1.0, 0.0, -4.9], atol=1e-6)


def _gae_loop(r, disc, v_tm1, v_t, lam):
  advantages = np.zeros_like(r)
  next_adv = np.zeros_like(r[0])
  for t in reversed(range(r.shape[0])):
    delta = r[t] + disc[t] * v_t[t] - v_tm1[t]
    next_adv = delta + disc[t] * lam[t] * next_adv
    advantages[t] = next_adv
  return advantages


def test_gae_scan_equals_python_loop():
  rng = np.random.default_rng(0)
  t, b = 17, 5
  r = rng.normal(size=(t, b)).astype(np.float32)
  terminated = rng.random((t, b)) < 0.1
  truncated = rng.random((t, b)) < 0.1
  v_tm1 = rng.normal(size=(t, b)).astype(np.float32)
  v_t = rng.normal(size=(t, b)).astype(np.float32)
  disc, lam = gae.episode_discounts(jnp.asarray(terminated), jnp.asarray(truncated), 0.97, 0.9)
  got = gae.gae_advantages(jnp.asarray(r), disc, jnp.asarray(v_tm1), jnp.asarray(v_t), lam)
  want = _gae_loop(r, np.asarray(disc), v_tm1, v_t, np.asarray(lam))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_episode_discounts_truncation_is_not_termination():
  terminated = jnp.array([False, True, False, False])
  truncated = jnp.array([False, False, True, False])
  disc, lam = gae.episode_discounts(terminated, truncated, 0.9, 0.8)
  np.testing.assert_allclose(disc, [0.9, 0.0, 0.9, 0.9])
  np.testing.assert_allclose(lam, [0.8, 0.0, 0.0, 0.8])


def test_truncation_bootstraps_termination_does_not():
  gamma, v_final = 0.9, 3.0
  r = jnp.array([1.0, 2.0])
  v_tm1 = jnp.array([0.5, 0.25])
  v_t = jnp.array([0.25, v_final])  # V(s_T) of the last observation
  flags = jnp.array([False, True])
  none = jnp.zeros(2, bool)
  disc_trunc, lam_trunc = gae.episode_discounts(none, flags, gamma, 0.95)
  disc_term, lam_term = gae.episode_discounts(flags, none, gamma, 0.95)
  adv_trunc = gae.gae_advantages(r, disc_trunc, v_tm1, v_t, lam_trunc)
  adv_term = gae.gae_advantages(r, disc_term, v_tm1, v_t, lam_term)
  # Last step: truncated 2 + 0.9 * 3 - 0.25 = 4.45; terminated 2 - 0.25 = 1.75.
  np.testing.assert_allclose(adv_trunc[-1], 4.45, rtol=1e-6)
  np.testing.assert_allclose(adv_term[-1], 1.75, rtol=1e-6)
  np.testing.assert_allclose(adv_trunc - adv_term, [0.9 * 0.95 * gamma * v_final, gamma * v_final], rtol=1e-5)


def test_truncation_mid_sequence_does_not_leak_next_episode():
  # Step 1 is truncated; steps 2.. belong to the next episode and must not change A_0, A_1.
  r = jnp.array([1.0, 1.0, 100.0, -50.0])
  v_tm1 = jnp.zeros(4)
  v_t = jnp.array([0.0, 2.0, 0.0, 0.0])  # 2.0 = value of the truncated episode's final observation
  disc, lam = gae.episode_discounts(jnp.zeros(4, bool), jnp.array([False, True, False, False]), 0.5, 1.0)
  adv = gae.gae_advantages(r, disc, v_tm1, v_t, lam)
  # A_1 = 1 + 0.5 * 2 = 2; A_0 = 1 + 0.5 * 0 + 0.5 * 1 * 2 = 2.
  np.testing.assert_allclose(adv[:2], [2.0, 2.0], rtol=1e-6)
