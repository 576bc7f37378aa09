"""Data parallelism across two PROCESSES: two Python processes (JAX_PLATFORMS=cpu, one CPU device each) join JAX's
distributed runtime through `distributed.initialize` on a free 127.0.0.1 port, each feeds only its own half of
every batch (`distributed.global_batch`) to the PPO update wrapped in `data_parallel`, and after 3 updates (2
epochs each, V-trace targets) both hold the same params, equal to a single-process run on the concatenated
batches (to 1e-5). Gradients cross processes through gloo.

As in the 2-device test: equal shards, every sample valid, one minibatch, advantage normalisation off (a per-shard
statistic). This file is also the worker: `python test_algos_two_process.py PROCESS_ID PORT OUT_DIR`.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
T, B, O = 3, 4, 2  # B: the global batch; each of the 2 processes holds B // 2 scenes
NUM_UPDATES = 3


def _setup():
  """(agent, params, config, batches): the same on every process (seeded), batches are the global (T, B, O) ones."""
  import jax
  import jax.numpy as jnp

  from shared.algos import agent as agent_lib
  from shared.algos import ppo, ppo_update, training
  from shared.nets import actor_critic, inputs, mlp
  from shared.sim import actions

  net = actor_critic.NetConfig(encoder="mlp", mlp=mlp.MLPConfig(hidden=(16,), width=16), head_width=16, head_blocks=1)
  agent = agent_lib.make_agent(net, actions.ActionGridConfig(accel=(-2.0, 2.0, 3), steer=(-0.3, 0.3, 5)))
  shapes = inputs.InputShapes(num_agents=2, num_roads=4, num_route=3)
  rng = np.random.default_rng(0)
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  noisy = lambda x: f(*x.shape) if x.dtype == jnp.float32 else np.asarray(x)
  batches = []
  for _ in range(NUM_UPDATES):
    batches.append(ppo_update.Trajectory(
        obs=jax.tree.map(noisy, inputs.dummy_input(shapes, (T + 1, B, O))),
        actions=rng.integers(0, [3, 5], size=(T, B, O, 2)).astype(np.int32), behaviour_logp=f(T, B, O) - 4.0,
        behaviour_value=f(T, B, O), reward=f(T, B, O), terminated=rng.random((T, B, O)) < 0.2,
        truncated=np.zeros((T, B, O), bool), mask=np.ones((T, B, O), np.float32)))
  params = agent.host_init(0, jax.tree.map(lambda x: x[0, 0], batches[0].obs))
  config = ppo_update.PPOUpdateConfig(ppo=ppo.PPOConfig(normalize_advantages=False, use_vtrace=True),
                                      optimizer=training.OptimizerConfig(learning_rate=1e-2), num_epochs=2,
                                      num_minibatches=1)
  return agent, params, config, batches


def _flat(params) -> dict[str, np.ndarray]:
  import jax
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def worker(process_id: int, port: int, out_dir: str) -> None:
  """One learner replica: joins the runtime, trains on its half of every batch, writes params + losses (npz)."""
  from shared.algos import distributed

  assert distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  import jax

  from shared.algos import ppo_update

  assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 2, 1)
  agent, params, config, batches = _setup()
  mesh = distributed.make_mesh()
  step = distributed.data_parallel(ppo_update.make_ppo_update_fn(agent, config, axis_name="data"), mesh,
                                   batch_axis=1)
  state = distributed.replicate(ppo_update.init_state(params, config, jax.random.PRNGKey(1)), mesh)
  half = B // 2
  losses = []
  for batch in batches:
    local = jax.tree.map(lambda x: x[:, process_id * half:(process_id + 1) * half], batch)
    state, metrics = step(state, distributed.global_batch(local, mesh, batch_axis=1))
    losses.append(float(distributed.host_copy(metrics["loss"])))
  np.savez(os.path.join(out_dir, f"process_{process_id}.npz"), **_flat(distributed.host_copy(state.params)),
           __loss__=np.asarray(losses), __step__=np.asarray(distributed.host_copy(state.step)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # three JAX processes each compiling the PPO update on 2 cores: ~60 s
def test_two_processes_match_one_process_on_the_concatenated_batches(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)  # one device per process: the mesh must span the two processes
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, __file__, str(k), str(port), str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(2)]
  try:
    # The single-process reference, computed here while the two replicas run.
    import jax

    from shared.algos import ppo_update

    agent, params, config, batches = _setup()
    update = jax.jit(ppo_update.make_ppo_update_fn(agent, config))
    state = ppo_update.init_state(params, config, jax.random.PRNGKey(1))
    losses = []
    for batch in batches:
      state, metrics = update(state, batch)
      losses.append(float(metrics["loss"]))
    single = _flat(jax.device_get(state.params))
    outputs = [p.communicate(timeout=400)[0] for p in procs]  # ~60 s alone, 170 s measured on a loaded machine
  finally:
    for p in procs:
      p.kill()
      p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  runs = [np.load(tmp_path / f"process_{k}.npz", allow_pickle=False) for k in range(2)]
  assert sorted(k for k in runs[0].files if not k.startswith("__")) == sorted(single)
  assert len(single) > 10
  moved = max(float(np.max(np.abs(single[k] - v))) for k, v in _flat(params).items())
  assert moved > 1e-2, moved  # 6 Adam steps at lr 1e-2 really moved the params: the equality is not vacuous
  for name, value in single.items():
    np.testing.assert_array_equal(runs[0][name], runs[1][name])  # the replicas never drift
    np.testing.assert_allclose(runs[0][name], value, rtol=0, atol=1e-5, err_msg=name)
  np.testing.assert_allclose(runs[0]["__loss__"], losses, rtol=0, atol=1e-5)
  assert int(runs[0]["__step__"]) == int(state.step) == NUM_UPDATES * config.num_epochs


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
