"""`drivelab up`'s fine-tuning flags become the learner's env settings; bad combinations exit 2."""

import argparse

import pytest

from services.cli import stack_cmd


def _parse(*argv):
  p = argparse.ArgumentParser()
  stack_cmd.register(p.add_subparsers())
  return p.parse_args(["up", *argv])


def test_init_from_and_ref_kl_reach_the_learner_env(tmp_path):
  env = dict(stack_cmd.learner_env(_parse("--init-from", str(tmp_path), "--ref-kl", "0.2")))
  assert env == {"DRIVELAB_LEARNER_INIT_FROM": str(tmp_path), "DRIVELAB_LEARNER_REF_KL": "0.2"}
  assert stack_cmd.learner_env(_parse()) == ()
  assert _parse("--algo", "bc").algo == "bc"


@pytest.mark.parametrize("argv", [("--ref-kl", "0.2"), ("--ref-kl", "-1", "--init-from", "x"),
                                  ("--algo", "bc", "--init-from", "x", "--ref-kl", "0.2")])
def test_bad_fine_tuning_flags_exit_2(argv, capsys):
  with pytest.raises(SystemExit) as e:
    stack_cmd.learner_env(_parse(*argv))
  assert e.value.code == 2
  assert "--ref-kl" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [("--bc-dagger", "0.3"), ("--agents", "8"), ("--num", "8"),
                                   ("--scenes-per-iter", "8")])
def test_train_stack_refuses_fused_only_flags(extra, capsys):
  from services.cli import train_cmd

  p = argparse.ArgumentParser()
  train_cmd.register(p.add_subparsers())
  args = p.parse_args(["train", "--stack", "--no-progress", *extra])
  assert train_cmd.cmd_train(args) == 2
  out = capsys.readouterr().out
  assert "stack" in out and extra[0] in out.replace("\n", "")


def test_train_stack_control_mode_reaches_simulators_and_evaluator(tmp_path):
  from services.cli import train_cmd, train_stack
  from services.evaluator import config as evaluator_config
  from services.simulator import config as simulator_config

  p = argparse.ArgumentParser()
  train_cmd.register(p.add_subparsers())
  args = p.parse_args(["train", "--stack", "--agents", "moving", "--pretrain", "bc", "--ref-kl", "0.2",
                       "--run-dir", str(tmp_path)])
  train_stack.check_args(args)
  env = dict(train_stack._phase_env(args, "ppo"))
  assert env["DRIVELAB_SIMULATOR_CONTROL_MODE"] == env["DRIVELAB_EVALUATOR_CONTROL_MODE"] == "moving"
  assert env["DRIVELAB_LEARNER_INIT_FROM"] == str(tmp_path / "checkpoints" / "bc")
  assert env["DRIVELAB_LEARNER_REF_KL"] == "0.2"
  assert "DRIVELAB_LEARNER_INIT_FROM" not in dict(train_stack._phase_env(args, "bc"))
  assert simulator_config.load([], env=env)[0].control_mode == "moving"
  assert evaluator_config.load([], env=env)[0].control_mode == "moving"
  for load in (simulator_config.load, evaluator_config.load):
    with pytest.raises(SystemExit, match="--control-mode must be one of"):
      load([], env={"DRIVELAB_SIMULATOR_CONTROL_MODE": "bogus", "DRIVELAB_EVALUATOR_CONTROL_MODE": "bogus"})
