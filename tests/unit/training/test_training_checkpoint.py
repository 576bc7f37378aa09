"""Learner checkpoints: save mid-run, restore into a fresh template, continue -> params, optimizer moments, step and
PRNG key bit-identical to an uninterrupted run at the same iteration; keep-last-N; atomic
(orbax: a kill mid-write leaves the previous checkpoint); no pickle."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.training import checkpoint
from shared.algos import agent as agent_lib
from shared.algos import bc_update, training
from shared.nets import actor_critic, inputs, mlp
from shared.sim import actions

REPO = pathlib.Path(__file__).resolve().parents[3]


def _pull_loss(params, batch, rng):
  """Pulls every parameter towards noise drawn from `rng`, weighted by the minibatch: cheap to compile, and the
  result depends on the PRNG key and on which samples each minibatch got (a wrongly restored key shows)."""
  flat = jnp.concatenate([x.ravel() for x in jax.tree.leaves(params)])
  noise = 0.1 * jax.random.normal(rng, flat.shape)  # one draw: a PRNG per leaf compiles for a minute on CPU
  return jnp.mean((flat - noise) ** 2) * jnp.mean(batch), {}


@pytest.fixture(scope="module")
def setup():
  """The real agent's params and the BC learner's optimizer state, updated by a cheap loss (2 minibatches)."""
  net = actor_critic.NetConfig(encoder="mlp", mlp=mlp.MLPConfig(hidden=(16,), width=16), head_width=16, head_blocks=1)
  agent = agent_lib.make_agent(net, actions.ActionGridConfig(accel=(-2.0, 2.0, 3), steer=(-0.3, 0.3, 5)))
  shapes = inputs.InputShapes(num_agents=2, num_roads=4, num_route=3)
  params = agent.host_init(0, inputs.dummy_input(shapes, ()))
  cfg = bc_update.BCUpdateConfig(num_epochs=1, num_minibatches=2)
  make_state = lambda: bc_update.init_state(jax.tree.map(jnp.array, params), cfg, jax.random.PRNGKey(7))
  step = training.make_minibatch_update_step(_pull_loss, training.make_optimizer(cfg.optimizer), 1, 2)
  weights = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, size=8), jnp.float32)
  return make_state, step, weights


def _run(state, step, batch, n):
  for _ in range(n):
    state, _ = step(state, batch)
  return state


def test_resume_is_bit_identical_to_an_uninterrupted_run(setup, tmp_path):
  make_state, step, batch = setup
  straight = jax.device_get(_run(make_state(), step, batch, 4))

  half = _run(make_state(), step, batch, 2)
  checkpoint.save(tmp_path, half, version=2, extra={"agent_steps": 24})
  del half
  restored = checkpoint.restore_latest(tmp_path, jax.device_get(make_state()))
  assert restored is not None
  state, version, extra = restored
  assert (version, extra) == (2, {"agent_steps": 24})
  assert int(state.step) == 4  # gradient steps: 2 updates x 2 minibatches
  resumed = jax.device_get(_run(jax.tree.map(jnp.array, state), step, batch, 2))
  other_key = jax.device_get(_run(jax.tree.map(jnp.array, state.replace(rng=np.asarray(jax.random.PRNGKey(8)))),
                                  step, batch, 2))
  assert not np.array_equal(jax.tree.leaves(other_key.params)[0], jax.tree.leaves(straight.params)[0])

  leaves_a, leaves_b = jax.tree.leaves(straight), jax.tree.leaves(resumed)
  assert len(leaves_a) == len(leaves_b) > 10
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # and training really moved the params, so the equality is not vacuous
  first = jax.tree.leaves(jax.device_get(make_state().params))
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(first, jax.tree.leaves(straight.params))) > 1e-4


def test_keeps_last_n_and_ignores_partial_directories(setup, tmp_path):
  make_state, _, _ = setup
  state = jax.device_get(make_state())
  assert checkpoint.restore_latest(tmp_path, state) is None
  for v in (1, 5, 9, 12):
    checkpoint.save(tmp_path, state, version=v, keep=2)
  assert [v for v, _ in checkpoint.list_checkpoints(tmp_path)] == [9, 12]
  assert checkpoint.save(tmp_path, state, version=12, keep=2) == checkpoint.checkpoint_path(tmp_path, 12)  # no-op
  with pytest.raises(ValueError):
    checkpoint.save(tmp_path, state, version=3, keep=2)  # older than the newest: never silently dropped
  # A kill mid-write leaves orbax's temporary directory (here: a copy of a whole one with the array data cut).
  partial = tmp_path / "ckpt_0000000013.orbax-checkpoint-tmp"
  shutil.copytree(checkpoint.checkpoint_path(tmp_path, 12), partial)
  shutil.rmtree(partial / "state" / "ocdbt.process_0")
  assert checkpoint.latest_version(tmp_path) == 12
  restored, version, _ = checkpoint.restore_latest(tmp_path, state)
  assert version == 12 and int(restored.step) == int(state.step)
  checkpoint.save(tmp_path, state, version=15, keep=2)  # the next save clears the leftover temporary directory
  assert not partial.exists()
  assert [v for v, _ in checkpoint.list_checkpoints(tmp_path)] == [12, 15]
  unmarked = tmp_path / "ckpt_0000000016"  # a step-named directory without orbax's commit marker is not complete
  shutil.copytree(checkpoint.checkpoint_path(tmp_path, 15), unmarked)
  (unmarked / checkpoint.COMMIT_MARKER).unlink()
  assert checkpoint.latest_version(tmp_path) == 15
  # no pickle anywhere: no file of the checkpoint starts with a pickle protocol header
  files = [f for f in checkpoint.checkpoint_path(tmp_path, 15).rglob("*") if f.is_file()]
  assert len(files) >= 4 and not any(f.read_bytes()[:1] == b"\x80" for f in files)


KILLED_WRITER = """
import sys, numpy as np
from shared.training import checkpoint
for v in range(1, 1000):  # 4 MB per version: ~0.1 s of writing
  checkpoint.save(sys.argv[1], {"w": np.full((1 << 20,), v, np.float32), "v": np.asarray(v)}, v, {"v": v}, keep=2)
  print(v, flush=True)
"""


def _kill_mid_write(directory: pathlib.Path) -> bool:
  """Runs the writer, kills it (-9) while orbax's temporary directory exists; True if it was still there after."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(directory)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  tmp = lambda: [p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
  try:
    for _ in range(2):
      assert proc.stdout.readline(), "the writer died"
    deadline = time.monotonic() + 30
    while not tmp() and time.monotonic() < deadline:
      time.sleep(0.001)
  finally:
    proc.kill()
    proc.wait()
  return bool(tmp())


def test_a_kill_mid_write_leaves_the_last_complete_checkpoint(tmp_path):
  template = {"w": np.zeros((1 << 20,), np.float32), "v": np.asarray(0)}
  for attempt in range(3):  # the rename may just beat the kill: retry until the kill really lands mid-write
    directory = tmp_path / str(attempt)
    directory.mkdir()
    mid_write = _kill_mid_write(directory)
    state, version, extra = checkpoint.restore_latest(directory, template)
    assert version >= 2 and extra == {"v": version}
    assert int(state["v"]) == version and np.all(state["w"] == version)
    if mid_write:
      break
  assert mid_write


def test_restore_rejects_a_mismatched_template(setup, tmp_path):
  make_state, _, _ = setup
  state = jax.device_get(make_state())
  checkpoint.save(tmp_path, state, version=1)
  wrong = state.replace(params={"other": np.zeros(3, np.float32)})
  with pytest.raises(ValueError):
    checkpoint.restore_latest(tmp_path, wrong)
