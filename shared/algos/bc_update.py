"""The BC learner's update step: clone the policy AND the value from replayed expert data (paper 002, 3.4.2).

  update_step = make_bc_update_step(agent, BCUpdateConfig())
  state, metrics = update_step(state, demo)      # demo: Demonstration (T, B, ...) time-major

Policy: cross-entropy of the inferred expert grid actions (split into the policy's (accel, steer) heads).
Value: MSE of V(s_t) to G_t = r_t + gamma (1 - terminated_t) G_{t+1}, the discounted return of the replayed log
through the reward function, computed here (once per batch, before the epochs) with G_T = 0: a demonstration
runs to the end of its log, where the value head's remaining time is zero too.
Metrics include `accuracy`: the share of valid samples whose greedy action equals the expert's on every head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from shared.algos import api, bc, distributed, training
from shared.algos.agent import Agent, as_net_input

Array = jax.Array
Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class BCUpdateConfig:
  """BC learner settings.

  Attributes:
    bc: loss weights.
    gamma: discount of the value targets (match the RL discount so the value carries over to PPO).
    optimizer: Adam and gradient clipping (paper 002 used a larger step size for BC than for RL).
    num_epochs: passes over each batch.
    num_minibatches: gradient steps per pass.
  """

  bc: bc.BCConfig = bc.BCConfig()
  gamma: float = 0.99
  optimizer: training.OptimizerConfig = training.OptimizerConfig(learning_rate=1e-3)
  num_epochs: int = 2
  num_minibatches: int = 2


@flax.struct.dataclass
class Demonstration:
  """Expert data replayed through the simulator, time-major (T, ...).

  Attributes:
    obs: NetInput (or Observation) at s_t, (T, ...).
    actions: (T, ..., H) int32 expert per-head action indices (from the inferred grid actions).
    reward: (T, ...) float32 reward of the replayed step.
    terminated: (T, ...) bool, the replayed episode ended at this step.
    mask: (T, ...) float32, 1 where the expert action is a demonstration (agent acting, log valid at t and t+1).
  """

  obs: Any
  actions: Array
  reward: Array
  terminated: Array
  mask: Array


def demonstration_batch(config: BCUpdateConfig, demo: Demonstration) -> bc.BCBatch:
  """BCBatch (T, ...) with the discounted returns of the replayed log."""
  chex.assert_equal_shape([demo.reward, demo.terminated, demo.mask])
  discount_t = config.gamma * (1.0 - demo.terminated.astype(jnp.float32))
  returns = bc.discounted_returns(demo.reward.astype(jnp.float32), discount_t, jnp.zeros_like(demo.reward[0]))
  return bc.BCBatch(obs=as_net_input(demo.obs), actions=demo.actions, returns=returns,
                    mask=demo.mask.astype(jnp.float32))


def make_bc_update_fn(agent: Agent, config: BCUpdateConfig = BCUpdateConfig(), axis_name: str | None = None):
  """Un-jitted `update(state, demo) -> (state, metrics)`; `axis_name` averages gradients across devices."""
  loss_fn = bc.make_bc_loss(config.bc, agent.apply)
  step = distributed.gradient_step(loss_fn, training.make_optimizer(config.optimizer), axis_name)
  epochs = distributed.minibatch_epochs(step, config.num_epochs, config.num_minibatches)

  def update(state: training.TrainingState, demo: Demonstration) -> tuple[training.TrainingState, Metrics]:
    batch = demonstration_batch(config, demo)
    state, metrics = epochs(state, distributed.flatten_samples(batch, batch.mask.ndim))
    samples = jnp.sum(batch.mask)
    if axis_name is not None:
      samples = jax.lax.pmean(samples, axis_name)
    return state, dict(metrics, samples=samples)

  return update


def make_bc_update_step(agent: Agent, config: BCUpdateConfig = BCUpdateConfig()):
  """The jitted BC `update_step(state, demo) -> (state, metrics)`, state donated."""
  return jax.jit(make_bc_update_fn(agent, config), donate_argnums=0)


init_state = training.init_state  # (params, config, rng) -> TrainingState, one definition for every learner


# THE BUNDLE (shared.algos.api)

def configure(hyper: api.Hyper) -> BCUpdateConfig:
  base = BCUpdateConfig()
  return hyper.set(dataclasses.replace(base, optimizer=hyper.optimizer(base.optimizer)), gamma="gamma",
                   num_epochs="num_epochs", num_minibatches="num_minibatches")


def from_rollout(c: Any, config: BCUpdateConfig) -> Demonstration:
  """The fused collect loop's record with the grid expert driving (or labelling): its factors are the labels."""
  steps = c.reward.shape[0]
  return Demonstration(obs=jax.tree.map(lambda x: x[:steps], c.obs), actions=c.factors, reward=c.reward,
                       terminated=c.terminated, mask=c.label_ok.astype(jnp.float32))


def from_arrays(pn: Any, arrays: dict) -> Demonstration:
  """A ReplayBatch from the expert table: obs/flat (T, B, F), action (T, B) grid, reward / terminated / valid
  (T, B) -> cross-entropy on the expert's grid actions split into the policy's heads, value regressed on the
  logged return."""
  valid = np.asarray(arrays["valid"], bool)
  terminated = np.asarray(arrays.get("terminated", np.zeros_like(valid)), bool)
  return Demonstration(
      obs=pn.net_input(jnp.asarray(arrays["obs/flat"], jnp.float32)),
      actions=pn.agent.to_factors(jnp.asarray(arrays["action"], jnp.int32)),
      reward=jnp.asarray(arrays["reward"], jnp.float32), terminated=jnp.asarray(terminated),
      mask=jnp.asarray(valid, jnp.float32))


ALGORITHM = api.Algorithm(
    name="bc", config_type=BCUpdateConfig, configure=configure, make_update=make_bc_update_fn,
    from_rollout=from_rollout, from_arrays=from_arrays, acting="expert", replay=(api.Draw("expert"),))


__all__ = ["ALGORITHM", "BCUpdateConfig", "Demonstration", "configure", "demonstration_batch", "from_arrays",
           "from_rollout", "init_state", "make_bc_update_fn", "make_bc_update_step"]
