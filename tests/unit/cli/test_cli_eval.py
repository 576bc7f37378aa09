"""`drivelab eval` / `drivelab report` through the real argument parser on 2 small synthetic scenes."""

from __future__ import annotations

import json
import os

import pytest

from services.cli import eval_cmd, main

SMALL = ["--max-objects", "24", "--max-road-points", "3000", "--max-tl-lanes", "8"]


def _run(argv: list[str]) -> int:
  parser = main.build_parser("*")
  args = parser.parse_args(argv)
  return args.func(args)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  d = tmp_path_factory.mktemp("cli")
  out = d / "log.json"
  rc = _run(["eval", "log", "--scenes", "synthetic", "--num", "2", "--seed", "5", "--agents", "8", "--out", str(out),
             "--run-dir", str(d / "run"), "--batch-size", "2"] + SMALL)
  return rc, out, d / "run"


def test_eval_writes_record(evaluated):
  rc, out, run = evaluated
  assert rc == 0
  rec = json.loads(out.read_text())
  assert rec["policy"] == "log" and rec["source"] == {"scenes": "synthetic", "num": 2, "seed": 5, "agents": "8"}
  s = rec["summary"]
  assert s["all"]["agents"] == s["moving"]["agents"] + s["parked"]["agents"] > 0
  # Exact log replay: full progress for every moving agent, and the synthetic logs are collision-free by
  # construction (synthetic.check_log rejects overlapping boxes).
  assert s["moving"]["progress_ratio"]["mean"] == pytest.approx(1.0, abs=1e-4)
  assert s["all"]["collision"]["count"] == 0
  assert rec["config"]["env"]["done_on_collision"] is False and rec["config"]["env"]["done_on_offroad"] is False
  assert len(rec["agents"]["scene"]) == s["all"]["agents"]
  files = sorted(os.listdir(run / "evaluations"))
  assert files == ["000_log.json", "000_log.npz"]


def test_report_command(evaluated, capsys):
  _, _, run = evaluated
  assert _run(["report", str(run), "--worst", "1"]) == 0
  assert (run / "report" / "report.html").is_file()
  assert "report.html" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["eval", "nonsense", "--scenes", "synthetic"],
    ["eval", "log", "--scenes", "synthetic", "--agents", "65"],
    ["eval", "log", "--scenes", "synthetic", "--at-goal", "park"],
    ["eval", "log", "--scenes", "/nonexistent/folder"],
    ["report", "/nonexistent/run"],
])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
  assert _run(argv) == 2
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and out[0].startswith("drivelab ")


def test_report_on_empty_run_dir_exits_1(tmp_path):
  assert _run(["report", str(tmp_path)]) == 1


def test_agents_flag():
  assert eval_cmd.env_config_for("sdc").control_mode == "sdc"
  assert eval_cmd.env_config_for("12").max_controlled == 12
  with pytest.raises(ValueError):
    eval_cmd.env_config_for("0")


def test_at_goal_flag():
  assert eval_cmd.env_config_for("sdc").stop_at_goal is True
  assert eval_cmd.env_config_for("sdc", "drive-on").stop_at_goal is False
  assert eval_cmd.env_config_for("12", "drive-on").stop_at_goal is False
  with pytest.raises(ValueError, match="at-goal"):
    eval_cmd.env_config_for("sdc", "park")
