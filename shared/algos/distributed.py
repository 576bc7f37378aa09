"""Gradient steps that average over data-parallel devices, and the wrapper that runs an update on a device mesh.

Every learner's update is written once as a pure `update_fn(state, batch) -> (state, metrics)` built from
`gradient_step` / `minibatch_epochs` below with an optional `axis_name`. On one device it is simply jitted; under
`data_parallel` the state is replicated, the batch is split along its scene axis across the mesh, each device
computes gradients on its shard and `lax.pmean` averages them (and the metrics) before the identical optimizer
update everywhere, so the replicas never drift. With equal-sized shards and per-sample means this is the same step
as one device on the concatenated batch. The same code runs 8 GPUs or several hosts
(`jax.distributed.initialize()` first; the mesh then spans every process's devices).

  mesh = make_mesh()                                        # all devices on axis "data"
  step = data_parallel(make_update_fn(..., axis_name="data"), mesh, batch_axis=1)   # time-major (T, B, ...)
  state, metrics = step(state, batch)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shared.algos.training import TrainingState

Array = jax.Array
Batch = Any
Metrics = dict[str, Array]
LossFn = Callable[[Any, Batch, Array], tuple[Array, Metrics]]
UpdateFn = Callable[[TrainingState, Batch], tuple[TrainingState, Metrics]]

DATA_AXIS = "data"


def gradient_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, axis_name: str | None = None) -> UpdateFn:
  """One gradient of `loss_fn`, averaged over `axis_name` when given, then applied (un-jitted)."""

  def step(state: TrainingState, batch: Batch) -> tuple[TrainingState, Metrics]:
    rng, loss_rng = jax.random.split(state.rng)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, loss_rng)
    if axis_name is not None:
      grads, loss, metrics = jax.lax.pmean((grads, loss, metrics), axis_name)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1, rng=rng), metrics

  return step


def minibatch_epochs(step: UpdateFn, num_epochs: int, num_minibatches: int) -> UpdateFn:
  """`num_epochs` shuffled passes of `step` over a sample-major batch (N, ...) in `num_minibatches` pieces.

  Under data parallelism every device draws the same permutation (the rng is replicated) over its own shard.
  Metrics are averaged over all gradient steps.
  """

  def update(state: TrainingState, samples: Batch) -> tuple[TrainingState, Metrics]:
    n = jax.tree.leaves(samples)[0].shape[0]
    if n % num_minibatches:
      raise ValueError(f"{n} samples do not split into {num_minibatches} minibatches")

    def epoch(state: TrainingState, _) -> tuple[TrainingState, Metrics]:
      rng, perm_rng = jax.random.split(state.rng)
      perm = jax.random.permutation(perm_rng, n) if num_minibatches > 1 else jnp.arange(n)
      pieces = jax.tree.map(lambda x: x[perm].reshape((num_minibatches, -1) + x.shape[1:]), samples)
      return jax.lax.scan(step, state.replace(rng=rng), pieces)

    state, metrics = jax.lax.scan(epoch, state, None, length=num_epochs)
    return state, jax.tree.map(jnp.mean, metrics)

  return update


def flatten_samples(tree: Any, lead: int) -> Any:
  """Merges the first `lead` axes of every leaf into one sample axis."""
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[lead:]), tree)


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (axis_name,))


def batch_spec(batch_axis: int, axis_name: str = DATA_AXIS) -> PartitionSpec:
  return PartitionSpec(*([None] * batch_axis), axis_name)


def data_parallel(update_fn: UpdateFn, mesh: Mesh, batch_axis: int = 0, axis_name: str = DATA_AXIS) -> UpdateFn:
  """Jitted `update_fn` (built with `axis_name`) over the mesh: state replicated, every batch leaf split on
  `batch_axis` (its size must divide by the number of devices), metrics replicated."""
  sharded = jax.shard_map(update_fn, mesh=mesh, in_specs=(PartitionSpec(), batch_spec(batch_axis, axis_name)),
                          out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False)
  return jax.jit(sharded)


def shard_batch(batch: Batch, mesh: Mesh, batch_axis: int = 0, axis_name: str = DATA_AXIS) -> Batch:
  """Places a host batch on the mesh split along `batch_axis` (saves a reshuffle inside the jitted step)."""
  return jax.device_put(batch, NamedSharding(mesh, batch_spec(batch_axis, axis_name)))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


__all__ = ["DATA_AXIS", "batch_spec", "data_parallel", "flatten_samples", "gradient_step", "make_mesh",
           "minibatch_epochs", "replicate", "shard_batch"]
