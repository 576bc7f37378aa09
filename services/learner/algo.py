"""The learner's algorithm: ReplayBatch arrays -> the shared update steps' batches, and those update steps.

The update step is the fused path's own (shared.algos.ppo_update / bc_update, jitted with the state donated); on
more than one device (several GPUs, or several learner processes joined by jax.distributed) the same un-jitted
update runs under shared.algos.distributed.data_parallel, gradients averaged over the scene axis.

  la = make(policy, "ppo", cfg)                     # LearnerAlgo: init_state, update, to_batch
  state = la.init_state()                           # version-0 params (identical in every process)
  state, metrics = la.update(state, la.to_batch(msg.arrays))

Batches from replay (T steps, B agents, F flat features):
  PPO  obs/flat (T, B, F), bootstrap_obs/flat (1, B, F) = s_T, action (T, B) grid, log_prob / value (T, B) of the
       actor, reward (T, B), done / terminated / valid (T, B) -> ppo_update.Trajectory with obs (T + 1, B, ...):
       terminated steps do not bootstrap, done-but-not-terminated ones (the log's end) and the unroll's last step
       do (truncated), mask = valid. Without bootstrap_obs (a v1 Trajectory) the last step serves as s_T only.
  BC   expert obs/flat (T, B, F), action (T, B) grid, reward / terminated / valid (T, B) ->
       bc_update.Demonstration (cross-entropy on the expert's grid actions split into the policy's heads, value
       regressed on the logged return).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from shared.acting import policy_net
from services.learner import config as config_lib
from shared.algos import bc, bc_update, distributed, ppo, ppo_update, training

Arrays = dict[str, np.ndarray]
DEFAULT_LR = {"ppo": 3e-4, "bc": 1e-3}


def ppo_config(cfg: config_lib.LearnerConfig) -> ppo_update.PPOUpdateConfig:
  lr = cfg.learning_rate or DEFAULT_LR["ppo"]
  loss = ppo.PPOConfig(gamma=cfg.gamma, lambda_=cfg.gae_lambda, clip_eps=cfg.clip_eps, value_coef=cfg.value_coef,
                       entropy_coef=cfg.entropy_coef, use_vtrace=cfg.use_vtrace, ref_kl_coef=cfg.ref_kl_coef)
  return ppo_update.PPOUpdateConfig(ppo=loss, optimizer=training.OptimizerConfig(learning_rate=lr),
                                    num_epochs=cfg.num_epochs, num_minibatches=cfg.num_minibatches)


def bc_config(cfg: config_lib.LearnerConfig) -> bc_update.BCUpdateConfig:
  lr = cfg.learning_rate or DEFAULT_LR["bc"]
  return bc_update.BCUpdateConfig(bc=bc.BCConfig(), gamma=cfg.gamma,
                                  optimizer=training.OptimizerConfig(learning_rate=lr),
                                  num_epochs=cfg.num_epochs, num_minibatches=cfg.num_minibatches)


def to_trajectory(pn: policy_net.PolicyNet, arrays: Arrays) -> ppo_update.Trajectory:
  """PPO batch from a ReplayBatch's arrays (see the module docstring)."""
  obs = np.asarray(arrays["obs/flat"], np.float32)
  boot = arrays.get("bootstrap_obs/flat")
  steps = {k: np.asarray(arrays[k]) for k in ("action", "log_prob", "value", "reward", "done", "valid")}
  terminated = np.asarray(arrays.get("terminated", np.zeros_like(steps["done"])), bool)
  if boot is None:  # no s_T sent: the last recorded step becomes the bootstrap observation
    steps = {k: v[:-1] for k, v in steps.items()}
    terminated = terminated[:-1]
  else:
    obs = np.concatenate([obs, np.asarray(boot, np.float32)], axis=0)
  truncated = steps["done"] & ~terminated
  truncated[-1] = True  # the unroll stops here: bootstrap from V(s_T)
  return ppo_update.Trajectory(
      obs=pn.net_input(jnp.asarray(obs)), actions=pn.agent.to_factors(jnp.asarray(steps["action"], jnp.int32)),
      behaviour_logp=jnp.asarray(steps["log_prob"], jnp.float32),
      behaviour_value=jnp.asarray(steps["value"], jnp.float32), reward=jnp.asarray(steps["reward"], jnp.float32),
      terminated=jnp.asarray(terminated), truncated=jnp.asarray(truncated),
      mask=jnp.asarray(steps["valid"], jnp.float32))


def to_demonstration(pn: policy_net.PolicyNet, arrays: Arrays) -> bc_update.Demonstration:
  """BC batch from an expert ReplayBatch's arrays (see the module docstring)."""
  valid = np.asarray(arrays["valid"], bool)
  terminated = np.asarray(arrays.get("terminated", np.zeros_like(valid)), bool)
  return bc_update.Demonstration(
      obs=pn.net_input(jnp.asarray(arrays["obs/flat"], jnp.float32)),
      actions=pn.agent.to_factors(jnp.asarray(arrays["action"], jnp.int32)),
      reward=jnp.asarray(arrays["reward"], jnp.float32), terminated=jnp.asarray(terminated),
      mask=jnp.asarray(valid, jnp.float32))


def host(tree: Any) -> Any:
  """Numpy copy of a (possibly multi-process, replicated) pytree: each process reads its own replica."""
  return distributed.host_copy(tree)


@functools.lru_cache(maxsize=8)
def _reference_logits(pn: policy_net.PolicyNet) -> Callable:
  """jitted (reference params, Trajectory obs (T + 1, ...)) -> the reference policy's logits at s_0 .. s_{T-1}."""
  return jax.jit(lambda params, obs: jax.lax.stop_gradient(
      pn.agent.apply(params, jax.tree.map(lambda x: x[:-1], obs))[0]))


@dataclasses.dataclass(frozen=True)
class LearnerAlgo:
  """Attributes: algo ("ppo" | "bc"), policy (PolicyNet), update (state, batch) -> (state, metrics) jitted,
  to_batch (arrays -> update batch), optimizer (training.OptimizerConfig), seed, mesh (None on one device),
  reference (frozen params whose logits each PPO batch carries for PPOConfig.ref_kl_coef > 0; None: off)."""

  algo: str
  policy: policy_net.PolicyNet
  update: Callable
  to_batch: Callable[[Arrays], Any]
  optimizer: training.OptimizerConfig
  seed: int
  mesh: Any = None
  reference: Any = None

  def init_state(self) -> training.TrainingState:
    state = training.init_training_state(self.policy.init_params(), training.make_optimizer(self.optimizer),
                                         jax.random.PRNGKey(self.seed))
    return self.place(state)

  def place(self, state: training.TrainingState) -> training.TrainingState:
    """On the mesh (replicated) when there is one."""
    return distributed.replicate(state, self.mesh) if self.mesh is not None else jax.tree.map(jnp.asarray, state)

  def prepare(self, arrays: Arrays) -> Any:
    """The update's batch, split over the mesh's devices on its B axis when there is a mesh."""
    batch = self.to_batch(arrays)
    if self.reference is not None:  # one batched forward pass of the frozen reference policy
      batch = batch.replace(ref_logits=_reference_logits(self.policy)(self.reference, batch.obs))
    if self.mesh is None:
      return batch
    if jax.process_count() > 1:  # each process holds its own replay's rows: together they form the global batch
      return distributed.global_batch(batch, self.mesh, batch_axis=1)
    return distributed.shard_batch(batch, self.mesh, batch_axis=1)


@functools.lru_cache(maxsize=8)
def _update_step(pn: policy_net.PolicyNet, algo: str, ucfg: Any, data_parallel: bool) -> tuple[Callable, Any]:
  """(jitted update, mesh or None), cached so learners with equal settings in one process share one compile."""
  if algo == "ppo":
    fn, jitted = ppo_update.make_ppo_update_fn, ppo_update.make_ppo_update_step
  else:
    fn, jitted = bc_update.make_bc_update_fn, bc_update.make_bc_update_step
  if not data_parallel:  # one device: the very jitted step of the fused path
    return jitted(pn.agent, ucfg), None
  mesh = distributed.make_mesh()
  return distributed.data_parallel(fn(pn.agent, ucfg, distributed.DATA_AXIS), mesh, batch_axis=1), mesh


def make(pn: policy_net.PolicyNet, algo: str, cfg: config_lib.LearnerConfig) -> LearnerAlgo:
  """The learner for `algo` over `pn`; data-parallel over every device when there is more than one."""
  if algo not in ("ppo", "bc"):
    raise ValueError(f"unknown learner algo {algo!r}")
  ucfg = ppo_config(cfg) if algo == "ppo" else bc_config(cfg)
  to_batch = to_trajectory if algo == "ppo" else to_demonstration
  update, mesh = _update_step(pn, algo, ucfg, jax.device_count() > 1)
  return LearnerAlgo(algo=algo, policy=pn, update=update, to_batch=lambda arrays: to_batch(pn, arrays),
                     optimizer=ucfg.optimizer, seed=cfg.seed, mesh=mesh)


__all__ = ["DEFAULT_LR", "LearnerAlgo", "bc_config", "host", "make", "ppo_config", "to_demonstration",
           "to_trajectory"]
