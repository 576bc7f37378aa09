"""The env computes metrics, observations and candidate refreshes for the controlled objects alone ("rows"): the
controlled rows of a step must equal the every-object computation (metrics.step_metrics, the reference), the other
rows must be zero, scenes with nothing controlled (log replay) must still get every object's metrics, the rows-only
and every-object branches of `_finish` must agree, and so must a smaller row bucket (EnvConfig.row_buckets).

Two synthetic scenes of 32 objects, at most 6 controlled (so most valid vehicles are replayed), random grid actions
with done signals on and paper 002's dense rewards, candidates refreshed every 3 steps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.scenes import synthetic, types
from shared.sim import actions, env, metrics, observations, rewards

CFG = env.EnvConfig(max_controlled=6, candidate_refresh_steps=3, reward=rewards.RewardConfig.paper_002(),
                    row_buckets=(4,))  # batches with at most 4 controlled per scene take a 4-row branch
SCENE_CFG = types.SceneConfig(max_objects=32, max_road_points=4000)
STEPS = 7


@pytest.fixture(scope="module")
def scenes():
  sc = [s for s, _ in synthetic.generate_many(2, seed=3, scene_config=SCENE_CFG)]
  return jax.tree.map(jnp.asarray, types.stack(sc))


def _reference(prev, state, cfg: env.EnvConfig):
  """Every object's metrics (the pre-rows computation), and the reward and done flags the env derives from them."""
  m = metrics.step_metrics(prev, state, cfg.metrics)
  acting = prev.controlled & ~prev.done
  reward = rewards.compute_reward(m, prev, state, cfg.reward) * acting
  ended = (prev.goal_reached | m.goal_reached) | m.overlap | m.offroad  # stop_at_goal, done on collision / off-road
  done = prev.done | (acting & ended) | (acting & ~state.objects.valid)
  return m, reward, done


_ref_batch = jax.jit(jax.vmap(lambda p, s: _reference(p, s, CFG)))
_step_batch = jax.jit(lambda s, a: env.step_batch(s, a, CFG))


def _rollout(state, steps, seed=0):
  """[(prev, state, out)] of `steps` random-action steps (numpy leaves)."""
  key = jax.random.PRNGKey(seed)
  got = []
  for _ in range(steps):
    key, sub = jax.random.split(key)
    a = jax.random.randint(sub, state.controlled.shape, 0, actions.num_actions(CFG.actions))
    nxt, out = _step_batch(state, a)
    got.append((state, nxt, out))
    state = nxt
  return got


def _assert_close(a, b, where=None):
  a, b = np.asarray(a), np.asarray(b)
  if where is not None:
    a, b = a[where], b[where]
  if a.dtype == bool:
    np.testing.assert_array_equal(a, b)
  else:
    # float32 rounding: cos and sin evaluated in or out of a fused loop can differ in the last bit (a few ulp).
    np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-6, atol=1e-6)


def test_controlled_rows_match_every_object_reference_and_others_are_zero(scenes):
  state = jax.jit(lambda s: env.reset_batch(s, jax.random.PRNGKey(0), CFG))(scenes)
  ctrl = np.asarray(state.controlled)
  others = ~ctrl & np.asarray(state.objects.valid)
  assert (ctrl.sum(1) == CFG.max_controlled).all() and others.sum() >= 4  # replayed vehicles exist in both scenes
  events = 0
  for prev, nxt, out in _rollout(state, STEPS):
    ref_m, ref_reward, ref_done = _ref_batch(prev, nxt)
    for f in dataclasses.fields(metrics.StepMetrics):
      _assert_close(getattr(out.metrics, f.name), getattr(ref_m, f.name), ctrl)
      assert not np.any(np.asarray(getattr(out.metrics, f.name))[~ctrl]), f.name  # zero / False elsewhere
    _assert_close(out.reward, ref_reward, ctrl)
    _assert_close(out.done, ref_done, ctrl)
    assert not np.any(np.asarray(out.reward)[~ctrl]) and not np.any(np.asarray(out.done)[~ctrl])
    events += int(np.sum(np.asarray(ref_m.offroad | ref_m.overlap | ref_m.goal_reached)[ctrl]))
    # Replayed objects' reference metrics are real (not zero): the rows path really skipped them.
    assert np.asarray(ref_m.speed_mps)[others].any()
  assert events > 0  # done signals and penalties were exercised


def test_rows_and_every_object_branches_agree(scenes):
  state = jax.jit(lambda s: env.reset_batch(s, jax.random.PRNGKey(1), CFG))(scenes)
  prev, nxt, _ = _rollout(state, 1, seed=5)[0]
  finish = jax.jit(lambda p, s, rows_only: jax.vmap(lambda a, b: env._finish_parts(a, b, CFG, rows_only))(p, s),
                   static_argnums=2)
  rows, every = finish(prev, nxt, True), finish(prev, nxt, False)
  for a, b in zip(jax.tree.leaves(rows), jax.tree.leaves(every)):
    _assert_close(a, b)
  # Observations of controlled rows equal the stand-alone observation (every object) at those rows.
  ctrl = np.asarray(prev.controlled)
  alone = jax.jit(jax.vmap(lambda s: observations.observe(s, CFG.obs)))(nxt)
  _assert_close(observations.flatten(rows[2].obs), observations.flatten(alone), ctrl)


def test_log_replay_mixed_batch_and_row_bucket(scenes):
  state = jax.jit(lambda s: env.reset_batch(s, jax.random.PRNGKey(2), CFG))(scenes)
  ctrl0 = np.asarray(state.controlled)
  cases = {"log replay": (np.zeros_like(ctrl0), 2), "scene 1 replayed": (ctrl0 & (np.arange(2) == 0)[:, None], 2),
           "3 controlled per scene": (ctrl0 & (np.cumsum(ctrl0, 1) <= 3), 0)}
  for name, (mask, branch) in cases.items():
    # branch: 0 = the 4-row bucket, 1 = max_controlled rows, 2 = every object
    assert int(env._branch(jnp.asarray(mask.sum(1)), CFG)) == branch, name
    s0 = state.replace(controlled=jnp.asarray(mask))
    for prev, nxt, out in _rollout(s0, 4, seed=7):
      ref_m, _, _ = _ref_batch(prev, nxt)
      every = ~mask.any(1, keepdims=True) | mask  # scenes with nothing controlled: every row; else the controlled
      for f in dataclasses.fields(metrics.StepMetrics):
        got, ref = np.asarray(getattr(out.metrics, f.name)), np.asarray(getattr(ref_m, f.name))
        _assert_close(got, ref, every)
        assert not np.any(got[~every]), f.name
      assert np.asarray(out.metrics.valid)[1].sum() >= (3 if mask[1].any() else 4)
      assert np.asarray(ref_m.speed_mps)[1].any()


def test_rows_refresh_equals_full_refresh_at_the_rows(scenes):
  state = jax.jit(lambda s: env.reset_batch(s, jax.random.PRNGKey(0), CFG))(scenes)
  moved = state.replace(objects=state.objects.replace(x=state.objects.x + 7.0, y=state.objects.y - 3.0))

  def both(s):
    rows, slot, slot_ok, _ = env._rows(s, CFG)
    return env._refresh_rows(s, CFG, rows, slot, slot_ok), env.refresh_candidates(s, CFG)

  part, full = jax.jit(jax.vmap(both))(moved)
  ctrl = np.asarray(state.controlled)
  assert not np.array_equal(np.asarray(full.road_candidates)[ctrl], np.asarray(state.road_candidates)[ctrl])
  for a, b, old in zip(jax.tree.leaves((part.road_candidates, part.road_cache)),
                       jax.tree.leaves((full.road_candidates, full.road_cache)),
                       jax.tree.leaves((state.road_candidates, state.road_cache))):
    np.testing.assert_array_equal(np.asarray(a)[ctrl], np.asarray(b)[ctrl])  # refreshed rows: the same
    np.testing.assert_array_equal(np.asarray(a)[~ctrl], np.asarray(old)[~ctrl])  # the others: kept


def test_rows_only_config_matches_default_and_drops_the_fallback(scenes):
  # EnvConfig.rows_only compiles the rows branches alone: scenes with 1..max_controlled controlled objects step
  # exactly as by default; a scene with none (log replay) gets zero metrics instead of every object's.
  cfg = dataclasses.replace(CFG, rows_only=True)
  assert len(env._branches(cfg, True)[1]) == 2 and len(env._branches(CFG, True)[1]) == 3  # (4, 6) rows; + every
  step_rows_only = jax.jit(lambda s, a: env.step_batch(s, a, cfg))
  state = jax.jit(lambda s: env.reset_batch(s, jax.random.PRNGKey(3), CFG))(scenes)
  key = jax.random.PRNGKey(4)
  for _ in range(4):  # crosses a refresh (every 3 steps)
    key, sub = jax.random.split(key)
    a = jax.random.randint(sub, state.controlled.shape, 0, actions.num_actions(CFG.actions))
    want, got = _step_batch(state, a), step_rows_only(state, a)
    for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      _assert_close(x, y)
    state = want[0]
  replay = state.replace(controlled=state.controlled & (jnp.arange(2) == 1)[:, None])  # scene 0: nothing controlled
  assert int(env._branch(replay.controlled.sum(1), cfg)) == 1 and int(env._branch(replay.controlled.sum(1), CFG)) == 2
  a = jnp.zeros(state.controlled.shape, jnp.int32)
  want, got = _step_batch(replay, a)[1].metrics, step_rows_only(replay, a)[1].metrics
  assert np.asarray(want.valid)[0].sum() >= 4 and not np.asarray(got.valid)[0].any()
  for f in dataclasses.fields(metrics.StepMetrics):  # scene 1 (controlled rows) the same either way
    _assert_close(np.asarray(getattr(want, f.name))[1], np.asarray(getattr(got, f.name))[1])
