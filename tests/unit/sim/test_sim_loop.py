"""shared.sim.loop: the one collect loop equals stepping env.step_batch by hand (act gets step k's key and the
observation the last step returned; records, final state and observation); key_chain is the `rng, key = split(rng)`
chain; label_ok against a numpy reading of the log; the simulator's expert records are valid exactly where the row
acts and label_ok holds.

Two synthetic scenes of 22 steps (11 simulated from t=10). Scene 0's log ends at t=12 for every object (they leave
the scene, and their last logged step has no label); object 1 of scene 1 is missing from the log at t=12 (a gap
the expert interpolates across, so its label at t=11 stays valid).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.scenes import synthetic, types
from shared.sim import actions, env, loop

T = 22
STEPS = T - 1 - 10
CAPS = types.SceneConfig(max_objects=12, max_road_points=1500, max_tl_lanes=8, num_timesteps=T)
CFG = env.EnvConfig(control_mode="all", max_controlled=4)
NUM_ACTIONS = actions.num_actions(CFG.actions)


@pytest.fixture(scope="module")
def batch():
  syn = synthetic.SyntheticConfig(num_timesteps=T, num_vehicles=(4, 8))
  b = types.stack([s for s, _ in synthetic.generate_many(2, 4, syn, CAPS)])
  valid = np.array(b.objects.valid)
  valid[0, :, 13:] = False
  assert valid[1, 1, 10:14].all()
  valid[1, 1, 12] = False
  return jax.tree.map(jnp.asarray, b.replace(objects=b.objects.replace(valid=jnp.asarray(valid))))


def _act(state, obs, key):
  """Uniform random grid actions for every object (the env moves only the controlled ones)."""
  a = jax.random.randint(key, state.objects.x.shape, 0, NUM_ACTIONS, jnp.int32)
  return a, a


def _record(state, obs, extras, out):
  return {"action": extras, "t": state.t, "ego": obs.ego, "reward": out.reward, "done": out.done,
          "truncated": out.truncated, "x": out.objects.x}


def test_run_equals_stepping_env_by_hand(batch):
  keys = jax.random.split(jax.random.PRNGKey(3), STEPS)
  state0 = jax.jit(lambda b: env.reset_batch(b, jax.random.PRNGKey(0), CFG))(batch)
  obs0 = jax.jit(lambda s: loop.observe(CFG, s))(state0)
  run = jax.jit(lambda s, o, k: loop.run(CFG, _act, s, o, k, _record))
  final, obs, rec = jax.tree.map(np.asarray, run(state0, obs0, keys))

  step = jax.jit(lambda s, a: env.step_batch(s, a, CFG))
  s, o, want = state0, obs0, []
  for k in range(STEPS):
    a, _ = _act(s, o, keys[k])
    nxt, out = step(s, a)
    want.append(_record(s, o, a, out))
    s, o = nxt, out.obs
  want = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *want)

  assert rec["action"].shape == (STEPS, 2, CAPS.max_objects)
  np.testing.assert_array_equal(rec["action"], want["action"])  # step k acted with keys[k]
  np.testing.assert_array_equal(rec["t"], want["t"])
  for k in ("reward", "x", "ego"):
    np.testing.assert_allclose(rec[k], want[k], atol=1e-5, err_msg=k)
  for k in ("done", "truncated"):
    np.testing.assert_array_equal(rec[k], want[k], err_msg=k)
  np.testing.assert_allclose(final.objects.x, np.asarray(s.objects.x), atol=1e-5)
  np.testing.assert_array_equal(final.t, np.asarray(s.t))
  for got, exp in zip(jax.tree.leaves(obs), jax.tree.leaves(o)):  # the final observation is the last step's
    np.testing.assert_allclose(got, np.asarray(exp), atol=1e-5)
  assert rec["done"][:, 0].any() and np.abs(np.diff(rec["x"], axis=0)).max() > 0.1  # cars left, cars moved


def test_key_chain_is_one_split_per_step():
  rng, want = jax.random.PRNGKey(5), []
  for _ in range(4):
    rng, key = jax.random.split(rng)
    want.append(key)
  np.testing.assert_array_equal(jax.jit(loop.key_chain, static_argnums=1)(jax.random.PRNGKey(5), 4), np.stack(want))


def test_label_ok_reads_the_log_at_t_and_after(batch):
  state0 = jax.jit(lambda b: env.reset_batch(b, jax.random.PRNGKey(0), CFG))(batch)
  valid = np.asarray(batch.objects.valid)
  got = {t: np.asarray(jax.jit(jax.vmap(loop.label_ok))(state0.replace(t=jnp.full((2,), t, jnp.int32))))
         for t in range(10, T)}
  for t, ok in got.items():
    want = valid[..., t] & (valid[..., t + 1:].any(-1) if t + 1 < T else False)
    np.testing.assert_array_equal(ok, want, err_msg=f"t={t}")
  assert got[11][1, 1] and not got[12][1, 1]  # across the gap: labelled at t=11; not logged at t=12
  assert not got[12][0].any() and got[11][0].any()  # scene 0's last logged step (12) has no label
  assert not got[T - 1].any()


@pytest.mark.slow  # compiles the simulator's grid-expert loop (~30-60 s on 2 busy cores)
def test_expert_records_are_valid_where_acting_and_label_ok(batch):
  from shared.acting import engine as engine_lib, policy_net

  pn = policy_net.build("mlp", "tiny", CFG.obs, CFG.actions, 0, CFG.num_road_candidates)
  eng = engine_lib.Engine(CFG, 4, policy=pn)
  eng.load(batch)
  state0, feat0, rows = eng.state, np.asarray(eng.feat), eng.rows
  rec = eng.expert()
  m = rows.num_rows
  assert rec["valid"].shape == rec["action"].shape == (STEPS, 2 * m) and rec["action"].dtype == np.int32
  np.testing.assert_array_equal(rec["obs"][0], feat0)
  last = T - 1
  done_before = np.zeros(2 * m, bool)
  for k in range(STEPS):
    t = 10 + k
    label = jax.vmap(loop.label_ok)(state0.replace(t=jnp.full((2,), t, jnp.int32)))
    label = np.asarray(rows.gather(label)).reshape(-1)
    acting = np.asarray(rows.ok).reshape(-1) & ~done_before & (t < last)
    np.testing.assert_array_equal(rec["valid"][k], acting & label, err_msg=f"step {k}")
    done_before |= rec["done"][k]
    if k == 2:
      assert (acting & ~label).any()  # scene 0's rows act at t=12 without a label
