"""A new algorithm through the registry alone: REINFORCE with a learned baseline, written here as a bundle
(shared.algos.api) and registered with `registry.register`, then trained by the fused trainer and by the learner
service in a running stack (scene loader -> broker -> fused simulator -> replay -> learner, real ZeroMQ), with no
other module told about it.

REINFORCE with a baseline: G_t = r_t + gamma (1 - terminated_t) G_{t+1} (G = 0 after the unroll),
  L = -mean(mask * stop_gradient(G_t - V(s_t)) * log pi(a_t | s_t)) + value_coef * mean(mask * (V(s_t) - G_t)^2).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.algos import api, bc, distributed, registry, training

# THE BUNDLE: everything an algorithm needs, in one place.


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
  gamma: float = 0.99
  value_coef: float = 0.5
  optimizer: training.OptimizerConfig = training.OptimizerConfig(learning_rate=1e-3)


@flax.struct.dataclass
class ReinforceBatch:
  obs: Any  # (T, ...) NetInput
  actions: jax.Array  # (T, ..., H) per-head indices
  reward: jax.Array
  terminated: jax.Array
  mask: jax.Array


def configure(hyper: api.Hyper) -> ReinforceConfig:
  base = ReinforceConfig()
  return hyper.set(dataclasses.replace(base, optimizer=hyper.optimizer(base.optimizer)), gamma="gamma",
                   value_coef="value_coef")


def from_rollout(c, config: ReinforceConfig) -> ReinforceBatch:
  steps = c.reward.shape[0]
  return ReinforceBatch(obs=jax.tree.map(lambda x: x[:steps], c.obs), actions=c.factors, reward=c.reward,
                        terminated=c.terminated, mask=c.acting.astype(jnp.float32))


def from_arrays(pn, arrays: dict) -> ReinforceBatch:
  return ReinforceBatch(obs=pn.net_input(jnp.asarray(arrays["obs/flat"], jnp.float32)),
                        actions=pn.agent.to_factors(jnp.asarray(arrays["action"], jnp.int32)),
                        reward=jnp.asarray(arrays["reward"], jnp.float32),
                        terminated=jnp.asarray(arrays["terminated"], bool),
                        mask=jnp.asarray(arrays["valid"], jnp.float32))


def returns_of(config: ReinforceConfig, batch: ReinforceBatch) -> jax.Array:
  discount = config.gamma * (1.0 - batch.terminated.astype(jnp.float32))
  return bc.discounted_returns(batch.reward, discount, jnp.zeros_like(batch.reward[0]))


def make_update(agent, config: ReinforceConfig, axis_name=None):
  def loss_fn(params, b, rng):
    logits, value = agent.apply(params, b["obs"])
    logp = agent.log_prob(logits, b["actions"])
    n = jnp.maximum(jnp.sum(b["mask"]), 1.0)
    pg = -jnp.sum(b["mask"] * jax.lax.stop_gradient(b["returns"] - value) * logp) / n
    value_loss = jnp.sum(b["mask"] * (value - b["returns"]) ** 2) / n
    return pg + config.value_coef * value_loss, {"pg_loss": pg, "value_loss": value_loss}

  step = distributed.gradient_step(loss_fn, training.make_optimizer(config.optimizer), axis_name)

  def update(state, batch: ReinforceBatch):
    b = {"obs": batch.obs, "actions": batch.actions, "returns": returns_of(config, batch), "mask": batch.mask}
    state, metrics = step(state, b)
    return state, dict(metrics, samples=jnp.sum(batch.mask))

  return update


ALGORITHM = api.Algorithm(name="reinforce", config_type=ReinforceConfig, configure=configure, make_update=make_update,
                          from_rollout=from_rollout, from_arrays=from_arrays, acting="policy",
                          replay=(api.Draw("onpolicy"),))


@pytest.fixture(scope="module", autouse=True)
def registered():
  registry.register(ALGORITHM, replace=True)  # THE REGISTRY ENTRY
  yield
  registry.unregister("reinforce")


# THE TESTS


def _surrogate_gain(agent, config, before, after, batch) -> float:
  """sum(mask * A * (log pi_after - log pi_before)) with A = G - V_before: positive when the update moved the policy
  along the policy gradient (towards actions that did better than the baseline)."""
  adv = returns_of(config, batch) - agent.apply(before, batch.obs)[1]
  logp = lambda p: agent.log_prob(agent.apply(p, batch.obs)[0], batch.actions)
  return float(jnp.sum(batch.mask * adv * (logp(after) - logp(before))))


def test_reinforce_trains_in_the_fused_path():
  from shared.algos import agent as agent_lib, fused
  from shared.nets import actor_critic
  from shared.scenes import synthetic
  from shared.sim import env

  ecfg = env.EnvConfig(control_mode="all", max_controlled=8)
  scenes = [sc for sc, _ in synthetic.generate_many(2, seed=3)]
  agent = agent_lib.make_agent(actor_critic.preset("tiny", "mlp"), ecfg.actions)
  cfg = fused.FusedConfig(env=ecfg, algo="reinforce", num_scenes=2, num_steps=20)
  assert isinstance(cfg.learner, ReinforceConfig) and registry.get("reinforce") is ALGORITHM
  carry = fused.init_carry(agent, cfg, scenes, jax.random.PRNGKey(0))
  before = jax.device_get(carry.train.params)
  # One batch, collected by the fused trainer's own loop with the current params, and one update on it.
  scenarios = fused.sample_scenes(carry.scenes, 2, jax.random.PRNGKey(1))
  c = fused.collect(agent, cfg, carry.train.params, scenarios, jax.random.PRNGKey(2), expert=False)
  batch = ALGORITHM.from_rollout(c, cfg.learner)
  update = jax.jit(ALGORITHM.make_update(agent, cfg.learner))
  state, metrics = update(ALGORITHM.init(agent, cfg.learner, before, jax.random.PRNGKey(0)), batch)
  assert float(metrics["samples"]) > 50 and np.isfinite(float(metrics["loss"]))
  assert _surrogate_gain(agent, cfg.learner, before, state.params, batch) > 0
  # The whole fused iteration (collect + this update) runs and changes the params.
  iteration = fused.make_train_iteration(agent, cfg)
  for _ in range(3):
    carry, metrics = iteration(carry)
  assert int(carry.train.step) == 3 and np.isfinite(float(metrics["pg_loss"]))
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(
      jax.device_get(carry.train.params))))
  assert moved > 1e-5


@pytest.mark.slow
def test_reinforce_trains_through_the_learner_service(tmp_path):
  from services.broker import config as broker_config, service as broker_service
  from services.common import runtime
  from services.learner import config as learner_config, service as learner_service
  from services.replay import config as replay_config, service as replay_service
  from services.scene_loader import config as loader_config, service as loader_service
  from services.simulator import config as sim_config, service as sim_service
  from services.stack import supervisor
  from shared.acting import policy_net
  from shared.scenes import synthetic, types

  caps = dict(max_objects=16, max_road_points=1000, max_tl_lanes=8)
  common = runtime.CommonConfig(metrics_port=0, port_offset=supervisor.find_port_offset(), run_dir=str(tmp_path),
                                log_level="WARNING", net="mlp", preset="tiny", algo="reinforce")
  pairs = synthetic.generate_many(3, seed=5, scene_config=types.SceneConfig(**caps))
  scenes = ([p[0] for p in pairs], [p[1] for p in pairs])
  builders = {
      "learner": lambda rt: learner_service.bootstrap(learner_config.LearnerConfig(checkpoint_every=0,
                                                                                 publish_interval_s=0.5), rt),
      "replay": lambda rt: replay_service.bootstrap(replay_config.ReplayConfig(capacity=4, sample_items=2), rt),
      "broker": lambda rt: broker_service.bootstrap(broker_config.BrokerConfig(), rt),
      "sim": lambda rt: sim_service.bootstrap(sim_config.SimulatorConfig(mode="fused", unroll_length=8,
                                                                        max_controlled=4, send_timeout_s=30.0), rt),
      "loader": lambda rt: loader_service.bootstrap(loader_config.SceneLoaderConfig(batch_size=2, **caps), rt,
                                                    scenes=scenes),
  }
  rts, svcs, threads = {}, {}, {}
  for name, build in builders.items():
    rts[name] = runtime.Runtime(name, common)
    svcs[name] = build(rts[name])
    threads[name] = threading.Thread(target=rts[name].run, args=(svcs[name],), name=name, daemon=True)
    threads[name].start()
  learner = svcs["learner"]
  try:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (learner.version >= 4 and svcs["sim"].params_version >= 1):
      time.sleep(0.1)
    assert learner.version >= 4, "the learner made fewer than 4 REINFORCE updates in 300 s"
    assert learner.algo.algorithm is ALGORITHM and isinstance(learner.algo.config, ReinforceConfig)
    assert svcs["sim"].params_version >= 1  # the simulator acts with what the REINFORCE learner published
    pn = policy_net.from_common(common)
    v0 = pn.init_flat()
    assert max(float(np.abs(learner.published[k] - v0[k]).max()) for k in v0) > 1e-5
    samples = rts["learner"].registry.get_sample_value("drivelab_learner_samples_total")
    assert samples and samples > 0
    loss = rts["learner"].registry.get_sample_value("drivelab_learner_loss", {"name": "pg_loss"})
    assert loss is not None and np.isfinite(loss)
  finally:
    for name in reversed(list(builders)):
      rts[name].stop.set()
    for name in reversed(list(builders)):
      threads[name].join(15)
