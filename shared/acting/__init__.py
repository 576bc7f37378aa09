"""Acting: the policy network bundle every process builds (`policy_net`), the one collect loop (`loop`) and the
batched simulator that acts with it (`engine`). Used by the simulator, evaluator and scene loader services, the fused
trainer, the learner and the benchmarks."""
