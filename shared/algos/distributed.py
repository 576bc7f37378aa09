"""Gradient steps that average over data-parallel devices, and the wrapper that runs an update on a device mesh.

Every learner's update is written once as a pure `update_fn(state, batch) -> (state, metrics)` built from
`gradient_step` / `minibatch_epochs` below with an optional `axis_name`. On one device it is simply jitted; under
`data_parallel` the state is replicated, the batch is split along its scene axis across the mesh, each device
computes gradients on its shard and `lax.pmean` averages them (and the metrics) before the identical optimizer
update everywhere, so the replicas never drift. With equal-sized shards and per-sample means this is the same step
as one device on the concatenated batch.

One process, any number of local devices (8 GPUs, or CPU with XLA_FLAGS=--xla_force_host_platform_device_count=N):

  mesh = make_mesh()                                        # all devices on axis "data"
  step = data_parallel(make_update_fn(..., axis_name="data"), mesh, batch_axis=1)   # time-major (T, B, ...)
  state, metrics = step(replicate(state, mesh), shard_batch(batch, mesh, batch_axis=1))

Several processes (hosts), each with its own data: the same code after `initialize`, with `global_batch` building
the global batch from each process's local part (local B_i, global B = sum of B_i in process order):

  initialize("10.0.0.1:8476", num_processes=4, process_id=k)     # before any other JAX call
  mesh = make_mesh()                                        # now spans every process's devices
  state, metrics = step(replicate(state, mesh), global_batch(local_batch, mesh, batch_axis=1))
  params = host_copy(state.params)                          # numpy, identical on every process
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

if TYPE_CHECKING:  # training.py builds its jitted steps from this module
  from shared.algos.training import TrainingState

Array = jax.Array
Batch = Any
Metrics = dict[str, Array]
LossFn = Callable[[Any, Batch, Array], tuple[Array, Metrics]]
UpdateFn = Callable[["TrainingState", Batch], tuple["TrainingState", Metrics]]

DATA_AXIS = "data"


# UPDATES

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
  A single minibatch is not permuted (the full-batch mean does not depend on the order; the rng is still split).
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


# PROCESSES

def initialize(coordinator: str | None = None, num_processes: int | None = 1, process_id: int | None = None) -> bool:
  """Joins JAX's distributed runtime so that `jax.devices()` (and `make_mesh`) span every process; call it first.

  Args:
    coordinator: "host:port" of process 0's coordinator (every process passes the same address).
    num_processes: 1 (default): a single process, nothing to join. None: JAX detects everything from the
      environment (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, Kubernetes, ...).
    process_id: this process's rank in [0, num_processes).
  A `coordinator` or `process_id` left None is filled by JAX from the same environment. The learner maps its
  --coordinator / --num-processes / --process-id flags onto these arguments. CPU processes exchange through gloo.

  Returns:
    True when running as one of several processes, False for a single process. Calling it again is a no-op.
  """
  if jax.distributed.is_initialized():
    return True
  if num_processes == 1:
    return False
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  # gloo is jax 0.10's default for CPU collectives; pinned so an older default ("none") cannot hang a CPU run.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes, process_id)
  return True


# PLACEMENT

def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process, process 0's first)."""
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
  """Places a whole host batch (one process) on the mesh split along `batch_axis`."""
  return jax.device_put(batch, NamedSharding(mesh, batch_spec(batch_axis, axis_name)))


def global_batch(local_batch: Batch, mesh: Mesh, batch_axis: int = 0, axis_name: str = DATA_AXIS) -> Batch:
  """The global batch, split along `batch_axis`, from this process's local part (every process calls it with its
  own samples, the same shapes everywhere; its local size must divide by its local device count).

  The global `batch_axis` is the processes' local parts concatenated in process order. With one process this
  is `shard_batch`.
  """
  sharding = NamedSharding(mesh, batch_spec(batch_axis, axis_name))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies of `tree` on every mesh device (with several processes every process must pass the same values)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def host_copy(tree: Any) -> Any:
  """Numpy copy of replicated arrays from this process's first replica (`np.asarray` refuses arrays that span
  processes)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x),
                      tree)


__all__ = ["DATA_AXIS", "batch_spec", "data_parallel", "flatten_samples", "global_batch", "gradient_step",
           "host_copy", "initialize", "make_mesh", "minibatch_epochs", "replicate", "shard_batch"]
