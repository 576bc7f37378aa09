"""The one policy network every service runs: the project's Agent (shared.algos.agent) over flat per-agent features.

Simulator, inference, evaluator and learner all build it from the same settings (CommonConfig: net, preset,
params_seed) and the same EnvConfig observation and action grid, so each computes the identical version-0 params
on its own (`agent.host_init(seed, ...)`, numpy on the host: no compile) and nobody waits for the learner.

  pn = from_common(common)                       # or build("mlp", "tiny", obs_cfg, grid_cfg, seed)
  flat = pn.init_flat()                          # {"params/encoder/Dense_0/kernel": ndarray, ...}: the Params message
  action, logp, value = pn.select_action(flat, feat, rng, greedy=False)   # feat (B, F) -> (B,) each; jit-able

Shapes: F = `pn.num_features` = every Observation leaf of one agent flattened (shared.acting.engine's
`flat_features`); `pn.layout` (shared.nets.inputs.FlatLayout) turns (..., F) back into the NetInput the Agent reads.
Params travel flattened to "/"-joined keys (flax.traverse_util) and come back nested with `from_flat`.
Presets: shared.nets.actor_critic's "tiny" (tests, quick stacks and benchmarks), "small" (~0.75M), "base" (~2.5M),
"large".
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from shared.algos import agent as agent_lib
from shared.nets import actor_critic, inputs
from shared.sim import actions as actions_lib
from shared.sim import observations

NETS = ("mlp", "perceiver")
PRESETS = ("tiny", "small", "base", "large")
SEP = "/"


def net_config(net: str, preset: str) -> actor_critic.NetConfig:
  """NetConfig for `--net mlp|perceiver --preset tiny|small|base|large`."""
  if net not in NETS or preset not in PRESETS:
    raise ValueError(f"unknown network {net!r}/{preset!r}: nets {NETS}, presets {PRESETS}")
  return actor_critic.preset(preset, net)


def observation_layout(obs_cfg: observations.ObsConfig, num_road_candidates: int = 64) -> inputs.FlatLayout:
  """The flat layout of one agent's Observation, from shapes only (jax.eval_shape of a reset + observe)."""
  from shared.scenes import native, types
  from shared.sim import env

  cfg = env.EnvConfig(obs=obs_cfg, num_road_candidates=num_road_candidates)
  caps = types.SceneConfig(max_objects=2, max_road_points=max(num_road_candidates, obs_cfg.num_road_points),
                           max_tl_lanes=1, num_timesteps=cfg.init_step + 2)
  scenario = native.empty_scenario(caps)
  obs = jax.eval_shape(lambda s: env.observe(env.reset(s, jax.random.PRNGKey(0), cfg), cfg), scenario)
  return inputs.flat_layout(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), obs))


def to_flat(params: Any) -> dict[str, np.ndarray]:
  """Nested flax params -> {"a/b/kernel": ndarray} (the Params message's arrays)."""
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params), sep=SEP).items()}


def from_flat(flat: dict[str, Any]) -> dict:
  """{"a/b/kernel": array} -> nested params (works on traced arrays too)."""
  return traverse_util.unflatten_dict(dict(flat), sep=SEP)


class PolicyNet:
  """Agent + flat layout + seed. Built once per settings (`build` caches), so jitted functions keyed on it are
  shared by every user in a process.

  Attributes:
    agent: shared.algos.agent.Agent (its model, heads over the grid, to_factors).
    layout: shared.nets.inputs.FlatLayout of one agent's features.
    seed: the version-0 params seed.
    net, preset: the names it was built from (policy.json).
  """

  def __init__(self, net: str, preset: str, obs_cfg: observations.ObsConfig, grid_cfg: actions_lib.ActionGridConfig,
               seed: int = 0, num_road_candidates: int = 64):
    self.net, self.preset, self.seed = net, preset, int(seed)
    self.agent = agent_lib.make_agent(net_config(net, preset), grid_cfg)
    self.layout = observation_layout(obs_cfg, num_road_candidates)
    self._init: dict[str, np.ndarray] | None = None
    self._init_device: dict[str, jax.Array] | None = None

  @property
  def num_features(self) -> int:
    return self.layout.size

  @property
  def num_actions(self) -> int:
    return int(np.prod(self.agent.action_dims))

  def example(self, batch: tuple[int, ...] = (1,)) -> inputs.NetInput:
    """ShapeDtypeStructs of a NetInput with leading axes `batch`."""
    flat = jax.ShapeDtypeStruct(tuple(batch) + (self.num_features,), jnp.float32)
    return jax.eval_shape(lambda f: inputs.unflatten(f, self.layout), flat)

  def init_flat(self) -> dict[str, np.ndarray]:
    """Version-0 params, flat: identical in every process with the same settings (host numpy draw)."""
    if self._init is None:
      self._init = to_flat(self.agent.host_init(self.seed, self.example()))
    return dict(self._init)

  def init_params(self) -> dict:
    """Version-0 params, nested (what the learner's TrainingState holds)."""
    return jax.tree.map(jnp.asarray, from_flat(self.init_flat()))

  def matches(self, flat: dict[str, Any]) -> bool:
    """True when `flat` (e.g. a received Params message) has exactly this network's keys and shapes."""
    ref = self.init_flat()
    return set(flat) == set(ref) and all(np.shape(flat[k]) == ref[k].shape for k in ref)

  def acting_params(self, flat: dict[str, Any] | None, version: int = 0) -> tuple[dict[str, jax.Array], int]:
    """(params on the device, version) for a service to act with: `flat` (a received Params message) moved to the
    device once, here, rather than at every forward pass; version 0 (computed once) when `flat` is None or does
    not fit this network."""
    if flat is not None and self.matches(flat):
      return jax.device_put(flat), int(version)
    if self._init_device is None:
      self._init_device = jax.device_put(self.init_flat())
    return self._init_device, 0

  def net_input(self, feat: jax.Array) -> inputs.NetInput:
    return inputs.unflatten(feat, self.layout)

  def greedy_policy(self):
    """This network as a shared.evaluation Policy: greedy actions on the acting rows from flat params (one object
    per PolicyNet, so repeated evaluations reuse one compile)."""
    return _greedy_policy(self)

  def select_action(self, flat_params: dict, feat: jax.Array, rng: jax.Array, greedy: bool = False
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """feat (..., F) -> grid action (...) int32, log_prob (...), value (...); sampled, or the mode (`greedy`,
    static under jit)."""
    step = self.agent.select_action(from_flat(flat_params), self.net_input(feat), rng, greedy)
    return step.action.astype(jnp.int32), step.logp, step.value


@functools.lru_cache(maxsize=16)
def _greedy_policy(pn: PolicyNet):
  from shared import evaluation

  act = lambda flat, obs, rng: pn.agent.select_action(from_flat(flat), obs, rng, True).action.astype(jnp.int32)
  return evaluation.from_policy_fn(act, name=f"{pn.net}/{pn.preset}", on_rows=True)


@functools.lru_cache(maxsize=16)
def build(net: str, preset: str, obs_cfg: observations.ObsConfig = observations.ObsConfig(),
          grid_cfg: actions_lib.ActionGridConfig = actions_lib.ActionGridConfig(), seed: int = 0,
          num_road_candidates: int = 64) -> PolicyNet:
  """One PolicyNet per settings in a process."""
  return PolicyNet(net, preset, obs_cfg, grid_cfg, seed, num_road_candidates)


def from_common(common, env_cfg=None) -> PolicyNet:
  """The PolicyNet of a service: network from CommonConfig, observation and grid from `env_cfg` (default
  EnvConfig)."""
  from shared.sim import env

  env_cfg = env.EnvConfig() if env_cfg is None else env_cfg
  return build(common.net, common.preset, env_cfg.obs, env_cfg.actions, common.params_seed,
               env_cfg.num_road_candidates)


def policy_meta(pn: PolicyNet) -> dict:
  """What `services.cli.train_cmd.load_policy` reads from policy.json to rebuild the agent."""
  return {"net": pn.net, "preset": pn.preset, "params_seed": pn.seed, "num_features": pn.num_features,
          "action_dims": list(pn.agent.action_dims)}


__all__ = ["NETS", "PRESETS", "PolicyNet", "build", "from_common", "from_flat", "net_config", "observation_layout",
           "policy_meta", "to_flat"]
