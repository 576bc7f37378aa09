"""Scene loader settings. Env vars are read here and nowhere else in the service; CLI flags override them."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Sequence

from services.common import runtime


@dataclasses.dataclass(frozen=True)
class SceneLoaderConfig:
  """Attributes:
    batch_size: scenes per ScenarioBatch [DRIVELAB_SCENE_LOADER_BATCH].
    max_objects, max_road_points, max_tl_lanes: padding caps (shared.scenes.types.SceneConfig)
      [DRIVELAB_SCENE_MAX_OBJECTS, DRIVELAB_SCENE_MAX_ROAD_POINTS, DRIVELAB_SCENE_MAX_TL_LANES].
    num_synthetic: scenes generated when the source is "synthetic" ("synthetic:N" says N itself).
    limit: most scenes read from a folder or shard (0: all).
    seed: shuffling / generation seed (the replica's pid is added to the shuffle).
    send_timeout_s: how long one send waits for the broker's credit before trying again.
    emit_expert: also send each batch's logged behaviour (grid-expert actions with observations) to replay's
      expert table as ExpertTrajectories [DRIVELAB_SCENE_LOADER_EMIT_EXPERT].
    expert_max_controlled: agents per scene in expert trajectories.
  """

  batch_size: int = 2
  max_objects: int = 32
  max_road_points: int = 2000
  max_tl_lanes: int = 8
  num_synthetic: int = 16
  limit: int = 0
  seed: int = 0
  send_timeout_s: float = 0.5
  emit_expert: bool = False
  expert_max_controlled: int = 16


ENV = {"batch_size": "DRIVELAB_SCENE_LOADER_BATCH", "max_objects": "DRIVELAB_SCENE_MAX_OBJECTS",
       "max_road_points": "DRIVELAB_SCENE_MAX_ROAD_POINTS", "max_tl_lanes": "DRIVELAB_SCENE_MAX_TL_LANES",
       "emit_expert": "DRIVELAB_SCENE_LOADER_EMIT_EXPERT"}


def parser() -> argparse.ArgumentParser:
  return runtime.service_parser("scene_loader", SceneLoaderConfig)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[SceneLoaderConfig, runtime.CommonConfig]:
  return runtime.load_service_config("scene_loader", SceneLoaderConfig, ENV, argv, os.environ if env is None else env)
