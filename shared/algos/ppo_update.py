"""The PPO learner's update step: targets (GAE, or V-trace when the actor's params lag), then epochs of minibatches.

  update_step = make_ppo_update_step(agent, PPOUpdateConfig())
  state, metrics = update_step(state, trajectory)      # one call per batch, in the fused path and the service

The batch is a time-major `Trajectory` (T, B, ...) with any agent axes after B (the fused path: (T, B, O));
`obs` carries one more step than the rest: obs[T] is the observation after the last step, which bootstraps a
sequence cut by the unroll length or the log's end (truncation), while terminated steps do not bootstrap.

Targets:
  GAE (on-policy, `use_vtrace=False`): values and log-probs are the actor's (`behaviour_*`), i.e. the params the
    learner holds now (fused path).
  V-trace (`use_vtrace=True`): the learner re-evaluates V and log pi with its current params; log rho =
    log pi_learner - behaviour_logp corrects the stale actor data; advantages = V-trace pg advantages (rho-clipped)
    and value targets = vs. The PPO ratio is then taken against the learner's log-probs at the start of the update
    (the proximal policy), since the V-trace advantages already carry the actor-to-learner importance weight.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from shared.algos import api, distributed, ppo, training
from shared.algos.agent import Agent, as_net_input

Array = jax.Array
Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class PPOUpdateConfig:
  """PPO learner settings.

  Attributes:
    ppo: loss and target hyperparameters (use_vtrace switches the targets).
    optimizer: Adam and gradient clipping.
    num_epochs: passes over each batch.
    num_minibatches: gradient steps per pass (samples = T * B * agents must divide by it).
  """

  ppo: ppo.PPOConfig = ppo.PPOConfig()
  optimizer: training.OptimizerConfig = training.OptimizerConfig()
  num_epochs: int = 4
  num_minibatches: int = 4


@flax.struct.dataclass
class Trajectory:
  """Time-major actor data, leading axes (T, ...) unless noted.

  Attributes:
    obs: NetInput (or Observation) with T + 1 steps: s_0 .. s_T.
    actions: (T, ..., H) int32 per-head action indices.
    behaviour_logp: (T, ...) log-probability of `actions` under the actor's params.
    behaviour_value: (T, ...) the actor's V(s_t).
    reward: (T, ...) float32.
    terminated: (T, ...) bool, the episode ended at this step (absorbing: no bootstrap).
    truncated: (T, ...) bool, the episode was cut here by a time limit (bootstraps from V(s_{t+1})).
    mask: (T, ...) float32, 1 where the agent acted (controlled and not done before the step).
    ref_logits: a frozen reference policy's logits at s_0 .. s_{T-1}, one (T, ..., n_i) array per head,
      for PPOConfig.ref_kl_coef > 0 (None otherwise).
  """

  obs: Any
  actions: Array
  behaviour_logp: Array
  behaviour_value: Array
  reward: Array
  terminated: Array
  truncated: Array
  mask: Array
  ref_logits: Any = None


def trajectory_targets(agent: Agent, config: ppo.PPOConfig, params: Any, traj: Trajectory) -> ppo.PPOBatch:
  """PPOBatch (T, ...) with advantages and targets; learner values are used for V-trace, the actor's for GAE."""
  chex.assert_equal_shape([traj.behaviour_logp, traj.behaviour_value, traj.reward, traj.terminated,
                           traj.truncated, traj.mask])
  obs = as_net_input(traj.obs)
  num_steps = traj.reward.shape[0]
  if config.use_vtrace:
    logits, values = jax.lax.stop_gradient(agent.apply(params, obs))  # (T + 1, ...)
    learner_logp = agent.log_prob(tuple(l[:num_steps] for l in logits), traj.actions)
    v_tm1, logp_old, log_rho = values[:-1], learner_logp, learner_logp - traj.behaviour_logp
    v_last = values[-1:]
  else:
    v_tm1, logp_old, log_rho = traj.behaviour_value, traj.behaviour_logp, None
    v_last = jax.lax.stop_gradient(agent.value(params, jax.tree.map(lambda x: x[num_steps:], obs)))
  v_t = jnp.concatenate([v_tm1[1:], v_last], axis=0)
  advantages, targets = ppo.compute_targets(config, traj.reward, traj.terminated, traj.truncated, v_tm1, v_t,
                                            log_rho)
  step_obs = jax.tree.map(lambda x: x[:num_steps], obs)
  return ppo.PPOBatch(obs=step_obs, actions=traj.actions, logp_old=logp_old, v_old=v_tm1, advantages=advantages,
                      targets=targets, mask=traj.mask.astype(jnp.float32), ref_logits=traj.ref_logits)


def make_ppo_update_fn(agent: Agent, config: PPOUpdateConfig = PPOUpdateConfig(), axis_name: str | None = None):
  """Un-jitted `update(state, trajectory) -> (state, metrics)`; `axis_name` averages gradients across devices."""
  loss_fn = ppo.make_ppo_loss(config.ppo, agent.apply)
  step = distributed.gradient_step(loss_fn, training.make_optimizer(config.optimizer), axis_name)
  epochs = distributed.minibatch_epochs(step, config.num_epochs, config.num_minibatches)

  def update(state: training.TrainingState, traj: Trajectory) -> tuple[training.TrainingState, Metrics]:
    # ADVANTAGES
    batch = trajectory_targets(agent, config.ppo, state.params, traj)
    lead = batch.mask.ndim
    # UPDATE
    state, metrics = epochs(state, distributed.flatten_samples(batch, lead))
    mask = batch.mask
    stats = {"mean_return_target": ppo.masked_mean(batch.targets, mask),
             "mean_advantage": ppo.masked_mean(batch.advantages, mask), "samples": jnp.sum(mask)}
    if axis_name is not None:
      stats = jax.lax.pmean(stats, axis_name)
    return state, dict(metrics, **stats)

  return update


def make_ppo_update_step(agent: Agent, config: PPOUpdateConfig = PPOUpdateConfig()):
  """The jitted PPO `update_step(state, trajectory) -> (state, metrics)`, state donated."""
  return jax.jit(make_ppo_update_fn(agent, config), donate_argnums=0)


init_state = training.init_state  # (params, config, rng) -> TrainingState, one definition for every learner


# THE BUNDLE (shared.algos.api)

def configure(hyper: api.Hyper) -> PPOUpdateConfig:
  base = PPOUpdateConfig()
  loss = hyper.set(base.ppo, gamma="gamma", lambda_="gae_lambda", clip_eps="clip_eps", value_coef="value_coef",
                   entropy_coef="entropy_coef", use_vtrace="use_vtrace", ref_kl_coef="ref_kl_coef")
  return hyper.set(dataclasses.replace(base, ppo=loss, optimizer=hyper.optimizer(base.optimizer)),
                   num_epochs="num_epochs", num_minibatches="num_minibatches")


def from_rollout(c: Any, config: PPOUpdateConfig) -> Trajectory:
  """The fused collect loop's record (obs (T + 1, ...), the sampled factors, their log-probs and values)."""
  return Trajectory(obs=c.obs, actions=c.factors, behaviour_logp=c.logp, behaviour_value=c.value, reward=c.reward,
                    terminated=c.terminated, truncated=c.truncated, mask=c.acting.astype(jnp.float32))


def from_arrays(pn: Any, arrays: dict) -> Trajectory:
  """A ReplayBatch from the on-policy table: obs/flat (T, B, F), bootstrap_obs/flat (1, B, F) = s_T, action (T, B)
  grid, log_prob / value (T, B) of the actor, reward (T, B), done / terminated / valid (T, B). Terminated steps do not
  bootstrap, done-but-not-terminated ones (the log's end) and the unroll's last step do (truncated); mask = valid.
  Without bootstrap_obs (a v1 Trajectory) the last step serves as s_T only."""
  obs = np.asarray(arrays["obs/flat"], np.float32)
  boot = arrays.get("bootstrap_obs/flat")
  steps = {k: np.asarray(arrays[k]) for k in ("action", "log_prob", "value", "reward", "done", "valid")}
  terminated = np.asarray(arrays.get("terminated", np.zeros_like(steps["done"])), bool)
  if boot is None:  # no s_T sent: the last recorded step becomes the bootstrap observation
    steps = {k: v[:-1] for k, v in steps.items()}
    terminated = terminated[:-1]
  else:
    obs = np.concatenate([obs, np.asarray(boot, np.float32)], axis=0)
  truncated = steps["done"] & ~terminated
  truncated[-1] = True  # the unroll stops here: bootstrap from V(s_T)
  return Trajectory(
      obs=pn.net_input(jnp.asarray(obs)), actions=pn.agent.to_factors(jnp.asarray(steps["action"], jnp.int32)),
      behaviour_logp=jnp.asarray(steps["log_prob"], jnp.float32),
      behaviour_value=jnp.asarray(steps["value"], jnp.float32), reward=jnp.asarray(steps["reward"], jnp.float32),
      terminated=jnp.asarray(terminated), truncated=jnp.asarray(truncated),
      mask=jnp.asarray(steps["valid"], jnp.float32))


def add_reference(agent: Agent, traj: Trajectory, reference: Any) -> Trajectory:
  """`traj` with the frozen reference policy's logits at s_0 .. s_{T-1} (one batched forward pass)."""
  steps = traj.reward.shape[0]
  logits = agent.apply(reference, jax.tree.map(lambda x: x[:steps], traj.obs))[0]
  return traj.replace(ref_logits=jax.lax.stop_gradient(logits))


ALGORITHM = api.Algorithm(
    name="ppo", config_type=PPOUpdateConfig, configure=configure, make_update=make_ppo_update_fn,
    from_rollout=from_rollout, from_arrays=from_arrays, acting="policy", replay=(api.Draw("onpolicy"),),
    wants_reference=lambda config: config.ppo.ref_kl_coef > 0, add_reference=add_reference)


__all__ = ["ALGORITHM", "PPOUpdateConfig", "Trajectory", "add_reference", "configure", "from_arrays", "from_rollout",
           "init_state", "make_ppo_update_fn", "make_ppo_update_step", "trajectory_targets"]
