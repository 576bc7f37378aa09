"""shared.training: what runs training end to end on top of shared.algos: atomic checkpoints (`checkpoint`)."""
