"""Networks: shapes, padding never matters, agent order never matters (Perceiver), remaining time reaches only the
value head, preset sizes, and the factorised categorical helpers."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared import nets
from shared.nets import heads

SHAPES = nets.InputShapes(ego_features=5, num_agents=6, agent_features=7, num_roads=9, road_features=4,
                          num_route=5, light_features=3)
BATCH = 4
TINY = {
    "perceiver": nets.NetConfig(
        encoder="perceiver", perceiver=nets.perceiver.PerceiverConfig(width=32, num_heads=2, num_self_layers=1,
                                                                       num_latents=2), head_width=32, head_blocks=1),
    "mlp": nets.NetConfig(encoder="mlp", mlp=nets.mlp.MLPConfig(hidden=(32,), width=32), head_width=32,
                          head_blocks=1),
}


def _random_input(seed: int) -> nets.NetInput:
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(size=(BATCH,) + shape).astype(np.float32)  # noqa: E731
  agents_mask = np.zeros((BATCH, SHAPES.num_agents), bool)
  agents_mask[:, :4] = True
  agents_mask[1] = False  # a sample with no agent at all
  roads_mask = np.zeros((BATCH, SHAPES.num_roads), bool)
  roads_mask[:, :5] = True
  route_mask = np.ones((BATCH, SHAPES.num_route), bool)
  route_mask[:, 3:] = False
  return nets.NetInput(
      ego=normal(SHAPES.ego_features), agents=normal(SHAPES.num_agents, SHAPES.agent_features),
      agents_mask=agents_mask, roads=normal(SHAPES.num_roads, SHAPES.road_features), roads_mask=roads_mask,
      route=normal(SHAPES.num_route, 2), light=normal(SHAPES.light_features),
      remaining_time=np.full((BATCH, 1), 0.5, np.float32), route_mask=route_mask)


@pytest.fixture(scope="module")
def perceiver_model():
  """(model, params, jitted apply) of the tiny Perceiver, shared by every test that needs it."""
  model = nets.ActorCritic(TINY["perceiver"])
  params = nets.host_init(model, _random_input(0))
  apply = jax.jit(model.apply)
  return model, params, lambda inp: apply(params, inp)


@pytest.fixture(scope="module", params=["perceiver", "mlp"])
def network(request, perceiver_model):
  """(encoder name, jitted apply(x) -> (logits, value)) for a tiny config."""
  if request.param == "perceiver":
    return request.param, perceiver_model[2]
  model = nets.ActorCritic(TINY[request.param])
  params = nets.host_init(model, _random_input(0))
  apply = jax.jit(model.apply)
  return request.param, lambda inp: apply(params, inp)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_output_shapes(network):
  _, apply = network
  logits, value = apply(_random_input(0))
  assert [lg.shape for lg in logits] == [(BATCH, 7), (BATCH, 13)]
  assert value.shape == (BATCH,)
  assert all(np.isfinite(np.asarray(lg)).all() for lg in logits) and np.isfinite(np.asarray(value)).all()


def test_padded_tokens_do_not_change_outputs(network):
  _, apply = network
  x = _random_input(0)
  base = apply(x)
  noise = np.random.default_rng(5)
  agents = np.where(x.agents_mask[..., None], x.agents, 1e3 * noise.normal(size=x.agents.shape)).astype(np.float32)
  roads = np.where(x.roads_mask[..., None], x.roads, noise.normal(size=x.roads.shape)).astype(np.float32)
  route = np.where(x.route_mask[..., None], x.route, np.nan).astype(np.float32)
  _assert_same(base, apply(x.replace(agents=agents, roads=roads, route=route)))
  # Control: changing a real agent does change the outputs, so the check above is not vacuous.
  real = x.agents.copy()
  real[0, 0] += 1.0
  assert _max_diff(base, apply(x.replace(agents=real))) > 1e-4


def test_agent_order_does_not_change_outputs(network):
  name, apply = network
  if name == "mlp":
    pytest.skip("the MLP baseline reads agents in slot order by design")
  x = _random_input(0)
  perm = np.array([3, 5, 0, 2, 1, 4])
  road_perm = np.random.default_rng(1).permutation(SHAPES.num_roads)
  permuted = x.replace(agents=x.agents[:, perm], agents_mask=x.agents_mask[:, perm],
                       roads=x.roads[:, road_perm], roads_mask=x.roads_mask[:, road_perm])
  _assert_same(apply(x), apply(permuted))


def test_remaining_time_reaches_only_the_value_head(network):
  _, apply = network
  x = _random_input(0)
  logits, value = apply(x)
  logits2, value2 = apply(x.replace(remaining_time=np.full((BATCH, 1), 0.9, np.float32)))
  _assert_same(logits, logits2)
  assert float(jnp.min(jnp.abs(value - value2))) > 1e-6


def test_act_over_leading_axes(perceiver_model):
  model, params, apply = perceiver_model
  x = _random_input(0)
  x2 = jax.tree.map(lambda a: np.stack([a, a[::-1]]), x)  # (2, BATCH, ...): the batch, then reversed
  acted = jax.jit(lambda p, inp: nets.act(model, p, inp, jax.random.PRNGKey(0), greedy=True))(params, x2)
  assert acted.actions.shape == (2, BATCH, 2) and acted.value.shape == (2, BATCH)
  logits, value = apply(x)
  greedy = np.stack([np.argmax(logits[0], -1), np.argmax(logits[1], -1)], -1)
  np.testing.assert_array_equal(acted.actions, np.stack([greedy, greedy[::-1]]))
  np.testing.assert_array_equal(acted.grid_index[0], greedy[:, 0] * 13 + greedy[:, 1])
  np.testing.assert_allclose(acted.value, np.stack([value, value[::-1]]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(acted.log_prob[0], heads.log_prob(logits, greedy), rtol=1e-5, atol=1e-5)


def test_host_init_matches_flax_init_structure():
  model = nets.ActorCritic(TINY["mlp"])
  x = _random_input(0)
  host = nets.host_init(model, x, seed=3)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert jax.tree.structure(host) == jax.tree.structure(shapes)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(shapes)))
  kernel = host["params"]["encoder"]["Dense_0"]["kernel"]  # (F, 32): std 1/sqrt(F)
  np.testing.assert_allclose(kernel.std() * np.sqrt(kernel.shape[0]), 1.0, atol=0.1)


@pytest.mark.parametrize("encoder", ["perceiver", "mlp"])
@pytest.mark.parametrize("size,target", [("small", 0.75e6), ("base", 2.5e6)])
def test_preset_sizes(encoder, size, target):
  model = nets.ActorCritic(nets.preset(size, encoder))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), nets.dummy_input())  # no compile needed
  count = nets.param_count(shapes)
  assert abs(count - target) <= 0.2 * target, count


def test_from_observation_reads_attributes_and_mappings():
  x = _random_input(0)
  fields = {k: getattr(x, k) for k in ("ego", "agents", "agents_mask", "roads", "roads_mask", "route", "light",
                                       "remaining_time")}
  from_obj = nets.from_observation(types.SimpleNamespace(**fields, other=1))
  from_map = nets.from_observation(dict(fields))
  assert from_obj.route_mask is None and from_map.ego is fields["ego"]
  np.testing.assert_array_equal(from_obj.route_valid(), np.ones((BATCH, SHAPES.num_route), bool))
  with pytest.raises(ValueError, match="light"):
    nets.from_observation({k: v for k, v in fields.items() if k != "light"})


@jax.jit
def _distribution_summary(rng):
  logits = (jnp.log(jnp.array([[0.2, 0.8]])), jnp.log(jnp.array([[0.5, 0.25, 0.25]])))
  many = tuple(jnp.broadcast_to(lg, (4000,) + lg.shape[1:]) for lg in logits)
  factors = heads.joint_to_factors(jnp.arange(91), (7, 13))
  return {
      "log_prob": heads.log_prob(logits, jnp.array([[1, 2]])), "entropy": heads.entropy(logits),
      "greedy": heads.greedy(logits), "draws": heads.sample(rng, many), "factors": factors,
      "joint": heads.factors_to_joint(factors, (7, 13)),
  }


def test_factorised_distribution():
  out = _distribution_summary(jax.random.PRNGKey(0))  # one compile instead of one per eager op
  np.testing.assert_allclose(out["log_prob"], [np.log(0.8 * 0.25)], rtol=1e-6)
  h = -(0.2 * np.log(0.2) + 0.8 * np.log(0.8)) - (0.5 * np.log(0.5) + 0.5 * np.log(0.25))
  np.testing.assert_allclose(out["entropy"], [h], rtol=1e-6)
  np.testing.assert_array_equal(out["greedy"], [[1, 0]])
  np.testing.assert_allclose(np.mean(np.asarray(out["draws"][:, 0]) == 1), 0.8, atol=0.03)
  np.testing.assert_allclose(np.mean(np.asarray(out["draws"][:, 1]) == 0), 0.5, atol=0.03)
  np.testing.assert_array_equal(out["factors"][14], [1, 1])  # 14 = 1 * 13 + 1
  np.testing.assert_array_equal(out["joint"], np.arange(91))
