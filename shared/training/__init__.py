"""shared.training: what runs training end to end on top of shared.algos: the fused trainer's driver (`driver`),
recipes as typed configs (`recipes`), Table 2 scores (`scores`) and atomic checkpoints (`checkpoint`).
"""
