"""Evaluator settings. Env vars are read here and nowhere else in the service; CLI flags override them."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Sequence

from services.common import runtime


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
  """Attributes:
    interval_s: seconds between evaluations [DRIVELAB_EVALUATOR_INTERVAL_S].
    split: label of the scenes evaluated (reports and metrics carry it).
    max_controlled: controlled agents per scene.
    control_mode: "all", "sdc", "random" or "moving" (shared.sim.control) [DRIVELAB_EVALUATOR_CONTROL_MODE].
    seed: PRNG seed.
  """

  interval_s: float = 10.0
  split: str = "train"
  max_controlled: int = 16
  control_mode: str = "all"
  seed: int = 0


ENV = {"interval_s": "DRIVELAB_EVALUATOR_INTERVAL_S", "control_mode": "DRIVELAB_EVALUATOR_CONTROL_MODE"}


def parser() -> argparse.ArgumentParser:
  return runtime.service_parser("evaluator", EvaluatorConfig)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[EvaluatorConfig, runtime.CommonConfig]:
  cfg, common = runtime.load_service_config("evaluator", EvaluatorConfig, ENV, argv,
                                            os.environ if env is None else env)
  runtime.check_control_mode("evaluator", cfg.control_mode)
  return cfg, common
