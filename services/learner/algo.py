"""The learner's algorithm: a registry bundle (shared.algos.registry) bound to the stack's policy network and
this process's devices.

The update step is the fused path's own (the bundle's `make_update`, jitted with the state donated); on more than one
device (several GPUs, or several learner processes joined by jax.distributed) the same un-jitted update runs under
shared.algos.distributed.data_parallel, gradients averaged over the scene axis.

  la = make(policy, "ppo", cfg)                     # LearnerAlgo: init_state, update, prepare
  state = la.init_state()                           # version-0 params (identical in every process)
  state, metrics = la.update(state, la.prepare(msg.arrays))

ReplayBatch arrays become the update's batch by the bundle's `from_arrays` (see shared.algos.ppo_update and
bc_update for each table's arrays).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from shared.acting import policy_net
from services.learner import config as config_lib
from shared.algos import api, distributed, registry

Arrays = dict[str, np.ndarray]


def join(cfg: config_lib.LearnerConfig) -> None:
  """Joins the other learner replicas through jax.distributed (before any JAX computation); a no-op for one."""
  if distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id):
    logging.getLogger(__name__).info("event=distributed process=%d/%d devices=%d", cfg.process_id,
                                     cfg.num_processes, jax.device_count())


def hyper(cfg: config_lib.LearnerConfig) -> api.Hyper:
  """The learner's flags as the bundles read them (learning_rate 0: the bundle's default)."""
  return api.Hyper(learning_rate=cfg.learning_rate or None, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                   clip_eps=cfg.clip_eps, value_coef=cfg.value_coef, entropy_coef=cfg.entropy_coef,
                   use_vtrace=cfg.use_vtrace, ref_kl_coef=cfg.ref_kl_coef, num_epochs=cfg.num_epochs,
                   num_minibatches=cfg.num_minibatches)


def host(tree: Any) -> Any:
  """Numpy copy of a (possibly multi-process, replicated) pytree: each process reads its own replica."""
  return distributed.host_copy(tree)


@functools.lru_cache(maxsize=8)
def _with_reference(algorithm: api.Algorithm, pn: policy_net.PolicyNet) -> Callable:
  """jitted (batch, reference params) -> the batch with the reference policy's logits (the bundle's add_reference)."""
  return jax.jit(lambda batch, params: algorithm.add_reference(pn.agent, batch, params))


@dataclasses.dataclass(frozen=True)
class LearnerAlgo:
  """Attributes: algorithm (the registry bundle), config (its config), policy (PolicyNet), update (state, batch) ->
  (state, metrics) jitted, seed, mesh (None on one device), reference (frozen params whose logits each batch carries
  when the bundle wants a reference, e.g. PPO's ref_kl_coef > 0; None: off)."""

  algorithm: api.Algorithm
  config: Any
  policy: policy_net.PolicyNet
  update: Callable
  seed: int
  mesh: Any = None
  reference: Any = None

  @property
  def algo(self) -> str:
    return self.algorithm.name

  def to_batch(self, arrays: Arrays) -> Any:
    return self.algorithm.from_arrays(self.policy, arrays)

  def init_state(self) -> Any:
    state = self.algorithm.init(self.policy.agent, self.config, self.policy.init_params(),
                                jax.random.PRNGKey(self.seed))
    return self.place(state)

  def policy_params(self, state: Any) -> Any:
    return self.algorithm.policy_params(state)

  def place(self, state: Any) -> Any:
    """On the mesh (replicated) when there is one."""
    return distributed.replicate(state, self.mesh) if self.mesh is not None else jax.tree.map(jnp.asarray, state)

  def prepare(self, arrays: Arrays) -> Any:
    """The update's batch, split over the mesh's devices on its B axis when there is a mesh."""
    batch = self.to_batch(arrays)
    if self.reference is not None:  # one batched forward pass of the frozen reference policy
      batch = _with_reference(self.algorithm, self.policy)(batch, self.reference)
    if self.mesh is None:
      return batch
    if jax.process_count() > 1:  # each process holds its own replay's rows: together they form the global batch
      return distributed.global_batch(batch, self.mesh, batch_axis=1)
    return distributed.shard_batch(batch, self.mesh, batch_axis=1)


@functools.lru_cache(maxsize=8)
def _update_step(pn: policy_net.PolicyNet, algorithm: api.Algorithm, ucfg: Any, data_parallel: bool
                 ) -> tuple[Callable, Any]:
  """(jitted update, mesh or None), cached so learners with equal settings in one process share one compile."""
  if not data_parallel:  # one device: the fused path's update, jitted with the state donated
    return jax.jit(algorithm.make_update(pn.agent, ucfg, None), donate_argnums=0), None
  mesh = distributed.make_mesh()
  fn = algorithm.make_update(pn.agent, ucfg, distributed.DATA_AXIS)
  return distributed.data_parallel(fn, mesh, batch_axis=1), mesh


def make(pn: policy_net.PolicyNet, algo: str, cfg: config_lib.LearnerConfig) -> LearnerAlgo:
  """The learner for the registry's `algo` over `pn`; data-parallel over every device when there is more than one."""
  algorithm = registry.get(algo)
  ucfg = algorithm.configure(hyper(cfg))
  update, mesh = _update_step(pn, algorithm, ucfg, jax.device_count() > 1)
  return LearnerAlgo(algorithm=algorithm, config=ucfg, policy=pn, update=update, seed=cfg.seed, mesh=mesh)


__all__ = ["LearnerAlgo", "host", "hyper", "join", "make"]
