"""The algorithm registry: built-ins by name, bundles registered in-process, plug-ins by "module:attribute", and
one-line errors for everything else."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from shared.algos import api, bc_update, ppo_update, registry


def test_builtins_resolve_to_their_bundles():
  assert {"ppo", "bc"} <= set(registry.names())
  assert registry.get("ppo") is ppo_update.ALGORITHM and registry.get("bc") is bc_update.ALGORITHM
  assert registry.get("ppo").tables == ("onpolicy",) and registry.get("bc").tables == ("expert",)
  assert registry.get("bc").acting == "expert" and registry.get("ppo").acting == "policy"


def test_hyper_fills_only_what_it_sets():
  ppo = registry.get("ppo").configure(api.Hyper(learning_rate=1e-2, clip_eps=0.3, num_epochs=7))
  assert (ppo.optimizer.learning_rate, ppo.ppo.clip_eps, ppo.num_epochs) == (1e-2, 0.3, 7)
  assert ppo.ppo.gamma == ppo_update.PPOUpdateConfig().ppo.gamma  # left alone
  bc = registry.get("bc").configure(api.Hyper(clip_eps=0.3, gamma=0.9))  # PPO's knob means nothing to BC
  assert bc.gamma == 0.9 and bc.optimizer == bc_update.BCUpdateConfig().optimizer
  assert registry.get("ppo").default_config() == ppo_update.PPOUpdateConfig()


def test_register_unregister_and_name_clashes():
  mine = dataclasses.replace(ppo_update.ALGORITHM, name="ppo-copy-test")
  try:
    assert registry.register(mine) is mine and registry.get("ppo-copy-test") is mine
    assert "ppo-copy-test" in registry.names()
    with pytest.raises(ValueError, match="already registered"):
      registry.register(mine)
    with pytest.raises(ValueError, match="already registered"):
      registry.register(dataclasses.replace(mine, name="ppo"))
  finally:
    registry.unregister("ppo-copy-test")
  with pytest.raises(ValueError, match="unknown algorithm 'ppo-copy-test'"):
    registry.get("ppo-copy-test")


def test_plugins_by_module_and_attribute():
  assert registry.get("shared.algos.bc_update:ALGORITHM") is bc_update.ALGORITHM
  with pytest.raises(ValueError, match="cannot be loaded"):
    registry.get("no_such_module_here:ALGORITHM")
  with pytest.raises(ValueError, match="not an api.Algorithm"):
    registry.get("shared.algos.bc_update:configure")
  assert registry.check("") == "" and registry.check("bc") == "bc"
  with pytest.raises(argparse.ArgumentTypeError, match="unknown algorithm"):
    registry.check("nope")


def test_a_bundle_is_checked_when_built():
  with pytest.raises(ValueError, match="acting"):
    dataclasses.replace(ppo_update.ALGORITHM, acting="someone")
  with pytest.raises(ValueError, match="table"):
    api.Draw("somewhere")
