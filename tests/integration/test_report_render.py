"""The report renders from a short run: two evaluations on 2 small synthetic scenes (log and constant policy), a
metrics history and one periodic evaluation file -> report.{json,md,html}, PNGs, GIFs; every local link resolves."""

from __future__ import annotations

import html.parser
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from services.evaluator import report
from shared import evaluation
from shared.scenes import synthetic, types
from shared.sim import env

CAPS = types.SceneConfig(max_objects=24, max_road_points=3000, max_tl_lanes=8)
ENV = env.EnvConfig(control_mode="all", max_controlled=8)


class _Links(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.links: list[str] = []

  def handle_starttag(self, tag, attrs):
    self.links += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
  d = tmp_path_factory.mktemp("run")
  pairs = synthetic.generate_many(2, 5, scene_config=CAPS)
  scenarios, metas = [p[0] for p in pairs], [p[1] for p in pairs]
  for policy in ("log", "constant"):
    res = evaluation.evaluate_scenes(policy, None, scenarios, ENV, jax.random.PRNGKey(0), batch_size=2)
    rec = report.make_record(policy, res["per_agent"], metas, {"scenes": "synthetic", "num": 2, "seed": 5},
                             evaluation.eval_env_config(ENV), CAPS, [1], {"held_out_fraction": 0.5, "seed": 0})
    report.write_evaluation(str(d), rec, {k: res[k] for k in ("x", "y", "yaw")})
  with open(d / "metrics_history.jsonl", "w") as f:
    for step in range(5):
      f.write(json.dumps({"agent_steps": 1000 * step, "loss": 1.0 / (step + 1), "failure": 0.5 - 0.05 * step}) + "\n")
    f.write('{"agent_steps": 5000, "loss"')  # a line cut mid-write is skipped
  os.makedirs(d / "eval")
  with open(d / "eval" / "eval_00000_v3.json", "w") as f:
    json.dump({"params_version": 3, "split": "train", "metrics": {"failure": 0.25, "collision": 0.1}, "time_s": 1.0}, f)
  return d


@pytest.fixture(scope="module")
def built(run_dir):
  return report.build_report(str(run_dir), worst_k=1, gif_stride=10)


def test_files_exist_and_images_are_real(built):
  for key in ("json", "md", "html"):
    assert os.path.getsize(built[key]) > 500
  names = sorted(os.path.basename(p) for p in built["png"])
  assert names == ["learning_curves.png", "metrics_moving.png", "metrics_parked.png", "periodic_eval.png"]
  for p in built["png"]:
    with Image.open(p) as im:
      assert im.format == "PNG" and im.size[0] > 300
      assert len(set(np.asarray(im.convert("L")).reshape(-1).tolist())) > 8  # not a blank canvas
  assert len(built["gif"]) == 1  # worst scene of the one non-log evaluation
  with Image.open(built["gif"][0]) as im:
    assert im.format == "GIF" and im.n_frames == 10  # steps 0, 10, ..., 90


def test_every_local_link_resolves(built):
  parser = _Links()
  with open(built["html"]) as f:
    parser.feed(f.read())
  local = [l for l in parser.links if "://" not in l and not l.startswith("#")]
  assert len(local) >= 5  # 4 PNGs + 1 GIF
  base = os.path.dirname(built["html"])
  missing = [l for l in local if not os.path.isfile(os.path.join(base, l))]
  assert not missing
  md = open(built["md"]).read()
  for l in local:
    assert f"]({l})" in md  # the Markdown links the same files


def test_report_json_has_expert_row_and_counts(built):
  rep = json.load(open(built["json"]))
  assert [e["policy"] for e in rep["evaluations"]] == ["log", "constant"]
  log_e, const_e = rep["evaluations"]
  assert log_e["expert_same_agents"] is None
  # The log replay scored on the constant policy's agents: a subset of the log's agents, same counts as the policy.
  exp = const_e["expert_same_agents"]["all"]
  assert exp["agents"] == const_e["summary"]["all"]["agents"] > 0
  assert exp["progress_ratio"]["mean"] == pytest.approx(1.0, abs=1e-3)
  nf = const_e["new_failures"]["all"]
  assert nf["count"] <= const_e["summary"]["all"]["failure"]["count"]
  assert nf["total"] == exp["agents"]
  assert rep["git_commit"] is None or len(rep["git_commit"]) == 40
  assert rep["versions"]["jax"] == jax.__version__
  assert rep["periodic"][0]["failure"] == 0.25
  per_scene = const_e["per_scene"]
  assert [s["split"] for s in per_scene] == ["train", "held_out"]
  assert sum(s["summary"]["all"]["agents"] for s in per_scene) == const_e["summary"]["all"]["agents"]
