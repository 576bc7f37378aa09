"""Inference settings. Env vars are read here and nowhere else in the service; CLI flags override them."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Sequence

from services.common import runtime


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
  """Attributes:
    max_batch_requests: requests merged into one forward pass [DRIVELAB_INFERENCE_MAX_BATCH].
    batch_wait_s: after the first request, how long to wait for more to fill the batch.
    greedy: argmax actions instead of sampling.
    seed: PRNG seed (the pid is added).
  """

  max_batch_requests: int = 16
  batch_wait_s: float = 0.002
  greedy: bool = False
  seed: int = 0


ENV = {"max_batch_requests": "DRIVELAB_INFERENCE_MAX_BATCH"}


def parser() -> argparse.ArgumentParser:
  return runtime.service_parser("inference", InferenceConfig)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[InferenceConfig, runtime.CommonConfig]:
  return runtime.load_service_config("inference", InferenceConfig, ENV, argv, os.environ if env is None else env)
