"""Learner settings. Env vars are read here and nowhere else in the service; CLI flags override them."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Sequence

from services.common import runtime


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """Attributes:
    learning_rate: Adam step size [DRIVELAB_LEARNER_LR].
    gamma, gae_lambda: discount and GAE trace parameter.
    window: ReplayBatch messages in flight from replay (credits).
    publish_interval_s: params are re-published at least this often, so late subscribers catch up.
    checkpoint_every: updates between atomic checkpoints under run_dir/checkpoints (0: never)
      [DRIVELAB_LEARNER_CHECKPOINT_EVERY].
    resume: start from run_dir/checkpoints/params.npz when it exists.
  """

  learning_rate: float = 3e-3
  gamma: float = 0.99
  gae_lambda: float = 0.95
  window: int = 2
  publish_interval_s: float = 2.0
  checkpoint_every: int = 50
  resume: bool = True


ENV = {"learning_rate": "DRIVELAB_LEARNER_LR", "checkpoint_every": "DRIVELAB_LEARNER_CHECKPOINT_EVERY"}


def parser() -> argparse.ArgumentParser:
  return runtime.service_parser("learner", LearnerConfig)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[LearnerConfig, runtime.CommonConfig]:
  return runtime.load_service_config("learner", LearnerConfig, ENV, argv, os.environ if env is None else env)
