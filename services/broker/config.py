"""Broker settings. Env vars are read here and nowhere else in the service; CLI flags override them."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Sequence

from services.common import runtime


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
  """Attributes:
    scene_window: scene batches each scene_loader may have in flight toward the broker [DRIVELAB_BROKER_SCENE_WINDOW].
    inference_slots: requests in flight per inference worker [DRIVELAB_BROKER_INFERENCE_SLOTS].
    max_consumer_window: the most scene batches one consumer of `scenes` may hold credit for, whatever window its
      hello declares (a forged hello gets no more).
    max_pending_requests: act requests queued while no worker has a free slot; beyond it requests are refused
      (dropped and counted; the simulator's request times out and is retried).
    poll_ms: poll timeout of the event loop.
  """

  scene_window: int = 2
  inference_slots: int = 8
  max_consumer_window: int = 8
  max_pending_requests: int = 256
  poll_ms: int = 5


ENV = {"scene_window": "DRIVELAB_BROKER_SCENE_WINDOW", "inference_slots": "DRIVELAB_BROKER_INFERENCE_SLOTS"}


def parser() -> argparse.ArgumentParser:
  return runtime.service_parser("broker", BrokerConfig)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[BrokerConfig, runtime.CommonConfig]:
  return runtime.load_service_config("broker", BrokerConfig, ENV, argv, os.environ if env is None else env)
