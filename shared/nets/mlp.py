"""MLP encoder baseline: every observation array flattened into one vector, then dense layers.

Padded agent and road slots are zeroed (and their masks appended as features), so padding cannot change the output.
Unlike the Perceiver encoder this one is not invariant to the order of agent slots.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from shared.nets import inputs as inputs_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MLPConfig:
  """Encoder sizes.

  Attributes:
    hidden: widths of the hidden layers.
    width: output embedding width.
  """

  hidden: tuple[int, ...] = (256, 256)
  width: int = 128


def flatten_input(x: inputs_lib.NetInput) -> Array:
  """(..., F) concatenation of all policy-visible arrays (remaining_time excluded), padded slots zeroed."""
  batch_shape = x.batch_shape
  agents_mask = x.agents_mask.astype(bool)
  roads_mask = x.roads_mask.astype(bool)
  route_mask = x.route_valid()
  parts = [
      x.ego,
      jnp.where(agents_mask[..., None], x.agents, 0.0).reshape(batch_shape + (-1,)),
      agents_mask.astype(jnp.float32),
      jnp.where(roads_mask[..., None], x.roads, 0.0).reshape(batch_shape + (-1,)),
      roads_mask.astype(jnp.float32),
      jnp.where(route_mask[..., None], x.route, 0.0).reshape(batch_shape + (-1,)),
      x.light,
  ]
  return jnp.concatenate([p.astype(jnp.float32) for p in parts], axis=-1)


class MLPEncoder(nn.Module):
  """NetInput -> embedding (..., width). Does not read remaining_time."""

  config: MLPConfig = MLPConfig()

  @nn.compact
  def __call__(self, x: inputs_lib.NetInput) -> Array:
    h = flatten_input(x)
    for size in self.config.hidden:
      h = nn.relu(nn.LayerNorm()(nn.Dense(size)(h)))
    return nn.relu(nn.Dense(self.config.width)(h))
