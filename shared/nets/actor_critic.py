"""The policy/value network: one shared encoder (Perceiver or MLP), a factorised policy head and a value head.

`ActorCritic(config).apply(params, net_input)` returns (logits, value): logits is a tuple of (..., n_i) arrays, one
per action component; value is (...,). The value head alone sees `remaining_time`.
Size presets (parameters at the reference `InputShapes` with a 7 x 13 action grid): "small" ~0.75M, "base" ~2.5M,
"large" ~13-15M; any other size by building `NetConfig` directly.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import flax.struct
import jax
import numpy as np

from shared.nets import heads
from shared.nets import inputs as inputs_lib
from shared.nets import mlp
from shared.nets import perceiver

Array = jax.Array

DEFAULT_ACTION_DIMS = (7, 13)


@dataclasses.dataclass(frozen=True)
class NetConfig:
  """Whole-network configuration.

  Attributes:
    encoder: "perceiver" or "mlp".
    perceiver: Perceiver encoder sizes (used when encoder == "perceiver").
    mlp: MLP encoder sizes (used when encoder == "mlp").
    action_dims: action components, e.g. (num_accel, num_steer) factorised or (num_actions,) joint.
    head_width: hidden width of the policy and value heads.
    head_blocks: residual blocks per head.
  """

  encoder: str = "perceiver"
  perceiver: perceiver.PerceiverConfig = perceiver.PerceiverConfig()
  mlp: mlp.MLPConfig = mlp.MLPConfig()
  action_dims: tuple[int, ...] = DEFAULT_ACTION_DIMS
  head_width: int = 128
  head_blocks: int = 2


_PRESETS = {
    "perceiver": {
        # a few thousand parameters: tests and quick stacks.
        "tiny": dict(perceiver=perceiver.PerceiverConfig(width=16, num_heads=2, num_self_layers=1, num_latents=2),
                     head_width=32, head_blocks=1),
        "small": dict(perceiver=perceiver.PerceiverConfig(width=96, num_heads=4, num_self_layers=2), head_width=128),
        "base": dict(perceiver=perceiver.PerceiverConfig(width=160, num_heads=8, num_self_layers=3), head_width=256),
        "large": dict(perceiver=perceiver.PerceiverConfig(width=320, num_heads=8, num_self_layers=4,
                                                          num_latents=8, num_cross_rounds=2), head_width=512),
    },
    "mlp": {
        # ~30k parameters: compiles and steps fast on a 2-core CPU (make run, bench learn --quick, tests).
        "tiny": dict(mlp=mlp.MLPConfig(hidden=(128,), width=64), head_width=64, head_blocks=1),
        "small": dict(mlp=mlp.MLPConfig(hidden=(512, 384), width=192), head_width=128),
        "base": dict(mlp=mlp.MLPConfig(hidden=(1024, 768), width=384), head_width=256),
        "large": dict(mlp=mlp.MLPConfig(hidden=(2048, 2048, 1024), width=1024), head_width=512),
    },
}


def preset(size: str, encoder: str = "perceiver", action_dims: tuple[int, ...] = DEFAULT_ACTION_DIMS) -> NetConfig:
  """A named size ("tiny", "small", "base", "large") for either encoder."""
  if encoder not in _PRESETS or size not in _PRESETS[encoder]:
    raise ValueError(f"unknown preset {size!r} for encoder {encoder!r}; sizes: {sorted(_PRESETS['mlp'])}")
  return NetConfig(encoder=encoder, action_dims=tuple(action_dims), **_PRESETS[encoder][size])


class ActorCritic(nn.Module):
  """NetInput -> (logits tuple, value)."""

  config: NetConfig = NetConfig()

  def setup(self) -> None:
    cfg = self.config
    if cfg.encoder == "perceiver":
      self.encoder = perceiver.PerceiverEncoder(cfg.perceiver)
    elif cfg.encoder == "mlp":
      self.encoder = mlp.MLPEncoder(cfg.mlp)
    else:
      raise ValueError(f"unknown encoder {cfg.encoder!r}")
    self.policy_head = heads.PolicyHead(cfg.action_dims, cfg.head_width, cfg.head_blocks)
    self.value_head = heads.ValueHead(cfg.head_width, cfg.head_blocks)

  def __call__(self, x: inputs_lib.NetInput) -> tuple[heads.Logits, Array]:
    embedding = self.encoder(x)
    return self.policy_head(embedding), self.value_head(embedding, x.remaining_time)

  def policy(self, x: inputs_lib.NetInput) -> heads.Logits:
    """Logits only, for acting (`model.apply(params, x, method="policy")`)."""
    return self.policy_head(self.encoder(x))


@flax.struct.dataclass
class ActOutput:
  """What an actor records per step.

  Attributes:
    actions: (..., H) int32 per-head indices (what the losses take).
    grid_index: (...,) int32 row-major flat index into the simulator's action grid.
    log_prob: (...,) log pi(actions | obs) under the acting params (the behaviour log-prob for V-trace / PPO).
    value: (...,) V(obs).
  """

  actions: Array
  grid_index: Array
  log_prob: Array
  value: Array


def act(model: ActorCritic, params, x: inputs_lib.NetInput, rng: Array, greedy: bool = False) -> ActOutput:
  """Sampled actions for training, the per-head argmax for evaluation (`greedy` must be static under jit)."""
  logits, value = model.apply(params, x)
  actions = heads.greedy(logits) if greedy else heads.sample(rng, logits)
  return ActOutput(actions=actions, grid_index=heads.factors_to_joint(actions, model.config.action_dims),
                   log_prob=heads.log_prob(logits, actions), value=value)


def init_params(
    config: NetConfig, rng: Array, shapes: inputs_lib.InputShapes = inputs_lib.InputShapes()
) -> dict:
  """Initial parameters for inputs of the given per-sample shapes."""
  return ActorCritic(config).init(rng, inputs_lib.dummy_input(shapes))


def host_init(model: nn.Module, example_input, seed: int = 0) -> dict:
  """Parameters drawn with numpy on the host: no XLA compile (a jitted flax init compiles one RNG program per
  parameter, tens of seconds on a busy CPU). For tests and quick tools; `init_params` is the real thing.

  Kernels ~ N(0, 1/fan_in) (flax's lecun-normal variance), policy output kernels 10x smaller (their flax init
  scale, so the untrained policy is near uniform), biases 0, LayerNorm scales 1, other params N(0, 0.02).
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), example_input)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [getattr(key, "key", "") for key in path]
    shape = leaf.shape
    if names[-1] == "bias":
      return np.zeros(shape, leaf.dtype)
    if names[-1] == "scale":
      return np.ones(shape, leaf.dtype)
    if names[-1] != "kernel":
      return (0.02 * rng.normal(size=shape)).astype(leaf.dtype)
    # A multi-head output projection (heads, head_width, out) contracts two axes; the others contract the first.
    fan_in = int(np.prod(shape[:-1])) if len(shape) == 2 or names[-2] == "out" else shape[0]
    std = 1.0 / np.sqrt(fan_in)
    if any(name.startswith(heads.LOGITS_LAYER_PREFIX) for name in names):
      std *= 0.1
    return (std * rng.normal(size=shape)).astype(leaf.dtype)

  return jax.device_put(jax.tree_util.tree_map_with_path(draw, shapes))


def param_count(params) -> int:
  """Number of scalars in a parameter pytree."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
