"""`drivelab train --stack --pretrain bc --ref-kl 0.2`: BC then PPO, each phase run by the real service stack as
local processes, PPO starting from the BC checkpoint with the KL term, then the final evaluation and report; a
rerun with the same run dir resumes (both phases are past their steps: skipped, evaluation only)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS, BC_STEPS = 2000, 1000


def _train(run_dir: pathlib.Path) -> subprocess.CompletedProcess:
  cmd = [sys.executable, "-m", "services.cli.main", "train", "--stack", "--pretrain", "bc", "--steps", str(STEPS),
         "--pretrain-steps", str(BC_STEPS), "--ref-kl", "0.2", "--simulators", "1", "--preset", "tiny",
         "--no-progress", "--max-seconds", "240", "--run-dir", str(run_dir)]
  env = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS="200")
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=800)


@pytest.mark.slow  # two stack runs (~1 min each on 2 cores, with compiles) and an evaluation
def test_train_stack_bc_then_ppo_from_the_bc_checkpoint(tmp_path):
  from shared.training import checkpoint

  run = tmp_path / "run"
  first = _train(run)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  samples = {}
  for phase in ("bc", "ppo"):
    found = checkpoint.list_checkpoints(run / "checkpoints" / phase)
    assert found, phase
    samples[phase] = checkpoint.read_raw(found[-1][1])[2]["samples"]
  assert samples["bc"] >= BC_STEPS and samples["ppo"] >= STEPS, samples
  learner_log = (run / "logs" / "learner-0.log").read_text()
  assert f"event=init_from dir={run / 'checkpoints' / 'bc'}" in learner_log
  assert "ref_kl_coef=0.2" in learner_log
  records = [json.loads(p.read_text()) for p in (run / "evaluations").glob("*.json")]
  assert any(r.get("policy") == "ppo+bc" for r in records), [r.get("policy") for r in records]
  assert (run / "report" / "report.html").is_file()

  again = _train(run)  # resumes: nothing left to train
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert again.stdout.count("skipped") == 2, again.stdout[-2000:]


@pytest.mark.slow  # starts the stack's processes (~20 s)
def test_train_stack_stops_when_a_service_keeps_exiting(tmp_path):
  run = tmp_path / "run"
  cmd = [sys.executable, "-m", "services.cli.main", "train", "--stack", "--steps", "1000", "--simulators", "1",
         "--preset", "tiny", "--no-progress", "--run-dir", str(run)]
  # a learner setting that makes the learner exit at start (KL to a reference it was not given)
  env = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS="200", DRIVELAB_LEARNER_REF_KL="0.5")
  res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
  assert "learner-0 kept exiting" in res.stdout
  assert "needs --init-from" in (run / "logs" / "learner-0.log").read_text()
