"""`python -m services.stack.warmup`: compiles the simulator's reset and one unroll, and the evaluator's episode, on
batches shaped like the scene loader's, so the stack's processes find them in JAX's persistent cache. Each
service's config.py reads its own settings from the environment (the supervisor runs this with the stack's env);
nothing is connected. The stack orchestrates the services, so this is where code that needs several of them lives.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Sequence

log = logging.getLogger(__name__)


def warmup() -> None:
  from services.evaluator import config as evaluator_config
  from services.evaluator import service as evaluator_service
  from services.scene_loader import config as loader_config
  from services.scene_loader import service as loader_service
  from services.simulator import config as sim_config
  from services.simulator import service as sim_service
  from shared.acting import engine as engine_lib
  from shared.acting import policy_net
  from shared.scenes import types

  cfg, _ = sim_config.load([])
  lc, common = loader_config.load([])
  scenarios, _ = loader_service.load_scenes("synthetic", dataclasses.replace(lc, num_synthetic=lc.batch_size))
  batch = types.stack(scenarios)
  env_cfg = sim_service.env_config(cfg)
  policy = policy_net.from_common(common, env_cfg)
  t0 = time.monotonic()
  engine = engine_lib.Engine(env_cfg, cfg.unroll_length, seed=cfg.seed, policy=policy)
  engine.load(batch)
  engine.collect(policy.init_flat())
  log.info("event=warmup what=collect compiled_s=%.1f", time.monotonic() - t0)
  t0 = time.monotonic()
  scorer = evaluator_service.make_scorer(evaluator_config.load([])[0], common)
  scorer.evaluate(scorer.policy.init_flat(), batch)
  log.info("event=warmup what=evaluate compiled_s=%.1f", time.monotonic() - t0)


def main(argv: Sequence[str] | None = None) -> int:
  from services.common import runtime
  from shared.telemetry import logging as tlog

  tlog.setup_logging("warmup", runtime.common_from_env(os.environ).log_level)
  warmup()
  return 0


if __name__ == "__main__":
  sys.exit(main())
