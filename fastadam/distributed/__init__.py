"""Sharded Adam (ZeRO stage 1 and 2) over mpi4py or torch.distributed: every rank keeps
the full params and 1/N of the optimizer state (``sharded.py``; transports in
``comm.py``, the cut of the flat buffer in ``pieces.py``)."""

from .pieces import shard_counts
from .sharded import ShardedAdam, ShardedAdamW

__all__ = ["ShardedAdam", "ShardedAdamW", "shard_counts"]
