"""Learner checkpoints: save mid-run, restore into a fresh template, continue -> params, optimizer moments, step and
PRNG key bit-identical to an uninterrupted run at the same iteration; keep-last-N; atomic files; no pickle."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from services.learner import checkpoint
from shared.algos import agent as agent_lib
from shared.algos import bc_update, training
from shared.nets import actor_critic, inputs, mlp
from shared.sim import actions

T, B, O = 2, 2, 3


@pytest.fixture(scope="module")
def setup():
  net = actor_critic.NetConfig(encoder="mlp", mlp=mlp.MLPConfig(hidden=(16,), width=16), head_width=16, head_blocks=1)
  agent = agent_lib.make_agent(net, actions.ActionGridConfig(accel=(-2.0, 2.0, 3), steer=(-0.3, 0.3, 5)))
  shapes = inputs.InputShapes(num_agents=2, num_roads=4, num_route=3)
  rng = np.random.default_rng(0)
  noisy = lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32) if x.dtype == jnp.float32 else x
  obs = jax.tree.map(noisy, inputs.dummy_input(shapes, (T, B, O)))
  demo = bc_update.Demonstration(obs=obs, actions=jnp.asarray(rng.integers(0, [3, 5], size=(T, B, O, 2)), jnp.int32),
                                 reward=jnp.ones((T, B, O)), terminated=jnp.zeros((T, B, O), bool),
                                 mask=jnp.ones((T, B, O)))
  # 2 minibatches: the update draws permutations from the state's PRNG key, so a wrongly restored key shows.
  cfg = bc_update.BCUpdateConfig(num_epochs=1, num_minibatches=2)
  params = agent.host_init(0, jax.tree.map(lambda x: x[0, 0], obs))
  make_state = lambda: bc_update.init_state(jax.tree.map(jnp.array, params), cfg, jax.random.PRNGKey(7))
  return make_state, bc_update.make_bc_update_step(agent, cfg), demo


def _run(state, step, demo, n):
  for _ in range(n):
    state, _ = step(state, demo)
  return state


def test_resume_is_bit_identical_to_an_uninterrupted_run(setup, tmp_path):
  make_state, step, demo = setup
  straight = jax.device_get(_run(make_state(), step, demo, 4))

  half = _run(make_state(), step, demo, 2)
  checkpoint.save(tmp_path, half, version=2, extra={"agent_steps": 24})
  del half
  restored = checkpoint.restore_latest(tmp_path, jax.device_get(make_state()))
  assert restored is not None
  state, version, extra = restored
  assert (version, extra) == (2, {"agent_steps": 24})
  assert int(state.step) == 4  # gradient steps: 2 updates x 2 minibatches
  resumed = jax.device_get(_run(jax.tree.map(jnp.array, state), step, demo, 2))

  leaves_a, leaves_b = jax.tree.leaves(straight), jax.tree.leaves(resumed)
  assert len(leaves_a) == len(leaves_b) > 10
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # and training really moved the params, so the equality is not vacuous
  first = jax.tree.leaves(jax.device_get(make_state().params))
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(first, jax.tree.leaves(straight.params))) > 1e-4


def test_keeps_last_n_and_ignores_partial_files(setup, tmp_path):
  make_state, _, _ = setup
  state = jax.device_get(make_state())
  assert checkpoint.restore_latest(tmp_path, state) is None
  for v in (1, 5, 9, 12):
    checkpoint.save(tmp_path, state, version=v, keep=2)
  assert [v for v, _ in checkpoint.list_checkpoints(tmp_path)] == [9, 12]
  # a crash mid-write leaves only a temporary file, which is never mistaken for a checkpoint
  (tmp_path / ".tmp_crash.part").write_bytes(b"\x00garbage")
  assert checkpoint.latest_version(tmp_path) == 12
  assert checkpoint.restore_latest(tmp_path, state)[1] == 12
  data = checkpoint.checkpoint_path(tmp_path, 12).read_bytes()
  assert b"\x80\x04" not in data[:2]  # msgpack, not a pickle protocol header


def test_restore_rejects_a_mismatched_template(setup, tmp_path):
  make_state, _, _ = setup
  state = jax.device_get(make_state())
  checkpoint.save(tmp_path, state, version=1)
  wrong = state.replace(params={"other": np.zeros(3, np.float32)})
  with pytest.raises(ValueError):
    checkpoint.restore_latest(tmp_path, wrong)
