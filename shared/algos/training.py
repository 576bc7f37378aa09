"""One learner = one `TrainingState` and one pure jitted `update_step(state, batch) -> (state, metrics)`.

A loss is any `loss_fn(params, batch, rng) -> (scalar loss, metrics dict)` (the factories in `ppo.py` and `bc.py`
build them). The optimizer is optax: global grad-norm clipping then Adam (eps 1e-5, the PPO implementations'
default). The state is donated to the jitted step, so a caller must not reuse the state it passed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Params = Any
Batch = Any
Metrics = dict[str, Array]
LossFn = Callable[[Params, Batch, Array], tuple[Array, Metrics]]
UpdateStep = Callable[["TrainingState", Batch], tuple["TrainingState", Metrics]]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Adam with gradient clipping.

  Attributes:
    learning_rate: Adam step size (paper 002: 2e-3 for BC, 5.6e-5 for RL at its scale).
    max_grad_norm: global gradient-norm clip.
    adam_eps: Adam epsilon.
  """

  learning_rate: float = 3e-4
  max_grad_norm: float = 0.5
  adam_eps: float = 1e-5


def make_optimizer(config: OptimizerConfig = OptimizerConfig()) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(config.max_grad_norm),
      optax.adam(config.learning_rate, eps=config.adam_eps),
  )


@flax.struct.dataclass
class TrainingState:
  """Everything a learner updates.

  Attributes:
    params: network parameters.
    opt_state: optimizer state.
    step: () int32 gradient steps taken.
    rng: PRNG key, split once per step.
  """

  params: Params
  opt_state: Any
  step: Array
  rng: Array


def init_training_state(params: Params, optimizer: optax.GradientTransformation, rng: Array) -> TrainingState:
  return TrainingState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32), rng=rng)


def _gradient_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> UpdateStep:
  """The un-jitted step: one gradient of `loss_fn` on `batch`, applied."""

  def step(state: TrainingState, batch: Batch) -> tuple[TrainingState, Metrics]:
    rng, loss_rng = jax.random.split(state.rng)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, loss_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return TrainingState(params=params, opt_state=opt_state, step=state.step + 1, rng=rng), metrics

  return step


def make_update_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> UpdateStep:
  """Jitted single gradient step, state donated."""
  return jax.jit(_gradient_step(loss_fn, optimizer), donate_argnums=0)


def make_minibatch_update_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, num_epochs: int, num_minibatches: int
) -> UpdateStep:
  """Jitted PPO-style update: `num_epochs` passes over the batch, each shuffled into `num_minibatches` steps.

  Every leaf of `batch` has the sample axis first (N, ...), N divisible by `num_minibatches`; a learner flattens
  (T, B) sequences to (T * B,) after computing advantages. Metrics are averaged over all gradient steps.
  """
  step = _gradient_step(loss_fn, optimizer)

  def update(state: TrainingState, batch: Batch) -> tuple[TrainingState, Metrics]:
    num_samples = jax.tree.leaves(batch)[0].shape[0]
    if num_samples % num_minibatches:
      raise ValueError(f"{num_samples} samples do not split into {num_minibatches} minibatches")

    def epoch(state: TrainingState, _) -> tuple[TrainingState, Metrics]:
      rng, perm_rng = jax.random.split(state.rng)
      perm = jax.random.permutation(perm_rng, num_samples)
      minibatches = jax.tree.map(
          lambda x: x[perm].reshape((num_minibatches, -1) + x.shape[1:]), batch)
      return jax.lax.scan(step, state.replace(rng=rng), minibatches)

    state, metrics = jax.lax.scan(epoch, state, None, length=num_epochs)
    return state, jax.tree.map(jnp.mean, metrics)

  return jax.jit(update, donate_argnums=0)
