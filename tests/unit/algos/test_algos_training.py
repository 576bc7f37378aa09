"""The optimizer's step size: constant by default, a half cosine to `final_fraction` over `decay_steps` if asked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from shared.algos import training


def _step_sizes(config: training.OptimizerConfig, steps: int) -> np.ndarray:
  """|parameter change| per step under a constant unit gradient: Adam's normalised step is the step size."""
  opt = training.make_optimizer(config)
  params = jnp.zeros(())
  state = opt.init(params)
  grad = jnp.asarray(0.1)  # below the clip norm, so clipping leaves it alone
  sizes = []
  for _ in range(steps):
    updates, state = opt.update(grad, state, params)
    params = optax.apply_updates(params, updates)
    sizes.append(-float(updates))
  return np.asarray(sizes)


def test_constant_step_size_by_default():
  sizes = _step_sizes(training.OptimizerConfig(learning_rate=1e-2), 5)
  np.testing.assert_allclose(sizes, 1e-2, rtol=1e-3)


def test_step_size_decays_along_a_half_cosine_then_stays():
  lr, n, alpha = 1e-2, 10, 0.1
  sizes = _step_sizes(training.OptimizerConfig(learning_rate=lr, decay_steps=n, final_fraction=alpha), 14)
  k = np.arange(14)
  want = lr * (alpha + (1 - alpha) * 0.5 * (1 + np.cos(np.pi * np.minimum(k, n) / n)))
  np.testing.assert_allclose(sizes, want, rtol=1e-3)
  assert sizes[0] == pytest.approx(lr, rel=1e-3) and sizes[-1] == pytest.approx(alpha * lr, rel=1e-3)


@pytest.mark.parametrize("bad", [dict(decay_steps=-1), dict(final_fraction=1.5)])
def test_bad_decay_settings_are_refused(bad):
  with pytest.raises(ValueError, match="decay_steps"):
    training.OptimizerConfig(**bad)


def test_decayed_optimizer_jits_inside_an_update_step():
  loss = lambda p, batch, rng: (jnp.sum(p * batch), {})
  cfg = training.OptimizerConfig(learning_rate=1e-2, decay_steps=4)
  opt = training.make_optimizer(cfg)
  state = training.init_training_state(jnp.zeros(3), opt, jax.random.PRNGKey(0))
  update = training.make_update_step(loss, opt)
  for _ in range(6):
    state, _ = update(state, jnp.full(3, 0.1))
  # steps of 1e-2 * [1, .854, .5, .146, 0, 0] (half cosine over 4 steps, then 0)
  np.testing.assert_allclose(state.params, -1e-2 * (1 + 0.8536 + 0.5 + 0.1464), rtol=1e-3)
