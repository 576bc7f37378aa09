"""One learner = one `TrainingState` and one pure jitted `update_step(state, batch) -> (state, metrics)`.

A loss is any `loss_fn(params, batch, rng) -> (scalar loss, metrics dict)` (the factories in `ppo.py` and `bc.py`
build them). The optimizer is optax: global grad-norm clipping then Adam (eps 1e-5, the PPO implementations'
default). The state is donated to the jitted step, so a caller must not reuse the state it passed in. The steps
here are `distributed.gradient_step` / `minibatch_epochs` jitted for one device: the code `data_parallel` runs on
a mesh, written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import optax

from shared.algos import distributed

Array = jax.Array
Params = Any
Batch = Any
Metrics = dict[str, Array]
LossFn = Callable[[Params, Batch, Array], tuple[Array, Metrics]]
UpdateStep = Callable[["TrainingState", Batch], tuple["TrainingState", Metrics]]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Adam with gradient clipping, at a constant step size or one that decays.

  Attributes:
    learning_rate: Adam step size (paper 002: 2e-3 for BC, 5.6e-5 for RL at its scale).
    max_grad_norm: global gradient-norm clip.
    adam_eps: Adam epsilon.
    decay_steps: 0 (constant step size) or the number of gradient steps over which the step size falls along a
      half cosine from `learning_rate` to `learning_rate * final_fraction`, where it then stays.
    final_fraction: the decayed step size as a fraction of `learning_rate`.
  """

  learning_rate: float = 3e-4
  max_grad_norm: float = 0.5
  adam_eps: float = 1e-5
  decay_steps: int = 0
  final_fraction: float = 0.0

  def __post_init__(self):
    if self.decay_steps < 0 or not 0.0 <= self.final_fraction <= 1.0:
      raise ValueError(f"OptimizerConfig: decay_steps must be >= 0 and final_fraction in [0, 1], got "
                       f"{self.decay_steps} and {self.final_fraction}")

  def schedule(self) -> float | optax.Schedule:
    """The step size: a float when constant, else an optax schedule of the gradient-step count."""
    if self.decay_steps == 0:
      return self.learning_rate
    return optax.cosine_decay_schedule(self.learning_rate, self.decay_steps, alpha=self.final_fraction)


def make_optimizer(config: OptimizerConfig = OptimizerConfig()) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(config.max_grad_norm),
      optax.adam(config.schedule(), eps=config.adam_eps),
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


class HasOptimizer(Protocol):
  """A learner config (`PPOUpdateConfig`, `BCUpdateConfig`, ...) naming its optimizer."""

  optimizer: OptimizerConfig


def init_training_state(params: Params, optimizer: optax.GradientTransformation, rng: Array) -> TrainingState:
  return TrainingState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32), rng=rng)


def init_state(params: Params, config: HasOptimizer, rng: Array) -> TrainingState:
  """The fresh state of a learner configured by `config` (its Adam moments at zero, step 0)."""
  return init_training_state(params, make_optimizer(config.optimizer), rng)


def make_update_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> UpdateStep:
  """Jitted single gradient step (`distributed.gradient_step` on one device), state donated."""
  return jax.jit(distributed.gradient_step(loss_fn, optimizer), donate_argnums=0)


def make_minibatch_update_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, num_epochs: int, num_minibatches: int
) -> UpdateStep:
  """Jitted PPO-style update: `num_epochs` passes over the batch, each shuffled into `num_minibatches` steps
  (`distributed.minibatch_epochs` on one device; a single minibatch keeps the sample order).

  Every leaf of `batch` has the sample axis first (N, ...), N divisible by `num_minibatches`; a learner flattens
  (T, B) sequences to (T * B,) after computing advantages. Metrics are averaged over all gradient steps.
  """
  step = distributed.gradient_step(loss_fn, optimizer)
  return jax.jit(distributed.minibatch_epochs(step, num_epochs, num_minibatches), donate_argnums=0)
