"""Closed-loop policy evaluation: named baselines and network policies -> per-agent episode metrics."""

from shared.evaluation.evaluate import (BASELINES, POLICY_NAMES, EvalOutput, Policy, episode_fields, eval_env_config,
                                        evaluate, evaluate_scenes, evaluated_mask, from_policy_fn, make_policy,
                                        split_scenes)

__all__ = ["POLICY_NAMES", "BASELINES", "Policy", "EvalOutput", "eval_env_config", "make_policy", "from_policy_fn",
           "evaluated_mask", "evaluate", "evaluate_scenes", "episode_fields", "split_scenes"]
