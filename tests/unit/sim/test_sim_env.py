"""Env contract: reset/step/rollout shapes on a batch of 2 real scenes (1 and all controlled), log following, scan ==
Python loop, stop-at-goal and done flags, leaving at the log's end, jit == eager, and the controlled-set rules (caps,
mark_as_expert, seeds).

Every distinct env function costs one XLA compile of the full step (observations, metrics, rewards: 10-40 s on 2
shared cores), so the fast tests share one rollout (module fixture); the tests needing another compile are slow.
Scene 74e892ddfe3b9b8 has 4 objects valid at t=10; 6d2a107f2e8390a has 7.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.scenes import gpudrive, padding, types
from shared.sim import actions, control, env, prefetch, rollout

SMALL_FILES = ("tfrecord-00004-of-00150_74e892ddfe3b9b8.json", "tfrecord-00000-of-00150_6d2a107f2e8390a.json")
CAPS = types.SceneConfig(max_objects=32)  # both scenes fit (7 and 18 objects); roads keep the default cap
CFG_SDC = env.EnvConfig(control_mode="sdc", max_controlled=1)
CFG_ALL = env.EnvConfig(control_mode="all", max_controlled=64, done_on_collision=False, done_on_offroad=False)
STRAIGHT = actions.num_actions(actions.ActionGridConfig()) // 2  # row 45: (0 m/s^2, 0 rad)
STEPS = 12  # crosses the road-candidate refresh at t = 20


def _straight(params, obs, key):  # a per-scene policy: keep speed and heading
  return jnp.full((32,), STRAIGHT, jnp.int32)


@pytest.fixture(scope="module")
def pair(real_scene_dir):
  scenes = [gpudrive.read_scene(str(real_scene_dir / f), CAPS)[0] for f in SMALL_FILES]
  return types.stack(scenes)


def _eligible_at_init(batch) -> np.ndarray:
  o = batch.objects
  valid = np.asarray(o.valid)
  return (np.asarray(o.controllable) | np.asarray(o.is_sdc)) & valid[..., 10] & valid[..., 11:].any(-1)


@pytest.fixture(scope="module")
def rolled(pair):
  """reset_batch + rollout_batch (lax.scan) of 12 straight-ahead steps, all vehicles controlled: one compile."""
  def run(batch, key):
    first = env.reset_batch(batch, key, CFG_ALL)
    last, outs = rollout.rollout_batch(_straight, None, first, STEPS, CFG_ALL, key)
    return first, last, outs
  return jax.tree.map(np.asarray, jax.jit(run)(pair, jax.random.PRNGKey(0)))


def test_all_controlled_shapes_and_log_following(pair, rolled):
  first, last, outs = rolled
  np.testing.assert_array_equal(first.controlled, _eligible_at_init(pair))
  assert first.road_candidates.shape == (2, 32, CFG_ALL.num_road_candidates) and (last.t == 10 + STEPS).all()
  assert outs.reward.shape == outs.done.shape == outs.truncated.shape == outs.objects.x.shape == (STEPS, 2, 32)
  for leaf in jax.tree.leaves(outs.obs) + jax.tree.leaves(outs.metrics):
    assert leaf.shape[:3] == (STEPS, 2, 32), leaf.shape
  # Objects not controlled are exactly where (and whether) the log has them, at every step.
  free = ~first.controlled
  log = pair.objects
  for k in range(STEPS):
    np.testing.assert_array_equal(outs.objects.x[k][free], log.x[..., 11 + k][free])
    np.testing.assert_array_equal(outs.objects.valid[k][free], log.valid[..., 11 + k][free])
  # Controlled ones not stopped at their goal drove straight: after one step x = x0 + 0.1 v cos(yaw).
  o0 = jax.tree.map(lambda a: a[..., 10], log)
  drove = first.controlled & ~outs.done[0]
  assert drove.sum() >= 3  # the moving ones (3 of 11 controlled vehicles)
  speed = o0.vel_x * np.cos(o0.yaw) + o0.vel_y * np.sin(o0.yaw)
  np.testing.assert_allclose(outs.objects.x[0][drove], (o0.x + 0.1 * speed * np.cos(o0.yaw))[drove], atol=1e-4)


def test_stop_at_goal_freezes_and_done_is_latched(pair, rolled):
  first, _, outs = rolled
  ctrl = first.controlled
  # Parked controlled cars sit on their goal (their last logged position): done after the first step.
  parked = ctrl & (np.hypot(pair.objects.vel_x, pair.objects.vel_y).max(-1) < 0.5)
  assert parked.sum() >= 2 and outs.done[0][parked].all()
  for k in range(1, STEPS):
    assert (outs.done[k] >= outs.done[k - 1]).all()  # latched
    was = outs.done[k - 1] & outs.objects.valid[k]
    np.testing.assert_array_equal(outs.objects.x[k][was], outs.objects.x[k - 1][was])  # frozen
    assert (outs.reward[k][outs.done[k - 1]] == 0).all()  # no reward once done
  assert (outs.objects.vel_x[1][outs.done[0]] == 0).all()
  assert not (outs.done & ~ctrl[None]).any()  # only controlled objects are ever done


@pytest.mark.slow  # one more compile of the batched step (~35 s on busy cores)
def test_scan_rollout_equals_python_loop(rolled):
  first, _, outs = rolled
  step = jax.jit(lambda s: env.step_batch(s, jnp.full((2, 32), STRAIGHT, jnp.int32), CFG_ALL))
  state = jax.tree.map(jnp.asarray, first)
  for k in range(STEPS):
    state, out = step(state)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(jax.tree.map(lambda x: x[k], outs))):
      np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # one more compile of the batched step
def test_sdc_only_batch(pair):
  def run(batch, key):
    state = env.reset_batch(batch, key, CFG_SDC)
    return state, env.step_batch(state, jnp.full((2, 32), STRAIGHT + 13, jnp.int32), CFG_SDC)  # +1.33 m/s^2

  first, (state, out) = jax.tree.map(np.asarray, jax.jit(run)(pair, jax.random.PRNGKey(3)))
  np.testing.assert_array_equal(first.controlled, pair.objects.is_sdc)
  assert first.controlled.sum(-1).tolist() == [1, 1] and out.reward.shape == (2, 32)
  sdc = first.controlled
  v0 = np.hypot(first.objects.vel_x, first.objects.vel_y)[sdc]
  v1 = np.hypot(state.objects.vel_x, state.objects.vel_y)[sdc]
  np.testing.assert_allclose(v1, v0 + 4 / 3 * 0.1, atol=1e-4)  # the SDC accelerated by the grid's +1.333 m/s^2
  free = ~sdc
  np.testing.assert_array_equal(state.objects.y[free], pair.objects.y[..., 11][free])


def test_controlled_set_caps_experts_and_seeds(real_scene_dir):
  files = {"792d": "tfrecord-00005-of-00150_792d65eb579314db.json", "db4e": "tfrecord-00000-of-01000_4.json"}
  sc = {k: gpudrive.read_scene(str(real_scene_dir / f), types.SceneConfig(max_objects=100, max_road_points=8))[0]
        for k, f in files.items()}
  key = jax.random.PRNGKey(0)
  # 792d: 73 objects valid at t=10, all vehicles, no experts -> "all" capped at 8 picks the SDC plus 7 nearest.
  m = np.asarray(control.select_controlled(sc["792d"], "all", 8, key, 10))
  o = sc["792d"].objects
  assert m.sum() == 8 and m[np.asarray(o.is_sdc)].all()
  d = np.hypot(o.x[:, 10] - o.x[o.is_sdc, 10], o.y[:, 10] - o.y[o.is_sdc, 10])
  elig = np.asarray(o.controllable) & np.asarray(o.valid[:, 10]) & np.asarray(o.valid[:, 11:]).any(-1)
  assert d[m].max() <= np.sort(d[elig])[7] + 1e-6
  # db4e: 41 objects marked as experts in the JSON: never controlled, even with room for 64.
  raw = json.loads((real_scene_dir / files["db4e"]).read_text())
  expert = np.zeros(100, bool)
  expert[: len(raw["objects"])] = [bool(x.get("mark_as_expert", False)) for x in raw["objects"]]
  assert expert.sum() == 41
  m = np.asarray(control.select_controlled(sc["db4e"], "all", 64, key, 10))
  od = sc["db4e"].objects
  vehicles_ok = ((np.asarray(od.object_type) == types.TYPE_VEHICLE) & np.asarray(od.valid[:, 10]) & ~expert
                 & np.asarray(od.valid[:, 11:]).any(-1))
  np.testing.assert_array_equal(m & ~np.asarray(od.is_sdc), vehicles_ok & ~np.asarray(od.is_sdc))
  assert not (m & expert & ~np.asarray(od.is_sdc)).any()
  # random: seeded, capped, only eligible objects.
  r1 = np.asarray(control.select_controlled(sc["792d"], "random", 5, key, 10))
  r2 = np.asarray(control.select_controlled(sc["792d"], "random", 5, key, 10))
  r3 = np.asarray(control.select_controlled(sc["792d"], "random", 5, jax.random.PRNGKey(7), 10))
  assert r1.sum() == 5 and (r1 == r2).all() and (r1 != r3).any() and not (r1 & ~elig).any()
  # sdc: exactly the self-driving car.
  np.testing.assert_array_equal(control.select_controlled(sc["792d"], "sdc", 1, key, 10), np.asarray(o.is_sdc))
  # moving: the eligible objects less those whose logged speed never exceeds 1 m/s from t on (computed here from
  # the raw velocities), the self-driving car kept; fewer than 64 of them, so none is cut by the cap.
  mv = np.asarray(control.select_controlled(sc["792d"], "moving", 64, key, 10))
  speed = np.hypot(np.asarray(o.vel_x), np.asarray(o.vel_y))[:, 10:]
  moves = ((speed > 1.0) & np.asarray(o.valid[:, 10:])).any(-1)
  expected = elig & (moves | np.asarray(o.is_sdc))
  assert 1 < expected.sum() < min(elig.sum(), 64)  # the scene has both parked and moving vehicles
  np.testing.assert_array_equal(mv, expected)


def _parked_pair_scene(log_end: int = 90) -> types.Scenario:
  """Two parked cars 20 m apart on a lane, each on its goal; the second car's log ends at `log_end`."""
  raw = padding.empty_raw("parked", 91)
  raw.x = np.stack([np.zeros(91), np.full(91, 20.0)])
  raw.y, raw.yaw, raw.vel_x, raw.vel_y = (np.zeros((2, 91)) for _ in range(4))
  raw.valid = np.ones((2, 91), bool)
  raw.valid[1, log_end + 1:] = False
  raw.length, raw.width = np.array([4.5, 4.5]), np.array([2.0, 2.0])
  raw.object_type, raw.object_id = np.array([1, 1]), np.array([0, 1])
  raw.is_sdc, raw.controllable = np.array([True, False]), np.array([True, True])
  raw.goal_x, raw.goal_y = np.array([0.0, 20.0]), np.zeros(2)
  raw.road_x, raw.road_y = np.linspace(-30, 50, 17), np.full(17, 0.0)
  raw.road_map_type, raw.road_element_id = np.full(17, types.MAP_LANE_SURFACE_STREET), np.zeros(17, int)
  return padding.pad_scene(raw, types.SceneConfig(max_objects=4, max_road_points=32, max_tl_lanes=1))[0]


@pytest.mark.slow
def test_leave_at_log_end_and_stop_at_goal_off():
  # Car 1's log ends at t=13: it leaves after the step to t=14 (done, truncated, invalid); car 0 keeps driving.
  cfg = env.EnvConfig(control_mode="all", max_controlled=2, stop_at_goal=False, done_on_collision=False,
                      done_on_offroad=False)
  full_gas = jnp.full((4,), actions.num_actions(cfg.actions) - 7, jnp.int32)  # row 84: (+4 m/s^2, 0 rad)
  state0 = jax.jit(lambda sc: env.reset(sc, jax.random.PRNGKey(0), cfg))(_parked_pair_scene(log_end=13))
  _, outs = jax.jit(lambda s: rollout.rollout(lambda p, o, k: full_gas, None, s, 4, cfg, jax.random.PRNGKey(1)))(
      state0)
  np.testing.assert_array_equal(outs.objects.valid[:, 1], [True, True, True, False])
  np.testing.assert_array_equal(outs.truncated[:, 1], [False, False, False, True])
  np.testing.assert_array_equal(outs.done[:, :2], [[False, False]] * 3 + [[False, True]])
  # Car 0 accelerates on: x = 0.1^2 * 4 * (1 + 2 + 3 + 4) = 0.4 m (no stop at goal).
  np.testing.assert_allclose(outs.objects.x[:, 0], [0.04, 0.12, 0.24, 0.4], atol=1e-5)
  # jit == eager for the env's own part of a step (moving objects; observations, metrics and rewards check theirs
  # in their own tests: an eager full step dispatches thousands of ops, ~2 minutes here).
  accel_steer = actions.decode(full_gas, cfg.actions)
  eager = env._advance(state0, accel_steer[:, 0], accel_steer[:, 1], cfg)
  jitted = jax.jit(lambda s, a: env._advance(s, a[:, 0], a[:, 1], cfg))(state0, accel_steer)
  for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=1e-5, atol=1e-5)


def test_prefetcher_keeps_two_batches_on_device_in_order():
  batches = ({"x": np.full((3,), i, np.float32)} for i in range(5))
  pf = prefetch.Prefetcher(batches, size=2)
  assert len(pf) == 2  # double buffer filled before the first batch is asked for
  got = []
  for b in pf:
    assert isinstance(b["x"], jax.Array)
    got.append(float(b["x"][0]))
    assert len(pf) <= 2
  assert got == [0.0, 1.0, 2.0, 3.0, 4.0]
  with pytest.raises(ValueError):
    prefetch.Prefetcher([], size=0)
