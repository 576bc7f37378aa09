"""shared.sim.rows: the controlled objects' rows, and the fused path's collect on them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.sim import rows as rows_lib


def test_gather_scatter_round_trip_and_zero_elsewhere():
  controlled = jnp.array([[False, True, False, True, True], [True, False, False, False, False]])
  rows = rows_lib.acting_rows(controlled, 3)
  np.testing.assert_array_equal(rows.index, [[1, 3, 4], [0, 0, 0]])
  np.testing.assert_array_equal(rows.ok, [[True, True, True], [True, False, False]])
  x = jnp.arange(2 * 5 * 2, dtype=jnp.float32).reshape(2, 5, 2) + 1.0
  got = rows.gather(x)
  np.testing.assert_array_equal(got[0], x[0, jnp.array([1, 3, 4])])
  np.testing.assert_array_equal(got[1], [x[1, 0], [0, 0], [0, 0]])  # empty rows are zero, not object 0
  back = rows.scatter(got)
  np.testing.assert_array_equal(back, jnp.where(controlled[..., None], x, 0.0))
  flags = rows.gather(jnp.ones((2, 5), bool))
  np.testing.assert_array_equal(flags, rows.ok)


def test_num_rows():
  assert rows_lib.num_rows("sdc", 64, 128) == 1
  assert rows_lib.num_rows("all", 64, 32) == 32
  assert rows_lib.num_rows("random", 16, 32) == 16


def test_fused_collect_on_rows_matches_every_object_rollout():
  """The rows rollout takes the same steps as one that acts with the same per-object actions on all O slots:
  same rewards and flags of the controlled objects, and the per-row observations are the full rows'."""
  from shared.algos import agent as agent_lib
  from shared.algos import fused
  from shared.nets import actor_critic
  from shared.scenes import synthetic
  from shared.sim import env

  scenes = [sc for sc, _ in synthetic.generate_many(2, seed=3)]
  ecfg = env.EnvConfig(control_mode="all", max_controlled=8)
  cfg = fused.FusedConfig(env=ecfg, num_scenes=2, num_steps=6)
  agent = agent_lib.make_agent(actor_critic.preset("tiny", "mlp"), ecfg.actions)
  params = agent.host_init(0, fused.observation_example(scenes[0], ecfg))
  from shared.scenes import types
  pool = jax.tree.map(jnp.asarray, types.stack(scenes))
  c = jax.jit(lambda p, sc, k: fused.collect(agent, cfg, p, sc, k, expert=True))(params, pool, jax.random.PRNGKey(0))
  m = min(8, pool.objects.x.shape[1])
  assert c.reward.shape == (6, 2, m) and c.acting.shape == (6, 2, m)
  # Reference: the same grid expert on every object slot, rows picked afterwards.
  state = jax.jit(lambda sc, k: env.reset_batch(sc, k, ecfg))(pool, jax.random.split(jax.random.PRNGKey(0))[0])
  rows = rows_lib.acting_rows(state.controlled, m)
  assert int(c.acting[0].sum()) == int(jnp.sum(state.controlled)) > 0
  act = fused._expert_act(agent, ecfg)

  @jax.jit  # one compile for the six reference steps (eager, each step took minutes on 2 cores)
  def ref_step(s, key):
    grid, _ = jax.vmap(act)(s, jax.random.split(key, 2))
    return env.step_batch(s, grid, ecfg)

  s, rewards, obs0 = state, [], rows.gather(jax.jit(jax.vmap(lambda x: env.observe(x, ecfg)))(state))
  for t in range(6):
    s, out = ref_step(s, jax.random.PRNGKey(t))
    rewards.append(rows.gather(out.reward))
  np.testing.assert_allclose(c.reward, jnp.stack(rewards), atol=1e-6)
  np.testing.assert_allclose(c.obs.ego[0], agent_lib.as_net_input(obs0).ego, atol=1e-6)


@pytest.mark.slow  # two evaluation compiles (~1 min on 2 cores)
def test_network_policy_on_rows_evaluates_like_on_every_object():
  """shared.evaluation runs a network policy on the controlled rows only: same trajectories and episode metrics as
  running it on every object slot (a per-agent network does not care which other rows it is batched with)."""
  from shared import evaluation
  from shared.algos import agent as agent_lib
  from shared.algos import fused
  from shared.nets import actor_critic
  from shared.scenes import synthetic, types
  from shared.sim import env

  scenes = [sc for sc, _ in synthetic.generate_many(2, seed=5)]
  ecfg = env.EnvConfig(control_mode="all", max_controlled=8)
  agent = agent_lib.make_agent(actor_critic.preset("tiny", "mlp"), ecfg.actions)
  params = agent.host_init(1, fused.observation_example(scenes[0], ecfg))
  batch = jax.tree.map(jnp.asarray, types.stack(scenes))
  fn = agent.policy_fn(greedy=True)
  out = {r: evaluation.evaluate(evaluation.from_policy_fn(fn, on_rows=r), params, batch, ecfg, jax.random.PRNGKey(0),
                                num_steps=12) for r in (True, False)}
  np.testing.assert_allclose(out[True].x, out[False].x, atol=1e-5)
  np.testing.assert_allclose(out[True].yaw, out[False].yaw, atol=1e-5)
  for f in ("failure", "goal_reached", "progress_ratio"):
    np.testing.assert_allclose(np.asarray(getattr(out[True].per_agent, f)),
                               np.asarray(getattr(out[False].per_agent, f)), atol=1e-5)
  moved = np.abs(np.asarray(out[True].x[..., -1] - out[True].x[..., ecfg.init_step]))
  assert moved.max() > 0.5  # the policy really drove something
