"""Simulator settings. Env vars are read here and nowhere else in the service; CLI flags override them."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Sequence

from services.common import runtime


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
  """Attributes:
    mode: "fused" (policy inside the jitted rollout) or "service" (actions from the inference service)
      [DRIVELAB_SIMULATOR_MODE].
    unroll_length: steps per Trajectory message [DRIVELAB_SIMULATOR_UNROLL].
    max_controlled: controlled agents per scene, 1..64 [DRIVELAB_SIMULATOR_MAX_CONTROLLED].
    control_mode: "all", "sdc", "random" or "moving" (shared.sim.control) [DRIVELAB_SIMULATOR_CONTROL_MODE].
    scene_window: scene batches requested ahead of use (credits toward the broker).
    send_timeout_s: how long a Trajectory waits for replay's credit before it is dropped and counted.
    act_timeout_s: inference round-trip timeout (service mode); a timed-out request is retried.
    seed: PRNG seed (a process adds its pid so replicas differ).
  """

  mode: str = "fused"
  unroll_length: int = 16
  max_controlled: int = 16
  control_mode: str = "all"
  scene_window: int = 1
  send_timeout_s: float = 60.0
  act_timeout_s: float = 5.0
  seed: int = 0


ENV = {"mode": "DRIVELAB_SIMULATOR_MODE", "unroll_length": "DRIVELAB_SIMULATOR_UNROLL",
       "max_controlled": "DRIVELAB_SIMULATOR_MAX_CONTROLLED", "control_mode": "DRIVELAB_SIMULATOR_CONTROL_MODE"}


def parser() -> argparse.ArgumentParser:
  return runtime.service_parser("simulator", SimulatorConfig)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[SimulatorConfig, runtime.CommonConfig]:
  cfg, common = runtime.load_service_config("simulator", SimulatorConfig, ENV, argv, os.environ if env is None else env)
  if cfg.mode not in ("fused", "service"):
    raise SystemExit(f"simulator: --mode must be fused or service, got {cfg.mode!r}")
  runtime.check_control_mode("simulator", cfg.control_mode)
  return cfg, common
