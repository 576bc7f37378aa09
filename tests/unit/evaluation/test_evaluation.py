"""Evaluation: scene splits, the baseline policies on small synthetic scenes, and the expert row on the real scenes.

The expert row (log replay of every vehicle valid at t=10 in ../shared/data/gpudrive_womd) is checked against an
independent numpy measurement of the logs: box overlaps by separating axes against every other valid object, and
off-road as any box corner on the outer side (right) of its nearest road-edge segment (Waymax's definitions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared import evaluation
from shared.scenes import dataset, synthetic, types
from shared.sim import env

CAPS = types.SceneConfig(max_objects=24, max_road_points=3000, max_tl_lanes=8)
# Cars drive on past their goals here (evaluation keeps the env's stop_at_goal): the constant policy's cars must
# keep heading and speed to the end for the straight-line check below.
ENV = env.EnvConfig(control_mode="all", max_controlled=8, stop_at_goal=False)


def _metas(ids):
  return [types.SceneMeta(name=f"s{i}.json", scenario_id=f"id{i}") for i in ids]


def test_split_scenes_is_seeded_stable_and_disjoint():
  metas = _metas(range(20))
  train, held = evaluation.split_scenes(metas, 0.25, seed=3)
  assert len(held) == 5 and len(train) == 15 and not set(train) & set(held)
  assert evaluation.split_scenes(metas, 0.25, seed=3) == (train, held)
  assert evaluation.split_scenes(metas, 0.25, seed=4)[1] != held  # another seed, another split
  # File order does not matter: the same scenario ids are held out after reversing the list.
  rev_held = evaluation.split_scenes(metas[::-1], 0.25, seed=3)[1]
  assert sorted(metas[::-1][i].scenario_id for i in rev_held) == sorted(metas[i].scenario_id for i in held)
  assert evaluation.split_scenes(_metas(range(3)), 0.01, 0)[1] != []  # at least one held out
  assert evaluation.split_scenes(_metas(range(3)), 0.0, 0) == ([0, 1, 2], [])
  with pytest.raises(ValueError):
    evaluation.split_scenes(metas, 1.0, 0)


def test_unknown_policy_and_done_signals_off():
  with pytest.raises(ValueError, match="unknown policy"):
    evaluation.make_policy("greedy-ish")
  cfg = evaluation.eval_env_config(env.EnvConfig())
  assert (cfg.done_on_collision, cfg.done_on_offroad, cfg.stop_at_goal) == (False, False, True)
  # reaching the goal keeps the training environment's meaning
  assert evaluation.eval_env_config(env.EnvConfig(stop_at_goal=False)).stop_at_goal is False


@pytest.fixture(scope="module")
def synth():
  pairs = synthetic.generate_many(2, 11, scene_config=CAPS)
  return types.stack([p[0] for p in pairs])


@pytest.fixture(scope="module")
def results(synth):
  key = jax.random.PRNGKey(0)
  out = {name: evaluation.evaluate(name, None, synth, ENV, key) for name in evaluation.BASELINES}  # one compile
  return jax.tree.map(np.asarray, out)


def test_log_replay_is_exact(results, synth):
  pa = results["log"].per_agent
  moving = pa.moving & pa.evaluated
  assert moving.sum() >= 5
  np.testing.assert_allclose(pa.progress_ratio[pa.progress_valid], 1.0, atol=1e-4)
  assert np.all(pa.ade_m[pa.evaluated] == 0.0)
  assert not np.any(pa.collision)  # synthetic logs are overlap-free by construction
  np.testing.assert_array_equal(results["log"].x, np.asarray(synth.objects.x))  # trajectories are the log


def test_random_drifts_and_constant_drives_straight(results, synth):
  rnd, const = results["random"].per_agent, results["constant"].per_agent
  assert rnd.evaluated.sum() == const.evaluated.sum() == 16  # 8 controlled per scene
  assert float(np.mean(rnd.ade_m[rnd.moving])) > 3.0  # uniform random grid actions drift metres off the log
  # Zero acceleration and steering: every controlled car keeps its heading and its speed along it at t=10, so
  # after k steps it is k * 0.1 s * v further along that heading (cars whose log ends earlier leave the scene
  # there, env.leave_at_log_end: only those logged to the end are checked).
  o = jax.tree.map(np.asarray, synth.objects)
  ev, x = const.evaluated & o.valid[..., -1], results["constant"].x
  assert ev.sum() >= 8
  k = o.x.shape[-1] - 1 - 10
  speed = o.vel_x[..., 10] * np.cos(o.yaw[..., 10]) + o.vel_y[..., 10] * np.sin(o.yaw[..., 10])
  np.testing.assert_allclose(x[..., -1][ev], (o.x[..., 10] + k * 0.1 * speed * np.cos(o.yaw[..., 10]))[ev],
                             atol=0.05)
  np.testing.assert_array_equal(x[..., :11], o.x[..., :11])  # the history before t=10 is the log


@pytest.mark.slow  # a compile of its own (~20-60 s on 2 busy cores)
def test_grid_expert_tracks_the_log(synth):
  grid = jax.tree.map(np.asarray, evaluation.evaluate("expert-grid", None, synth, ENV, jax.random.PRNGKey(0)))
  pa = grid.per_agent
  assert pa.evaluated.sum() == 16
  # Measured: moving ADE ~0.1 m, progress ~1.0 (Waymax's grid expert on these scenes: 0.23 m).
  assert float(np.mean(pa.ade_m[pa.moving])) < 0.5
  assert np.mean(pa.progress_ratio[pa.progress_valid]) == pytest.approx(1.0, abs=0.05)


@pytest.mark.slow  # a compile of its own (~20-60 s on 2 busy cores)
def test_network_policy_fn_matches_constant(synth, results):
  # A "network" returning zero acceleration and steering scaled by its params drives like the constant baseline.
  fn = lambda params, obs, key: jnp.zeros(obs.ego.shape[:1] + (2,), jnp.float32) * params["scale"]
  out = evaluation.evaluate(fn, {"scale": jnp.float32(1.0)}, synth, ENV, jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(out.x), results["constant"].x, atol=1e-5)
  assert np.array_equal(np.asarray(out.per_agent.failure), results["constant"].per_agent.failure)


# THE EXPERT ROW ON THE REAL SCENES

REAL = types.SceneConfig(max_objects=128, max_road_points=20000, max_tl_lanes=16)


def _corners(x, y, yaw, length, width):
  """(..., 4, 2) box corners, numpy."""
  c, s = np.cos(yaw)[..., None], np.sin(yaw)[..., None]
  lx = 0.5 * length[..., None] * np.array([1.0, -1.0, -1.0, 1.0])
  ly = 0.5 * width[..., None] * np.array([1.0, 1.0, -1.0, -1.0])
  return np.stack([x[..., None] + c * lx - s * ly, y[..., None] + s * lx + c * ly], -1)


def _overlaps_np(corners, valid):
  """(O,) bool: box i intersects some other valid box (separating axis test over both boxes' edge normals)."""
  edges = np.stack([corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 1]], 1)  # (O, 2, 2)
  axes = edges / np.maximum(np.linalg.norm(edges, axis=-1, keepdims=True), 1e-9)
  o = corners.shape[0]
  proj = (axes.reshape(-1, 2) @ corners.reshape(-1, 2).T).reshape(o, 2, o, 4)  # box b's corners on axis k of a
  lo, hi = proj.min(-1), proj.max(-1)  # (owner a, k, box b)
  sep = np.zeros((o, o), bool)  # sep[a, b]: an axis of box a separates a and b
  for k in range(2):
    l, h = lo[:, k, :], hi[:, k, :]
    sep |= (h.diagonal()[:, None] < l) | (h < l.diagonal()[:, None])
  sep |= sep.T  # an axis of either box separates the pair
  both = valid[:, None] & valid[None, :] & ~np.eye(o, dtype=bool)
  return np.any(~sep & both, axis=1)


def _edge_segments_np(roads):
  is_edge = np.isin(roads.map_type, types.MAP_ROAD_EDGE_IDS) & roads.valid
  nxt = np.roll(np.arange(is_edge.size), -1)
  ok = is_edge & is_edge[nxt] & (roads.element_id == roads.element_id[nxt])
  ok[-1] = False
  return roads.x[ok], roads.y[ok], roads.x[nxt][ok], roads.y[nxt][ok]


def _offroad_np(points, seg, margin: float = 25.0):
  """(N,) bool: a point lies right of (outside) its nearest road-edge segment; ties at a shared vertex go to the
  segment with the larger perpendicular offset, whose side test is the valid one. Only segments near the points'
  bounding box are searched (all of them when none is within `margin`: then the nearest may lie further out)."""
  lo, hi = points.min(0) - margin, points.max(0) + margin
  near = (seg[0] > lo[0]) & (seg[0] < hi[0]) & (seg[1] > lo[1]) & (seg[1] < hi[1])
  ax, ay, bx, by = (a[None, near] for a in seg)
  px, py = points[:, 0:1], points[:, 1:2]
  dx, dy = bx - ax, by - ay
  l2 = np.maximum(dx * dx + dy * dy, 1e-12)
  u = np.clip(((px - ax) * dx + (py - ay) * dy) / l2, 0.0, 1.0)
  d = np.hypot(ax + u * dx - px, ay + u * dy - py)
  if d.shape[1] == 0 or d.min(1).max() > margin - 2.0:
    return _offroad_np(points, seg, np.inf) if np.isfinite(margin) else np.zeros(len(points), bool)
  perp = (dx * (py - ay) - dy * (px - ax)) / np.sqrt(l2)  # > 0: left = road side
  best = np.argmin(d - 1e-3 * np.abs(perp), axis=1)
  return perp[np.arange(len(best)), best] < 0.0


def _log_flags_np(scenario, init_step: int):
  """(collision, offroad, vehicle) per object, (O,) each, over logged steps init_step+1..T-1 where valid."""
  o = scenario.objects
  seg = _edge_segments_np(scenario.roads)
  corners = _corners(o.x, o.y, o.yaw, o.length[:, None], o.width[:, None])  # (O, T, 4, 2)
  vehicle = o.valid[:, init_step] & (o.object_type == types.TYPE_VEHICLE)
  coll = np.zeros(o.x.shape[0], bool)
  for t in range(init_step + 1, o.x.shape[1]):
    ids = np.nonzero(o.valid[:, t])[0]
    coll[ids] |= _overlaps_np(corners[ids, t], np.ones(ids.size, bool))
  off = np.zeros(o.x.shape[0], bool)
  for i in np.nonzero(vehicle)[0]:
    steps = np.nonzero(o.valid[i, init_step + 1:])[0] + init_step + 1
    if steps.size and seg[0].size:
      off[i] = _offroad_np(corners[i, steps].reshape(-1, 2), seg).any()
  return coll & vehicle, off, vehicle


@pytest.mark.slow
def test_expert_row_on_real_scenes(real_scene_dir):
  res = dataset.load_folder(real_scene_dir, REAL)
  out = evaluation.evaluate_scenes("log", None, res.scenarios, env.EnvConfig(), jax.random.PRNGKey(0), batch_size=2)
  pa = out["per_agent"]
  ev = pa["evaluated"]
  assert ev.sum() == 234  # every vehicle valid at t=10 (data README: 249 objects valid, 234 of them vehicles)
  assert pa["moving"].sum() == 85
  np.testing.assert_allclose(pa["progress_ratio"][pa["progress_valid"]], 1.0, atol=1e-4)
  assert pa["progress_valid"].sum() == 84  # moving and a logged path >= 1 m after t=10
  ref = [_log_flags_np(jax.tree.map(np.asarray, sc), 10) for sc in res.scenarios]
  coll_ref = np.stack([r[0] for r in ref])
  off_ref = np.stack([r[1] for r in ref])
  assert np.array_equal(np.stack([r[2] for r in ref]), ev)
  # Measured by the numpy reference: log collisions 1 of 234 vehicles (0.4%), off-road 95 of 234 (40.6%; moving:
  # 1 of 85, 1.2%), the figures Waymax gives on these scenes. The simulator's metrics must find the same vehicles.
  assert (int(coll_ref.sum()), int(off_ref.sum()), int((off_ref & pa["moving"]).sum())) == (1, 95, 1)
  assert int(coll_ref.sum()) == int(pa["collision"].sum())
  assert np.array_equal(pa["collision"], coll_ref)
  assert np.sum(pa["offroad"] != off_ref) <= 2, np.argwhere(pa["offroad"] != off_ref)
