"""The state layer: param groups, one slot per params array with its state, the stepping
plans, state_dicts and checkpoint files. Above the backends, below the public shells."""
