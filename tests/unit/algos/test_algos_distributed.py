"""Data-parallel updates: one step on a 2-device CPU mesh (XLA_FLAGS=--xla_force_host_platform_device_count=2, in a
subprocess so this process keeps its single device) equals one step on 1 device with the concatenated batch, for
the BC and the PPO learners (to 1e-5), and the replicas stay identical.

Equal-sized shards with every sample valid and one minibatch make per-shard means average to the global mean;
PPO's per-minibatch advantage normalisation is switched off (a per-shard statistic, the one intended difference)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent("""
  import dataclasses, json
  import jax, jax.numpy as jnp, numpy as np
  from shared.algos import agent as agent_lib, bc_update, distributed, ppo, ppo_update, training
  from shared.nets import actor_critic, inputs, mlp
  from shared.sim import actions

  assert jax.device_count() == 2, jax.devices()
  net = actor_critic.NetConfig(encoder="mlp", mlp=mlp.MLPConfig(hidden=(16,), width=16), head_width=16, head_blocks=1)
  agent = agent_lib.make_agent(net, actions.ActionGridConfig(accel=(-2.0, 2.0, 3), steer=(-0.3, 0.3, 5)))
  shapes = inputs.InputShapes(num_agents=2, num_roads=4, num_route=3)
  T, B, O = 3, 4, 2
  rng = np.random.default_rng(0)
  def noisy(x):
    return jnp.asarray(rng.normal(size=x.shape), jnp.float32) if x.dtype == jnp.float32 else x
  obs = jax.tree.map(noisy, inputs.dummy_input(shapes, (T + 1, B, O)))
  params = agent.host_init(0, jax.tree.map(lambda x: x[0, 0], obs))
  factors = jnp.asarray(rng.integers(0, [3, 5], size=(T, B, O, 2)), jnp.int32)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  ones = jnp.ones((T, B, O), jnp.float32)
  term = jnp.zeros((T, B, O), bool).at[1, 0, 0].set(True)
  traj = ppo_update.Trajectory(obs=obs, actions=factors, behaviour_logp=f(T, B, O) - 4.0, behaviour_value=f(T, B, O),
                               reward=f(T, B, O), terminated=term, truncated=jnp.zeros((T, B, O), bool), mask=ones)
  demo = bc_update.Demonstration(obs=jax.tree.map(lambda x: x[:T], obs), actions=factors, reward=f(T, B, O),
                                 terminated=term, mask=ones)
  opt = training.OptimizerConfig(learning_rate=1e-2)
  ppo_cfg = ppo_update.PPOUpdateConfig(ppo=ppo.PPOConfig(normalize_advantages=False, use_vtrace=True),
                                       optimizer=opt, num_epochs=2, num_minibatches=1)
  bc_cfg = bc_update.BCUpdateConfig(optimizer=opt, num_epochs=2, num_minibatches=1)
  cases = {"ppo": (ppo_update.make_ppo_update_fn, ppo_cfg, traj), "bc": (bc_update.make_bc_update_fn, bc_cfg, demo)}
  mesh = distributed.make_mesh()
  out = {}
  for name, (make, cfg, batch) in cases.items():
    state = training.init_training_state(params, training.make_optimizer(cfg.optimizer), jax.random.PRNGKey(1))
    single, m1 = jax.jit(make(agent, cfg))(state, batch)
    step = distributed.data_parallel(make(agent, cfg, axis_name="data"), mesh, batch_axis=1)
    multi, m2 = step(distributed.replicate(state, mesh), distributed.shard_batch(batch, mesh, batch_axis=1))
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), single.params, multi.params))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), single.params, params))
    shards = [np.asarray(s.data) for s in jax.tree.leaves(multi.params)[0].addressable_shards]
    out[name] = {"max_diff": max(diffs), "moved": max(moved), "loss": [float(m1["loss"]), float(m2["loss"])],
                 "replicas_equal": bool(np.array_equal(shards[0], shards[1])), "steps": int(multi.step)}
  print("RESULT", json.dumps(out))
""")


@pytest.mark.slow  # a fresh JAX process compiling 4 update steps: ~50 s of CPU
def test_two_device_step_equals_one_device_step_on_the_concatenated_batch(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)  # ~50 s alone; 300 s was exceeded at load 16 on 2 cores
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  result = json.loads(line[len("RESULT "):])
  for name in ("ppo", "bc"):
    r = result[name]
    assert r["moved"] > 1e-3, r  # the step really changed the params (lr 1e-2, 2 epochs)
    assert r["max_diff"] < 1e-5, r
    assert abs(r["loss"][0] - r["loss"][1]) < 1e-5, r
    assert r["replicas_equal"], r
    assert r["steps"] == 2, r


def test_initialize_is_a_no_op_for_one_process_and_checks_its_arguments():
  import jax

  from shared.algos import distributed

  assert distributed.initialize() is False  # the learner's default flags: one process, no coordinator
  assert distributed.initialize("127.0.0.1:1", num_processes=1, process_id=0) is False
  assert not jax.distributed.is_initialized()
  with pytest.raises(ValueError):
    distributed.initialize("127.0.0.1:1", num_processes=0, process_id=0)


def test_global_batch_of_one_process_is_the_whole_batch_split_on_the_batch_axis():
  import jax
  import numpy as np

  from shared.algos import distributed

  mesh = distributed.make_mesh()
  x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  g = distributed.global_batch({"x": x}, mesh, batch_axis=1)["x"]
  assert g.shape == (2, 3, 4) and g.sharding.spec == distributed.batch_spec(1)
  np.testing.assert_array_equal(np.asarray(g), x)
  np.testing.assert_array_equal(distributed.host_copy(distributed.replicate({"x": x}, mesh))["x"], x)
  assert jax.process_count() == 1
