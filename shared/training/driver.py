"""The one driver of the fused trainer: iterations of `shared.algos.fused` under a budget, with periodic evaluation,
atomic checkpoints and a resume, reporting through hooks (the CLI draws its bar and writes its history with them).

  out = driver.train(agent, cfg, scenes, seed, Budget(agent_steps=200_000), Hooks(eval_due=..., on_eval=...),
                     checkpoints=Checkpoints("runs/x/checkpoints/ppo", every=20))
  out.params, out.agent_steps, out.train_s, out.compile_s

Clock: `elapsed` runs from the start of this call, less the time spent in evaluations; `compile_s` is this call's
first iteration (it compiles); training time `train_s` = the resumed run's training time + elapsed - compile_s.
`Budget.seconds` bounds the training time. After each iteration, in order: `on_iteration`, a checkpoint (every
`Checkpoints.every` iterations and at the end), an evaluation when `eval_due(iteration, agent_steps)` or at the end
(`on_eval` returning False stops), `progress`. The end is the budget spent: agent steps, iterations or seconds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax

from shared.algos import fused
from shared.training import checkpoint

STEPS_KEY = "agent_steps"  # a checkpoint's extra: agent steps learned from when it was written


@dataclasses.dataclass(frozen=True)
class Budget:
  """What ends training, whichever comes first (None: no bound)."""

  agent_steps: int | None = None
  iterations: int | None = None
  seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class Checkpoints:
  """`directory` gets {"train", "rng", "iteration"} every `every` iterations and at the end; a run starts from its
  newest checkpoint there when there is one."""

  directory: str
  every: int

  def agent_steps_done(self) -> int:
    """Agent steps of the newest checkpoint (0 without one): where a resumed run starts (e.g. a progress bar)."""
    found = checkpoint.list_checkpoints(self.directory)
    return int(checkpoint.read_extra(found[-1][1]).get(STEPS_KEY, 0)) if found else 0


@dataclasses.dataclass(frozen=True)
class Clock:
  """Seconds: elapsed (this call, evaluations excluded), compile_s (this call's first iteration), train_s."""

  elapsed: float
  compile_s: float
  train_s: float


@dataclasses.dataclass(frozen=True)
class Hooks:
  """on_iteration(iteration, agent_steps, metrics: dict of floats, Clock); eval_due(iteration, agent_steps) -> bool;
  on_eval(params, iteration, agent_steps, Clock) -> False to stop; progress(agent_steps, metrics, wall_s)."""

  on_iteration: Callable[[int, int, dict, Clock], None] | None = None
  eval_due: Callable[[int, int], bool] | None = None
  on_eval: Callable[[Any, int, int, Clock], bool | None] | None = None
  progress: Callable[[int, dict, float], None] | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
  """params (host numpy), agent_steps (resumed ones included), train_s, compile_s, resumed_s (the training time a
  resumed checkpoint had already done), iterations (the carry's)."""

  params: Any
  agent_steps: int
  train_s: float
  compile_s: float | None
  resumed_s: float
  iterations: int


def _template(carry: fused.FusedCarry) -> dict:
  return {"train": carry.train, "rng": carry.rng, "iteration": carry.iteration}


def train(agent, cfg: fused.FusedConfig, scenes, seed: int, budget: Budget, hooks: Hooks = Hooks(), params=None,
          reference=None, checkpoints: Checkpoints | None = None) -> Outcome:
  """Runs (or resumes) fused training of `cfg` on `scenes` (a list of padded Scenarios); see the module docstring.
  `params`: start from these (default: fresh); `reference`: the frozen policy of a KL-to-reference loss."""
  carry = fused.init_carry(agent, cfg, scenes, jax.random.PRNGKey(seed), params, reference)
  done_steps, resumed_s = 0, 0.0
  if checkpoints is not None:
    restored = checkpoint.restore_latest(checkpoints.directory, jax.device_get(_template(carry)))
    if restored is not None:
      tree, _, extra = restored
      carry = carry.replace(**jax.tree.map(jax.numpy.array, tree))
      done_steps, resumed_s = int(extra[STEPS_KEY]), float(extra.get("wall_s", 0.0))
  t0, state = time.perf_counter(), {"eval_s": 0.0, "compile_s": None}

  def clock() -> Clock:
    elapsed = time.perf_counter() - t0 - state["eval_s"]
    compile_s = state["compile_s"] if state["compile_s"] is not None else elapsed
    return Clock(elapsed=elapsed, compile_s=compile_s, train_s=resumed_s + elapsed - compile_s)

  def on_iteration(carry, metrics, steps, _wall):
    it = int(carry.iteration)
    if state["compile_s"] is None:  # this call's first iteration compiled: not training time
      state["compile_s"] = time.perf_counter() - t0
    now = clock()
    if hooks.on_iteration is not None:
      hooks.on_iteration(it, steps, metrics, now)
    last = ((budget.agent_steps is not None and steps >= budget.agent_steps)
            or (budget.seconds is not None and now.train_s >= budget.seconds)
            or (budget.iterations is not None and it >= budget.iterations))
    if checkpoints is not None and checkpoints.every and (it % checkpoints.every == 0 or last):
      checkpoint.save(checkpoints.directory, _template(carry), it,
                      {STEPS_KEY: steps, "wall_s": resumed_s + now.elapsed})
    if hooks.on_eval is not None and (last or (hooks.eval_due is not None and hooks.eval_due(it, steps))):
      t_eval = time.perf_counter()
      keep_going = hooks.on_eval(carry.train.params, it, steps, now)
      state["eval_s"] += time.perf_counter() - t_eval
      if keep_going is False:
        return False
    return not last

  total = budget.agent_steps if budget.agent_steps is not None else 10**15
  iterations = None if budget.iterations is None else max(budget.iterations - int(carry.iteration), 0)
  carry, steps = fused.run(fused.make_train_iteration(agent, cfg), carry, total, on_iteration, hooks.progress,
                           max_iterations=iterations, agent_steps_done=done_steps)
  end = clock()
  return Outcome(params=jax.device_get(carry.train.params), agent_steps=steps, train_s=end.train_s,
                 compile_s=state["compile_s"], resumed_s=resumed_s, iterations=int(carry.iteration))


__all__ = ["Budget", "Checkpoints", "Clock", "Hooks", "Outcome", "train"]
