"""Padding and cutting: hand-computed cases and hypothesis properties over random scenes and random caps."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.scenes import padding, types


def test_wrap_angle_values():
  a = np.array([0.0, np.pi, -np.pi, 3 * np.pi / 2, -3 * np.pi / 2, 7.0, np.pi - 1e-9])
  # pi -> -pi (half-open range); 3pi/2 -> -pi/2; 7 -> 7 - 2pi = 0.7168...; pi - 1e-9 would round onto
  # float32(pi) when cast, so the float32 version must send it to -pi.
  np.testing.assert_allclose(padding.wrap_angle(a)[:6], [0, -np.pi, -np.pi, -np.pi / 2, np.pi / 2, 7 - 2 * np.pi])
  w = padding.wrap_angle_f32(a)
  assert w.dtype == np.float32 and np.all((w >= -np.pi) & (w < np.pi)) and w[6] == np.float32(-np.pi)


def test_road_directions_hand_computed():
  # Element 1: (0,0) -> (3,4) -> (3,10); element 2: a single point; element 3: (0,0) -> (0,-2).
  x = np.array([0.0, 3.0, 3.0, 5.0, 0.0, 0.0])
  y = np.array([0.0, 4.0, 10.0, 5.0, 0.0, -2.0])
  el = np.array([1, 1, 1, 2, 3, 3])
  dx, dy = padding.road_directions(x, y, el)
  np.testing.assert_allclose(dx, [0.6, 0.0, 0.0, 0.0, 0.0, 0.0], atol=1e-12)
  np.testing.assert_allclose(dy, [0.8, 1.0, 1.0, 0.0, -1.0, -1.0], atol=1e-12)


def _line_scene(n: int, T: int = 4) -> padding.RawScene:
  """n objects on the x axis at x = 1000 + 10 * i, object n-1 is the SDC (at x = 1000 + 10 * (n - 1))."""
  raw = padding.empty_raw("line", T)
  raw.x = np.tile(1000.0 + 10.0 * np.arange(n)[:, None], (1, T))
  raw.y = np.full((n, T), 500.0)
  raw.yaw = raw.vel_x = raw.vel_y = np.zeros((n, T))
  raw.valid = np.ones((n, T), bool)
  raw.length = raw.width = np.ones(n)
  raw.object_type = np.ones(n, int)
  raw.object_id = np.arange(n) + 100
  raw.is_sdc = np.arange(n) == n - 1
  raw.controllable = np.ones(n, bool)
  raw.goal_x, raw.goal_y = raw.x[:, -1], raw.y[:, -1]
  raw.road_x = np.arange(10.0) * 100 + 1000
  raw.road_y = np.full(10, 500.0)
  raw.road_map_type = np.full(10, 2)
  raw.road_element_id = np.arange(10)
  return raw


def test_cut_keeps_sdc_and_nearest(caplog):
  raw = _line_scene(6)  # SDC at x=1050; others at 1000..1040
  cfg = types.SceneConfig(max_objects=3, max_road_points=2, max_tl_lanes=1, num_timesteps=4, init_step=1)
  with caplog.at_level(logging.WARNING):
    s, m = padding.pad_scene(raw, cfg)
  # Nearest to the SDC: ids 104 (10 m) and 103 (20 m); original order is kept, the SDC last.
  np.testing.assert_array_equal(s.objects.object_id, [103, 104, 105])
  assert m.sdc_index == 2 and m.origin_xy == (1050.0, 500.0)
  np.testing.assert_allclose(s.objects.x[:, 0], [-20, -10, 0])
  # Road points at x=1000..1900, the SDC sits at 1050: the nearest two are x=1000 and x=1100.
  np.testing.assert_allclose(s.roads.x, [-50, 50])
  assert (m.cut_objects, m.cut_road_points, m.num_objects, m.num_road_points) == (3, 8, 6, 10)
  assert "dropped 3 objects, 8 road points" in caplog.text


def test_bad_caps_and_timesteps_raise():
  with pytest.raises(ValueError, match="caps must be >= 1"):
    padding.pad_scene(_line_scene(2), types.SceneConfig(max_objects=0, num_timesteps=4))
  with pytest.raises(ValueError, match="timesteps"):
    padding.pad_scene(_line_scene(2), types.SceneConfig(num_timesteps=5))


# ---------------------------------------------------------------- properties


@st.composite
def scenes_and_caps(draw):
  T = draw(st.integers(2, 12))  # <= 20 steps: every valid SDC position is a road-cut anchor
  n = draw(st.integers(0, 14))
  elements = draw(st.lists(st.integers(1, 9), max_size=8))  # points per road element
  L = draw(st.integers(0, 4))
  cfg = types.SceneConfig(max_objects=draw(st.integers(1, 10)), max_road_points=draw(st.integers(1, 40)),
                          max_tl_lanes=draw(st.integers(1, 3)), num_timesteps=T, init_step=draw(st.integers(0, T - 1)))
  return _random_raw(draw(st.integers(0, 2**31)), n, T, elements, L, cfg.init_step, draw(st.booleans())), cfg


def _random_raw(seed, n, T, elements, L, t0, has_sdc) -> padding.RawScene:
  rng = np.random.default_rng(seed)
  raw = padding.empty_raw(f"rand{seed}", T)
  off = rng.uniform(-5e3, 5e3, 2)  # a global frame far from the origin, like WOMD
  raw.x = rng.normal(0, 50, (n, T)) + off[0]
  raw.y = rng.normal(0, 50, (n, T)) + off[1]
  raw.yaw = rng.uniform(-20, 20, (n, T))
  raw.vel_x, raw.vel_y = rng.normal(0, 5, (2, n, T))
  raw.valid = rng.random((n, T)) < 0.7
  present = rng.random(n) < 0.85  # the rest are never valid
  raw.valid[:, t0] = present
  raw.valid &= present[:, None]
  raw.x[~raw.valid] = np.nan  # garbage at invalid steps must never leak out
  raw.yaw[~raw.valid] = -1e4
  raw.length, raw.width = rng.uniform(0.5, 10, (2, n))
  raw.object_type = rng.integers(1, 4, n)
  raw.object_id = rng.permutation(n) + 7
  raw.is_sdc = np.zeros(n, bool)
  if has_sdc and present.any():
    raw.is_sdc[rng.choice(np.nonzero(present)[0])] = True
  raw.controllable = rng.random(n) < 0.5
  raw.goal_x, raw.goal_y = rng.normal(0, 50, (2, n)) + off[:, None]
  r = sum(elements)
  raw.road_x = rng.normal(0, 80, r) + off[0]
  raw.road_y = rng.normal(0, 80, r) + off[1]
  raw.road_map_type = rng.integers(0, 21, r)
  raw.road_element_id = np.repeat(np.arange(len(elements)), elements).astype(int)
  raw.tl_lane_id = np.arange(L) + 300
  raw.tl_state = rng.integers(0, 9, (L, T))
  raw.tl_valid = rng.random((L, T)) < 0.8
  raw.tl_stop_x, raw.tl_stop_y = rng.normal(0, 50, (2, L)) + off[:, None]
  return raw


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes_and_caps())
def test_padding_properties(case):
  raw, cfg = case
  s, m = padding.pad_scene(raw, cfg)
  O, P, L, T = cfg.max_objects, cfg.max_road_points, cfg.max_tl_lanes, cfg.num_timesteps
  o, r, lt = s.objects, s.roads, s.lights
  n, nr, nl = raw.x.shape[0], raw.road_x.size, raw.tl_lane_id.size
  # Shapes always equal the caps; kept counts are min(n, cap).
  assert o.x.shape == o.valid.shape == (O, T) and o.exists.shape == o.length.shape == (O,)
  assert r.x.shape == r.valid.shape == (P,) and lt.state.shape == (L, T) and lt.lane_id.shape == (L,)
  assert int(o.exists.sum()) == min(n, O) and int(r.valid.sum()) == min(nr, P)
  assert int((lt.lane_id >= 0).sum()) == min(nl, L)
  assert (m.cut_objects, m.cut_road_points, m.cut_tl_lanes) == (n - min(n, O), nr - min(nr, P), nl - min(nl, L))
  # Masks: nothing non-finite, invalid steps and padding are zero, headings wrapped.
  for leaf in (o.x, o.y, o.yaw, o.vel_x, o.vel_y, o.goal_x, o.goal_y, r.x, r.y, lt.stop_x):
    assert np.isfinite(leaf).all()
  assert not np.any(o.x[~o.valid]) and not np.any(o.yaw[~o.valid]) and not o.valid[~o.exists].any()
  assert np.all((o.yaw >= -np.pi) & (o.yaw < np.pi))
  assert not np.any(o.goal_x[~o.valid.any(-1)])  # no goal for an object that never appears
  assert not np.any(r.x[~r.valid]) and np.all(r.map_type[~r.valid] == types.MAP_UNKNOWN)
  assert not np.any(lt.state[~lt.valid])
  kept = o.object_id[o.exists]
  # The SDC is always kept, and is the object the meta points at.
  if raw.is_sdc.any():
    sdc_id = raw.object_id[raw.is_sdc][0]
    assert sdc_id in kept and o.object_id[m.sdc_index] == sdc_id and o.is_sdc.sum() == 1
  else:
    assert m.sdc_index == -1 and not o.is_sdc.any()
  # Kept objects are the nearest ones to the reference at init_step (never-valid objects count as farthest).
  ref = np.array(m.origin_xy)
  d = np.where(raw.valid[:, cfg.init_step], np.hypot(raw.x[:, cfg.init_step] - ref[0],
                                                     raw.y[:, cfg.init_step] - ref[1]), np.inf)
  is_kept = np.isin(raw.object_id, kept)
  others = ~raw.is_sdc
  if (is_kept & others).any() and (~is_kept).any():
    assert d[is_kept & others].max() <= d[~is_kept].min()
  # Kept road points are the nearest to the SDC's logged path.
  if raw.is_sdc.any() and nr > P:
    sv = raw.valid[raw.is_sdc][0]
    path = np.stack([raw.x[raw.is_sdc][0][sv], raw.y[raw.is_sdc][0][sv]], -1)
    dr = np.min(np.hypot(raw.road_x[:, None] - path[:, 0], raw.road_y[:, None] - path[:, 1]), axis=1)
    gap = np.hypot(raw.road_x[:, None] - ref[0] - r.x[r.valid], raw.road_y[:, None] - ref[1] - r.y[r.valid])
    kept_pts = gap.min(axis=1) < 1e-2
    assert dr[kept_pts].max() <= dr[~kept_pts].min() + 1e-3
