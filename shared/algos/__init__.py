"""shared.algos: pure learning math and loss factories (time-major arrays, `discount_t = gamma (1 - terminated_t)`).

Modules: `gae` (GAE, episode discounts), `vtrace` (IMPALA V-trace), `ppo` (targets and the clipped loss), `bc`
(policy and value cloning, discounted returns), `training` (TrainingState, optimizer, jitted update steps),
`distributed` (the same updates over a device mesh), `api` / `registry` (the algorithm interface and the names),
`ppo_update` / `bc_update` (the PPO and BC bundles), `agent` (the acting bundle over the grid), `fused` (collect +
update in one jitted iteration).
"""

from shared.algos import bc, gae, ppo, training, vtrace
from shared.algos.bc import BCBatch, BCConfig, discounted_returns, make_bc_loss
from shared.algos.gae import episode_discounts, gae_advantages, gae_from_values
from shared.algos.ppo import PPOBatch, PPOConfig, compute_targets, make_ppo_loss
from shared.algos.training import (
    OptimizerConfig, TrainingState, init_training_state, make_minibatch_update_step, make_optimizer,
    make_update_step)
from shared.algos.vtrace import VTraceOutput

__all__ = [
    "BCBatch", "BCConfig", "OptimizerConfig", "PPOBatch", "PPOConfig", "TrainingState", "VTraceOutput", "bc",
    "compute_targets", "discounted_returns", "episode_discounts", "gae", "gae_advantages", "gae_from_values",
    "init_training_state", "make_bc_loss", "make_minibatch_update_step", "make_optimizer", "make_ppo_loss",
    "make_update_step", "ppo", "training", "vtrace",
]
