"""The algorithm interface: one `Algorithm` bundle per learner, registered by name in `shared.algos.registry`.

  algo = registry.get("ppo")
  config = algo.configure(api.Hyper(learning_rate=1e-4))        # the bundle's own config dataclass
  state = algo.init(agent, config, params, rng)                   # its own state pytree
  update = algo.make_update(agent, config, axis_name=None)        # pure (state, batch) -> (state, metrics)
  batch = algo.from_rollout(collected, config)                    # fused path: from the jitted collect loop
  batch = algo.from_arrays(policy, arrays)                        # learner service: a ReplayBatch's arrays
  params = algo.policy_params(state)                              # what acting processes receive

Who drives the fused collect loop is `acting`: "policy" (the bundle's params, sampled) or "expert" (the log's grid
expert; its actions are the labels). What replay keeps and serves is `replay`: the tables and the share of each in
one sample (shared.replay.tables). The fused trainer (shared.algos.fused), the learner service, `drivelab train`
and the benchmarks all reach an algorithm through this interface, by its registry name; none branches on it.

Shapes: `collected` is time-major (T, B, M, ...) with observations (T + 1, ...); ReplayBatch arrays are
(T, B, ...) with flat features "obs/flat" (T, B, F) (see the module of each bundle).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from shared.algos import training

Array = Any  # jax.Array: this module stays importable without jax (the CLI lists algorithm names with it)
State = Any
Batch = Any
Metrics = dict[str, Array]
UpdateFn = Callable[[State, Batch], tuple[State, Metrics]]
ACTING = ("policy", "expert")
TABLES = ("onpolicy", "offpolicy", "expert")


@dataclasses.dataclass(frozen=True)
class Hyper:
  """The knobs every front end offers (learner flags, `drivelab train` flags, benchmark recipes). None keeps the
  bundle's own default; a bundle reads the ones that apply to it and ignores the rest."""

  learning_rate: float | None = None
  lr_decay_steps: int | None = None
  gamma: float | None = None
  gae_lambda: float | None = None
  clip_eps: float | None = None
  value_coef: float | None = None
  entropy_coef: float | None = None
  use_vtrace: bool | None = None
  ref_kl_coef: float | None = None
  num_epochs: int | None = None
  num_minibatches: int | None = None

  def set(self, obj: Any, **names: str) -> Any:
    """`obj` (a dataclass) with each field `f` replaced by this Hyper's field `names[f]` where that is not None."""
    over = {f: getattr(self, h) for f, h in names.items() if getattr(self, h) is not None}
    return dataclasses.replace(obj, **over) if over else obj

  def optimizer(self, base: training.OptimizerConfig) -> training.OptimizerConfig:
    return self.set(base, learning_rate="learning_rate", decay_steps="lr_decay_steps")


@dataclasses.dataclass(frozen=True)
class Draw:
  """One replay table an algorithm samples and its share of each sample.

  Attributes:
    table: "onpolicy" (FIFO of the simulators' Trajectories, each used once, stale ones masked), "offpolicy"
      (uniform ring over the Trajectories, with replacement) or "expert" (uniform ring over the scene loaders'
      ExpertTrajectories).
    share: fraction of a sample's items drawn from this table (the shares of a spec sum to 1).
  """

  table: str
  share: float = 1.0

  def __post_init__(self):
    if self.table not in TABLES or not 0.0 < self.share <= 1.0:
      raise ValueError(f"Draw: table must be one of {TABLES} and share in (0, 1], got {self.table!r}, {self.share}")


def _training_state(agent, config, params, rng) -> training.TrainingState:
  from shared.algos import training

  return training.init_training_state(params, training.make_optimizer(config.optimizer), rng)


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A learner, as everything that trains one sees it.

  Attributes:
    name: the registry name (`--algo`).
    config_type: the bundle's config dataclass.
    configure: Hyper -> config (Hyper's None fields keep the config's defaults).
    make_update: (agent, config, axis_name) -> un-jitted pure update(state, batch) -> (state, metrics); gradients
      averaged over `axis_name` when it is not None (shared.algos.distributed).
    from_rollout: (collected, config) -> batch, inside the fused trainer's jit.
    from_arrays: (policy_net, arrays) -> batch, from a ReplayBatch's numpy arrays (host side, then on device).
    acting: who drives the fused collect loop: "policy" or "expert".
    replay: the tables replay keeps for it and the share of each in one sample.
    init: (agent, config, policy params, rng) -> state (default: a TrainingState with config.optimizer).
    policy_params: state -> the policy params acting processes receive (default: state.params).
    with_policy_params: (state, params) -> state acting with `params` (a warm start).
    wants_reference: config -> bool: the batch carries a frozen reference policy's logits (`add_reference`).
    add_reference: (agent, batch, reference params) -> batch with them (None: not supported).
  """

  name: str
  config_type: type
  configure: Callable[[Hyper], Any]
  make_update: Callable[..., UpdateFn]
  from_rollout: Callable[[Any, Any], Batch]
  from_arrays: Callable[[Any, dict], Batch]
  acting: str = "policy"
  replay: tuple[Draw, ...] = (Draw("onpolicy"),)
  init: Callable[..., State] = _training_state
  policy_params: Callable[[State], Any] = lambda state: state.params
  with_policy_params: Callable[[State, Any], State] = lambda state, params: state.replace(params=params)
  wants_reference: Callable[[Any], bool] = lambda config: False
  add_reference: Callable[[Any, Batch, Any], Batch] | None = None

  def __post_init__(self):
    if self.acting not in ACTING:
      raise ValueError(f"Algorithm {self.name}: acting must be one of {ACTING}, got {self.acting!r}")
    if not self.replay or abs(sum(d.share for d in self.replay) - 1.0) > 1e-6:
      raise ValueError(f"Algorithm {self.name}: replay shares must sum to 1, got {self.replay}")

  @property
  def tables(self) -> tuple[str, ...]:
    return tuple(d.table for d in self.replay)

  def default_config(self) -> Any:
    return self.configure(Hyper())


__all__ = ["ACTING", "Algorithm", "Draw", "Hyper", "TABLES"]
