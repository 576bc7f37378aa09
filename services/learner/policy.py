"""Stand-in policy and learner for the service stack until the PPO issue lands: linear softmax + linear value.

The stack needs a policy that the simulator, inference and evaluator can run and that the learner really trains, so
params change and travel with versions. This one acts on flat per-agent features (every Observation leaf of one
agent, flattened and concatenated: the simulator's `features`), so it needs no knowledge of the observation layout.

Params are a flat dict, which is exactly the Params message's arrays (F features, A actions):
  "pi/w" (F, A), "pi/b" (A,), "v/w" (F,), "v/b" () float32.
Version 0 is all zeros (a uniform policy) everywhere, so no process waits for the learner to know F.

  batch: obs (T, B, F) float32, action (T, B) int32, reward (T, B), done (T, B) bool, valid (T, B) bool,
         log_prob (T, B) behaviour log-probabilities, value (T, B) behaviour values.
  update_step(state, batch) -> (state, metrics)   # one PPO-clip step with GAE (shared.algos.gae)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from shared.algos import gae

Params = dict[str, Any]


def init_params(num_features: int, num_actions: int) -> dict[str, np.ndarray]:
  """Version-0 params: zeros, so every process builds the same uniform policy on its own."""
  return {"pi/w": np.zeros((num_features, num_actions), np.float32), "pi/b": np.zeros((num_actions,), np.float32),
          "v/w": np.zeros((num_features,), np.float32), "v/b": np.zeros((), np.float32)}


def num_features(params: Params) -> int:
  return int(params["pi/w"].shape[0])


def logits_and_value(params: Params, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """obs (..., F) -> logits (..., A), value (...)."""
  return obs @ params["pi/w"] + params["pi/b"], obs @ params["v/w"] + params["v/b"]


def select_action(params: Params, obs: jax.Array, rng: jax.Array, greedy: bool = False
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """obs (B, F) -> action (B,) int32, log_prob (B,), value (B,). Sampled, or the argmax when `greedy`."""
  chex.assert_rank(obs, 2)
  logits, value = logits_and_value(params, obs)
  logp_all = jax.nn.log_softmax(logits)
  action = jnp.argmax(logits, -1) if greedy else jax.random.categorical(rng, logits)
  log_prob = jnp.take_along_axis(logp_all, action[:, None], -1)[:, 0]
  return action.astype(jnp.int32), log_prob, value


@dataclasses.dataclass(frozen=True)
class LearnerHyper:
  """Attributes:
    learning_rate: Adam step size.
    gamma: discount.
    gae_lambda: GAE trace parameter.
    clip_eps: PPO ratio clip.
    value_coef, entropy_coef: loss weights.
    max_grad_norm: global gradient clip.
  """

  learning_rate: float = 3e-3
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip_eps: float = 0.2
  value_coef: float = 0.5
  entropy_coef: float = 0.01
  max_grad_norm: float = 1.0


@flax.struct.dataclass
class TrainingState:
  """Attributes: params, opt_state, step () int32 updates done."""

  params: Params
  opt_state: Any
  step: jax.Array


def make_optimizer(hp: LearnerHyper) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(hp.max_grad_norm), optax.adam(hp.learning_rate))


def init_state(params: Params, hp: LearnerHyper) -> TrainingState:
  params = jax.tree.map(jnp.asarray, params)
  return TrainingState(params=params, opt_state=make_optimizer(hp).init(params), step=jnp.int32(0))


def make_update_step(hp: LearnerHyper):
  """Returns a jitted `update_step(state, batch) -> (state, metrics)`."""
  opt = make_optimizer(hp)

  def loss_fn(params: Params, batch: dict) -> tuple[jax.Array, dict]:
    # ADVANTAGES: the behaviour values bootstrap the last step with its own value (truncated unroll).
    valid = batch["valid"].astype(jnp.float32)
    v_tm1 = batch["value"]
    v_t = jnp.concatenate([v_tm1[1:], v_tm1[-1:]], axis=0)
    discount_t = hp.gamma * (1.0 - batch["done"].astype(jnp.float32))
    adv = gae.gae_advantages(batch["reward"], discount_t, v_tm1, v_t, hp.gae_lambda)
    target = adv + v_tm1
    n = jnp.maximum(valid.sum(), 1.0)
    adv = (adv - (adv * valid).sum() / n) / (jnp.sqrt((((adv - (adv * valid).sum() / n) ** 2) * valid).sum() / n)
                                              + 1e-6)
    # LOSSES
    logits, value = logits_and_value(params, batch["obs"])
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, batch["action"][..., None], -1)[..., 0]
    ratio = jnp.exp(logp - batch["log_prob"])
    pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - hp.clip_eps, 1 + hp.clip_eps) * adv)
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    v_loss = 0.5 * (value - target) ** 2
    pg_loss, v_loss, ent = ((x * valid).sum() / n for x in (pg, v_loss, entropy))
    loss = pg_loss + hp.value_coef * v_loss - hp.entropy_coef * ent
    kl = ((batch["log_prob"] - logp) * valid).sum() / n
    return loss, {"loss": loss, "policy": pg_loss, "value": v_loss, "entropy": ent, "approx_kl": kl}

  @jax.jit
  def update_step(state: TrainingState, batch: dict) -> tuple[TrainingState, dict]:
    chex.assert_rank(batch["obs"], 3)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainingState(params=params, opt_state=opt_state, step=state.step + 1), metrics

  return update_step
