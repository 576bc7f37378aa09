"""Policy and value heads, and the factorised categorical distribution the policy head parametrises.

A policy over a discrete action grid is either one joint categorical (`action_dims=(A,)`) or a product of
independent categoricals, one per action component (`action_dims=(num_accel, num_steer)`): logits are a tuple with
one (..., n_i) array per head, actions are (..., H) int32 with one index per head. The simulator's grid index is
the row-major flat index of the factors (`factors_to_joint`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Logits = tuple[Array, ...]
# Output layers are named `logits_<head>` so host-side initialisation can give them the same small scale.
LOGITS_LAYER_PREFIX = "logits_"


class ResidualBlock(nn.Module):
  """Pre-LayerNorm dense residual block: x + W2 relu(W1 LN(x))."""

  width: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.Dense(self.width)(nn.LayerNorm()(x))
    h = nn.Dense(self.width)(nn.relu(h))
    return x + h


class PolicyHead(nn.Module):
  """Embedding (..., D) -> one logits array (..., n_i) per action component, each from its own residual stack.

  Attributes:
    action_dims: sizes of the action components, e.g. (7, 13) factorised or (91,) joint.
    width: hidden width of the residual blocks.
    num_blocks: residual blocks per component.
  """

  action_dims: tuple[int, ...]
  width: int = 128
  num_blocks: int = 2

  @nn.compact
  def __call__(self, embedding: Array) -> Logits:
    logits = []
    for i, n in enumerate(self.action_dims):
      h = nn.Dense(self.width)(embedding)
      for _ in range(self.num_blocks):
        h = ResidualBlock(self.width)(h)
      # Small output init: the untrained policy starts near uniform, so early PPO ratios stay well-behaved.
      output = nn.Dense(n, kernel_init=nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal"),
                        name=f"{LOGITS_LAYER_PREFIX}{i}")
      logits.append(output(nn.relu(nn.LayerNorm()(h))))
    return tuple(logits)


class ValueHead(nn.Module):
  """(embedding (..., D), remaining_time (..., 1)) -> value (...,).

  Only this head sees remaining time (paper 002, 3.3.1: a policy that sees it learns to exploit the episode end).

  Attributes:
    width: hidden width.
    num_blocks: residual blocks.
    time_features: width of the remaining-time embedding.
  """

  width: int = 128
  num_blocks: int = 2
  time_features: int = 16

  @nn.compact
  def __call__(self, embedding: Array, remaining_time: Array) -> Array:
    time_embedding = nn.relu(nn.Dense(self.time_features)(remaining_time))
    h = nn.Dense(self.width)(jnp.concatenate([embedding, time_embedding], axis=-1))
    for _ in range(self.num_blocks):
      h = ResidualBlock(self.width)(h)
    return nn.Dense(1)(nn.relu(nn.LayerNorm()(h)))[..., 0]


# DISTRIBUTION: a product of independent categoricals given the state.

def log_prob(logits: Sequence[Array], actions: Array) -> Array:
  """log pi(a|s) = sum over heads of log softmax(logits_i)[a_i].

  Args:
    logits: one (..., n_i) array per head.
    actions: (..., H) int, H = len(logits).

  Returns:
    (...,) log-probabilities.
  """
  if actions.shape[-1] != len(logits):
    raise ValueError(f"actions have {actions.shape[-1]} components, policy has {len(logits)} heads")
  total = 0.0
  for i, head in enumerate(logits):
    logp = jax.nn.log_softmax(head, axis=-1)
    total = total + jnp.take_along_axis(logp, actions[..., i : i + 1].astype(jnp.int32), axis=-1)[..., 0]
  return total


def entropy(logits: Sequence[Array]) -> Array:
  """Entropy of the product distribution = sum of the heads' entropies, (...,)."""
  total = 0.0
  for head in logits:
    logp = jax.nn.log_softmax(head, axis=-1)
    total = total - jnp.sum(jnp.exp(logp) * logp, axis=-1)
  return total


def kl_divergence(p_logits: Sequence[Array], q_logits: Sequence[Array]) -> Array:
  """KL(p || q) of two product distributions = sum of the heads' KLs, (...,)."""
  if len(p_logits) != len(q_logits):
    raise ValueError(f"p has {len(p_logits)} heads, q has {len(q_logits)}")
  total = 0.0
  for p_head, q_head in zip(p_logits, q_logits):
    logp, logq = jax.nn.log_softmax(p_head, axis=-1), jax.nn.log_softmax(q_head, axis=-1)
    total = total + jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
  return total


def sample(rng: Array, logits: Sequence[Array]) -> Array:
  """Samples (..., H) int32 actions, one independent draw per head (training)."""
  keys = jax.random.split(rng, len(logits))
  return jnp.stack([jax.random.categorical(k, head, axis=-1) for k, head in zip(keys, logits)], -1).astype(jnp.int32)


def greedy(logits: Sequence[Array]) -> Array:
  """Most likely action per head, (..., H) int32 (evaluation). Heads are independent, so this is the joint mode."""
  return jnp.stack([jnp.argmax(head, axis=-1) for head in logits], -1).astype(jnp.int32)


def factors_to_joint(actions: Array, action_dims: Sequence[int]) -> Array:
  """(..., H) per-head indices -> (...,) row-major flat grid index (the first head varies slowest)."""
  index = jnp.zeros(actions.shape[:-1], jnp.int32)
  for i, n in enumerate(action_dims):
    index = index * n + actions[..., i].astype(jnp.int32)
  return index


def joint_to_factors(index: Array, action_dims: Sequence[int]) -> Array:
  """(...,) flat grid index -> (..., H) per-head indices; inverse of `factors_to_joint`."""
  factors = []
  rest = index.astype(jnp.int32)
  for n in reversed(tuple(action_dims)):
    factors.append(rest % n)
    rest = rest // n
  return jnp.stack(factors[::-1], axis=-1)
