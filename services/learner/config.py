"""Learner settings. Env vars are read here and nowhere else in the service; CLI flags override them.

The algorithm (a name in shared.algos.registry) and the network (net, preset, params_seed) are common settings (runtime.CommonConfig:
`--algo`, `--net`, `--preset`), since replay and every acting process must agree with the learner on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Sequence

from services.common import runtime

@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """Attributes:
    learning_rate: Adam step size; 0 = the algorithm's default (3e-4 PPO, 1e-3 BC) [DRIVELAB_LEARNER_LR].
    gamma, gae_lambda: discount and GAE / V-trace trace parameter.
    clip_eps, entropy_coef, value_coef: PPO loss settings.
    num_epochs, num_minibatches: passes over each ReplayBatch and gradient steps per pass (T x B samples must
      divide by num_minibatches).
    use_vtrace: V-trace targets (the actors' params lag the learner's, so their data is off-policy).
    seed: the TrainingState's PRNG seed (minibatch shuffles).
    window: ReplayBatch messages in flight from replay (credits).
    publish_interval_s: params are re-published at least this often, so late subscribers catch up.
    checkpoint_every: updates between atomic checkpoints under run_dir/checkpoints/<algo> (0: never)
      [DRIVELAB_LEARNER_CHECKPOINT_EVERY].
    keep_checkpoints: newest checkpoints kept.
    resume: start from the newest checkpoint when there is one.
    init_from: a checkpoint folder (holding ckpt_* entries, e.g. a BC run's run_dir/checkpoints/bc) or a run_dir
      with checkpoints/bc: its newest checkpoint's params start this learner (fine-tuning: version 0 is those
      params; step, optimizer moments and PRNG start anew). A resume from this learner's own checkpoints wins
      [DRIVELAB_LEARNER_INIT_FROM].
    ref_kl_coef: PPO only, with init_from: weight of KL(pi_init || pi) in the loss, keeping fine-tuning near the
      init_from policy (e.g. the BC one) on the states the actors visit (0: off) [DRIVELAB_LEARNER_REF_KL].
    coordinator: HOST:PORT of jax.distributed's coordinator, for several learner replicas averaging gradients
      (each with its own replay table) [DRIVELAB_LEARNER_COORDINATOR].
    num_processes, process_id: learner replicas and this one's index (num_processes > 1 needs a coordinator)
      [DRIVELAB_LEARNER_NUM_PROCESSES, DRIVELAB_LEARNER_PROCESS_ID].
  """

  learning_rate: float = 0.0
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip_eps: float = 0.2
  entropy_coef: float = 0.01
  value_coef: float = 0.5
  num_epochs: int = 2
  num_minibatches: int = 4
  use_vtrace: bool = True
  seed: int = 0
  window: int = 2
  publish_interval_s: float = 2.0
  checkpoint_every: int = 50
  keep_checkpoints: int = 3
  resume: bool = True
  init_from: str = ""
  ref_kl_coef: float = 0.0
  coordinator: str = ""
  num_processes: int = 1
  process_id: int = 0


ENV = {"learning_rate": "DRIVELAB_LEARNER_LR", "checkpoint_every": "DRIVELAB_LEARNER_CHECKPOINT_EVERY",
       "coordinator": "DRIVELAB_LEARNER_COORDINATOR", "init_from": "DRIVELAB_LEARNER_INIT_FROM",
       "ref_kl_coef": "DRIVELAB_LEARNER_REF_KL", "num_processes": "DRIVELAB_LEARNER_NUM_PROCESSES",
       "process_id": "DRIVELAB_LEARNER_PROCESS_ID"}


def parser() -> argparse.ArgumentParser:
  return runtime.service_parser("learner", LearnerConfig)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[LearnerConfig, runtime.CommonConfig]:
  cfg, common = runtime.load_service_config("learner", LearnerConfig, ENV, argv, os.environ if env is None else env)
  from shared.algos import registry

  try:
    algorithm = registry.get(common.algo)
  except ValueError as e:
    raise SystemExit(f"learner: --algo: {e}") from None
  if cfg.ref_kl_coef < 0 or (cfg.ref_kl_coef > 0 and (algorithm.add_reference is None or not cfg.init_from)):
    raise SystemExit("learner: --ref-kl-coef is a weight >= 0 for an algorithm with a reference policy (ppo) and "
                     "needs --init-from (the reference)")
  if cfg.num_processes > 1 and not cfg.coordinator:
    raise SystemExit("learner: --num-processes > 1 needs --coordinator HOST:PORT")
  if not 0 <= cfg.process_id < max(cfg.num_processes, 1):
    raise SystemExit(f"learner: --process-id {cfg.process_id} not in 0..{cfg.num_processes - 1}")
  return cfg, common
