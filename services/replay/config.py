"""Replay settings. Env vars are read here and nowhere else in the service; CLI flags override them."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Sequence

from services.common import runtime


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
  """Attributes:
    capacity: Trajectory messages the on-policy FIFO holds; when full, replay stops granting credit, so simulators
      wait instead of piling data up [DRIVELAB_REPLAY_CAPACITY].
    sample_items: Trajectory messages merged into one ReplayBatch [DRIVELAB_REPLAY_SAMPLE_ITEMS].
    window: credits per simulator (Trajectory messages in flight toward replay).
    max_staleness_versions: items older than the learner's newest params by more versions are dropped and counted.
    expert_capacity: ExpertTrajectories messages the expert table (a uniform ring buffer) keeps.
  """

  capacity: int = 8
  sample_items: int = 2
  window: int = 2
  max_staleness_versions: int = 8
  expert_capacity: int = 32


ENV = {"capacity": "DRIVELAB_REPLAY_CAPACITY", "sample_items": "DRIVELAB_REPLAY_SAMPLE_ITEMS"}


def parser() -> argparse.ArgumentParser:
  return runtime.service_parser("replay", ReplayConfig)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[ReplayConfig, runtime.CommonConfig]:
  return runtime.load_service_config("replay", ReplayConfig, ENV, argv, os.environ if env is None else env)
