"""The policy bundle for acting: one network over the factorised discrete action grid.

  agent = make_agent(net_cfg, grid_cfg)
  params = agent.init(rng, obs_example)                        # obs: the simulator's Observation or a NetInput
  step = agent.select_action(params, obs, rng, greedy=False)   # ActionStep: grid action (...,), factors (..., 2)
  v = agent.value(params, obs)                                 # (...,)

The grid index is the simulator's row-major (acceleration-major) index `i_accel * num_steer + i_steer`, so the
policy's two heads are (num_accel, num_steer) and `heads.factors_to_joint` maps a head sample to the grid row.
Training samples (log-probabilities and entropies feed PPO); evaluation takes the mode (greedy).
Shapes: any leading axes (...) on the observation, e.g. (O,) agents of one scene or (B, O) scenes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax

from shared.nets import actor_critic, heads
from shared.nets import inputs as inputs_lib
from shared.sim import actions as actions_lib

Array = jax.Array
Params = Any


@flax.struct.dataclass
class ActionStep:
  """What acting produces per agent (leading axes (...)).

  Attributes:
    action: (...) int32 grid index, what `env.step` takes.
    factors: (...) + (H,) int32 per-head indices (acceleration, steering), what the PPO loss scores.
    logp: (...) float32 log pi(factors | obs) under the acting params.
    value: (...) float32 V(obs).
  """

  action: Array
  factors: Array
  logp: Array
  value: Array


def grid_action_dims(grid_cfg: actions_lib.ActionGridConfig) -> tuple[int, int]:
  """(num_accel, num_steer): the policy heads matching the grid's row-major layout."""
  return int(grid_cfg.accel[2]), int(grid_cfg.steer[2])


def as_net_input(obs: Any) -> inputs_lib.NetInput:
  """A NetInput as is, or the simulator's Observation read by field name."""
  return obs if isinstance(obs, inputs_lib.NetInput) else inputs_lib.from_observation(obs)


@dataclasses.dataclass(frozen=True)
class Agent:
  """Pure functions over one actor-critic network; holds only static things.

  Attributes:
    net_cfg: network configuration; its action_dims match the grid.
    grid_cfg: the action grid the simulator decodes.
    model: the flax module.
  """

  net_cfg: actor_critic.NetConfig
  grid_cfg: actions_lib.ActionGridConfig
  model: actor_critic.ActorCritic

  @property
  def action_dims(self) -> tuple[int, ...]:
    return tuple(self.net_cfg.action_dims)

  def init(self, rng: Array, obs_example: Any) -> Params:
    """Parameters for observations shaped like `obs_example` (any leading axes)."""
    return self.model.init(rng, as_net_input(obs_example))

  def host_init(self, seed: int, obs_example: Any) -> Params:
    """Parameters drawn with numpy on the host (no XLA compile); `obs_example` may be ShapeDtypeStructs."""
    return actor_critic.host_init(self.model, as_net_input(obs_example), seed)

  def apply(self, params: Params, obs: Any) -> tuple[heads.Logits, Array]:
    """(logits tuple with (..., n_i) per head, value (...))."""
    return self.model.apply(params, as_net_input(obs))

  def value(self, params: Params, obs: Any) -> Array:
    return self.apply(params, obs)[1]

  def log_prob(self, logits: heads.Logits, factors: Array) -> Array:
    return heads.log_prob(logits, factors)

  def entropy(self, logits: heads.Logits) -> Array:
    return heads.entropy(logits)

  def to_grid(self, factors: Array) -> Array:
    """(..., H) head indices -> (...) int32 grid rows."""
    return heads.factors_to_joint(factors, self.action_dims)

  def to_factors(self, grid_index: Array) -> Array:
    """(...) int32 grid rows -> (..., H) head indices (e.g. the inferred expert actions for BC)."""
    return heads.joint_to_factors(grid_index, self.action_dims)

  def select_action(self, params: Params, obs: Any, rng: Array, greedy: bool = False) -> ActionStep:
    """Sampled (training) or most likely (evaluation, `greedy=True`, static) actions with their log-probs."""
    logits, value = self.apply(params, obs)
    factors = heads.greedy(logits) if greedy else heads.sample(rng, logits)
    return ActionStep(action=self.to_grid(factors), factors=factors, logp=heads.log_prob(logits, factors),
                      value=value)

  def policy_fn(self, greedy: bool) -> Callable[[Params, Any, Array], Array]:
    """`policy_fn(params, obs, rng) -> (N,) int32 grid actions` for `rollout` / the evaluator; the same function
    object for equal agents, so callers that cache compiled evaluations on it (shared.evaluation) compile once."""
    return _policy_fn(self, bool(greedy))


@functools.lru_cache(maxsize=64)
def _policy_fn(agent: Agent, greedy: bool) -> Callable[[Params, Any, Array], Array]:
  return lambda params, obs, rng: agent.select_action(params, obs, rng, greedy).action


def make_agent(net_cfg: actor_critic.NetConfig, grid_cfg: actions_lib.ActionGridConfig) -> Agent:
  """An Agent whose policy heads are the grid's (num_accel, num_steer), whatever `net_cfg.action_dims` said."""
  net_cfg = dataclasses.replace(net_cfg, action_dims=grid_action_dims(grid_cfg))
  return Agent(net_cfg=net_cfg, grid_cfg=grid_cfg, model=actor_critic.ActorCritic(net_cfg))


__all__ = ["ActionStep", "Agent", "as_net_input", "grid_action_dims", "make_agent"]
