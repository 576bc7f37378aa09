"""Acting: the policy network bundle every process builds (`policy_net`) and the batched simulator that acts with
it (`engine`). Used by the simulator, evaluator and scene loader services, the learner and the benchmarks."""
