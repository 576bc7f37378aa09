"""Rendering: PNGs of a real and a synthetic scene are real pictures, GIFs have the expected frames, the CLI works."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from services.cli import scenes_synth
from shared.scenes import gpudrive, render, synthetic, types

CAPS = types.SceneConfig(max_objects=64, max_road_points=20000, max_tl_lanes=16)
LIGHTS_FILE = "tfrecord-00000-of-00150_2a173b334be3d32c.json"  # the real scene with traffic lights


@pytest.fixture(scope="module")
def real(real_scene_dir):
  return gpudrive.read_scene(str(real_scene_dir / LIGHTS_FILE), CAPS)


@pytest.fixture(scope="module")
def synth():
  return synthetic.generate(3, scene_config=CAPS)


def _assert_picture(path, min_bytes=10_000):
  assert path.stat().st_size > min_bytes
  with Image.open(path) as im:
    assert im.size == (800, 800)
    rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
  colours = np.unique(rgb[::7], axis=0)
  assert len(colours) > 20  # map, boxes, lines, lights, anti-aliasing: far from a blank canvas
  # No single colour covers the picture: the grey background is most of it but not all.
  _, counts = np.unique(rgb[::7], axis=0, return_counts=True)
  assert counts.max() / counts.sum() < 0.95


def test_png_of_real_scene(real, tmp_path):
  sc, meta = real
  out = tmp_path / "real.png"
  fig = render.render_scene(sc, meta, t=10, out=str(out))
  _assert_picture(out)
  assert meta.scenario_id in fig.axes[0].get_title() and "t=10" in fig.axes[0].get_title()


def test_png_of_synthetic_scene(synth, tmp_path):
  sc, meta = synth
  out = tmp_path / "synth.png"
  render.render_scene(sc, meta, out=str(out))
  _assert_picture(out)


def test_view_is_centred_on_objects_not_on_far_road_points(real):
  sc, meta = real
  fig = render.render_scene(sc, meta, t=10)
  (x0, x1), (y0, y1) = fig.axes[0].get_xlim(), fig.axes[0].get_ylim()
  o, r = sc.objects, sc.roads
  road_span = np.ptp(r.x[r.valid])
  assert x1 - x0 < 0.8 * road_span  # this map reaches far beyond the traffic
  ox, oy = o.x[o.valid], o.y[o.valid]
  inside = (ox > x0) & (ox < x1) & (oy > y0) & (oy < y1)
  assert inside.mean() > 0.95  # the 1st-99th percentile window plus a 20 m margin


def test_agent_styles_mark_sdc_and_log_following():
  obj = types.ObjectTracks(
      x=None, y=None, yaw=None, vel_x=None, vel_y=None, valid=None, length=None, width=None,
      object_type=np.array([1, 1, 2]), object_id=None, is_sdc=np.array([True, False, False]),
      controllable=np.array([True, False, False]), exists=None, goal_x=None, goal_y=None)
  face, _, lw, ls = render.agent_style(obj)
  assert np.allclose(face[0, :3], (214 / 255, 39 / 255, 40 / 255)) and lw[0] == 2.0
  assert face[1, 3] == pytest.approx(0.35) and ls[1] == "--" and ls[0] == "-"  # log-following: pale, dashed
  assert not np.allclose(face[2, :3], face[1, :3])  # pedestrians differ from vehicles


def test_box_polygons_hand_computed():
  # A 4 x 2 box at (1, 2) heading +90 deg: front-left corner is 2 m ahead (+y) and 1 m to the left (-x).
  p = render.box_polygons(np.array([1.0]), np.array([2.0]), np.array([np.pi / 2]), np.array([4.0]), np.array([2.0]))
  assert np.allclose(p[0], [[0.0, 4.0], [0.0, 0.0], [2.0, 0.0], [2.0, 4.0]])


def test_gif_log_replay_and_policy_vs_log(synth, tmp_path):
  sc, meta = synth
  out = tmp_path / "replay.gif"
  n = render.render_replay_gif(sc, str(out), meta, stride=10)
  assert n == 10  # t = 0, 10, ..., 90
  with Image.open(out) as im:
    assert im.n_frames == 10 and im.size == (540, 540)
    im.seek(0)
    first = np.asarray(im.convert("RGB")).astype(int)
    im.seek(9)
    last = np.asarray(im.convert("RGB")).astype(int)
  assert (np.abs(first - last).sum(-1) > 0).mean() > 0.002  # the cars moved between t=0 and t=90
  o = sc.objects
  sim = (o.x + 2.0 * o.valid, o.y, o.yaw)
  out2 = tmp_path / "policy.gif"
  assert render.render_replay_gif(sc, str(out2), meta, sim_xy_yaw=sim, stride=30) == 4
  with Image.open(out2) as im:
    assert im.n_frames == 4


def test_bad_step_is_refused(synth):
  with pytest.raises(ValueError, match="outside"):
    render.render_scene(synth[0], synth[1], t=91)


def _run_cli(argv):
  parser = argparse.ArgumentParser()
  scenes_synth.register(parser.add_subparsers())
  args = parser.parse_args(argv)
  return args.func(args)


def test_cli_render_synthetic_and_real(real_scene_dir, tmp_path):
  png, gif = tmp_path / "s3.png", tmp_path / "s3.gif"
  assert _run_cli(["render", "synthetic:3", "--out", str(png), "--gif", str(gif), "--stride", "45"]) == 0
  _assert_picture(png)
  with Image.open(gif) as im:
    assert im.n_frames == 3  # t = 0, 45, 90
  real_png = tmp_path / "real.png"
  assert _run_cli(["render", str(real_scene_dir / LIGHTS_FILE), "--out", str(real_png), "--t", "40"]) == 0
  _assert_picture(real_png)
  assert _run_cli(["render", "synthetic:x", "--out", str(tmp_path / "bad.png")]) == 1
  assert _run_cli(["render", str(tmp_path / "missing.json"), "--out", str(tmp_path / "bad.png")]) == 1


def test_cli_load_scene_synthetic_is_generate():
  a, ma = scenes_synth.load_scene("synthetic:5", CAPS)
  b, mb = synthetic.generate(5, scene_config=CAPS)
  assert ma == mb and np.array_equal(a.objects.x, b.objects.x)
