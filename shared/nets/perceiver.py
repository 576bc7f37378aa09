"""Perceiver-style observation encoder (paper 002, sec. 3.4.1 and Figure 3).

Self-attention runs over the ego token and the k nearest agents; then a small set of learned latents, together with
the ego token, successively cross-attends each modality: agents, road points, route points, traffic lights.
The concatenated query outputs are projected to one embedding (..., D) shared by the policy and value heads.

Padding never reaches the output: padded token features are zeroed before embedding, and attention weights on
padded keys are exactly zero (a query with no valid key gets a zero attention output). Agents carry no positional
information, so the output is invariant to the order of agent slots.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from shared.nets import inputs as inputs_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PerceiverConfig:
  """Encoder sizes.

  Attributes:
    width: token width D (also the output embedding width).
    num_heads: attention heads (width must divide by it).
    num_self_layers: self-attention layers over [ego, agents].
    num_latents: learned latent queries besides the ego token.
    num_cross_rounds: passes over the four modalities.
    mlp_ratio: hidden width of each block's MLP, as a multiple of width.
  """

  width: int = 96
  num_heads: int = 4
  num_self_layers: int = 2
  num_latents: int = 4
  num_cross_rounds: int = 1
  mlp_ratio: int = 2


class MaskedAttention(nn.Module):
  """Multi-head attention of queries (..., Q, D) over keys (..., K, D) with a key mask (..., K)."""

  num_heads: int

  @nn.compact
  def __call__(self, queries: Array, keys: Array, key_mask: Array) -> Array:
    width = queries.shape[-1]
    head_width = width // self.num_heads
    project = lambda name: nn.DenseGeneral((self.num_heads, head_width), name=name)  # noqa: E731
    q, k, v = project("query")(queries), project("key")(keys), project("value")(keys)
    logits = jnp.einsum("...qhc,...khc->...hqk", q, k) / math.sqrt(head_width)
    mask = key_mask[..., None, None, :].astype(bool)
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min / 2)
    # Multiplying by the mask zeroes the uniform weights a query gets when every key is padded.
    weights = jax.nn.softmax(logits, axis=-1) * mask
    out = jnp.einsum("...hqk,...khc->...qhc", weights, v)
    return nn.DenseGeneral(width, axis=(-2, -1), name="out")(out)


class AttentionBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + Attn(LN x, LN context), then x + MLP(LN x)."""

  num_heads: int
  mlp_ratio: int

  @nn.compact
  def __call__(self, x: Array, context: Array, context_mask: Array) -> Array:
    width = x.shape[-1]
    x = x + MaskedAttention(self.num_heads)(nn.LayerNorm()(x), nn.LayerNorm()(context), context_mask)
    h = nn.Dense(self.mlp_ratio * width)(nn.LayerNorm()(x))
    return x + nn.Dense(width)(nn.gelu(h))


def _tokens(features: Array, mask: Array, width: int, name: str) -> Array:
  """Embeds (..., N, F) features to (..., N, width) after zeroing padded slots (NaN-safe via where)."""
  clean = jnp.where(mask[..., None].astype(bool), features, 0.0)
  return nn.Dense(width, name=name)(clean)


class PerceiverEncoder(nn.Module):
  """NetInput -> embedding (..., width). Does not read remaining_time."""

  config: PerceiverConfig = PerceiverConfig()

  @nn.compact
  def __call__(self, x: inputs_lib.NetInput) -> Array:
    cfg = self.config
    batch_shape = x.batch_shape
    block = lambda: AttentionBlock(cfg.num_heads, cfg.mlp_ratio)  # noqa: E731

    # SELF-ATTENTION over the ego token and the agents.
    ego = nn.Dense(cfg.width, name="ego_embed")(x.ego)[..., None, :]
    agents = _tokens(x.agents, x.agents_mask, cfg.width, "agent_embed")
    tokens = jnp.concatenate([ego, agents], axis=-2)
    token_mask = jnp.concatenate([jnp.ones(batch_shape + (1,), bool), x.agents_mask.astype(bool)], axis=-1)
    for _ in range(cfg.num_self_layers):
      tokens = block()(tokens, tokens, token_mask)

    # CROSS-ATTENTION from [ego, latents] to each modality in turn.
    route_mask = x.route_valid()
    num_route = x.route.shape[-2]
    # The route is ordered along the path, so its slot index is information (agents and roads are sets).
    route_index = jnp.broadcast_to(jnp.arange(num_route, dtype=jnp.float32) / num_route, route_mask.shape)
    route_features = jnp.concatenate([x.route, route_index[..., None]], axis=-1)
    modalities = (
        (tokens[..., 1:, :], x.agents_mask.astype(bool)),
        (_tokens(x.roads, x.roads_mask, cfg.width, "road_embed"), x.roads_mask.astype(bool)),
        (_tokens(route_features, route_mask, cfg.width, "route_embed"), route_mask),
        (nn.Dense(cfg.width, name="light_embed")(x.light)[..., None, :], jnp.ones(batch_shape + (1,), bool)),
    )
    latents = self.param("latents", nn.initializers.normal(0.02), (cfg.num_latents, cfg.width))
    queries = jnp.concatenate([tokens[..., :1, :], jnp.broadcast_to(latents, batch_shape + latents.shape)], axis=-2)
    for _ in range(cfg.num_cross_rounds):
      for context, mask in modalities:
        queries = block()(queries, context, mask)

    flat = nn.LayerNorm()(queries).reshape(batch_shape + (-1,))
    return nn.relu(nn.Dense(cfg.width, name="project")(flat))
