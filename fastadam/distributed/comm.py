"""The collectives a sharded optimizer needs, on NumPy buffers, over mpi4py or torch.distributed.

Shards are contiguous segments of a flat buffer, ``counts[r]`` elements for rank
r, in rank order. MPI takes uneven segments directly (``Reduce_scatter``,
``Allgatherv``, ``Gatherv``); torch.distributed wants equal ones, so for it each
segment is padded to the largest. Neither engine is imported until asked for.
"""

from __future__ import annotations

import sys

import numpy as np


def transport(comm):
    """The transport for ``comm``: an mpi4py communicator, a torch.distributed process
    group, or None (torch's default group if initialised, else ``MPI.COMM_WORLD``)."""
    if comm is None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.distributed.is_available() and \
                torch.distributed.is_initialized():
            return TorchTransport(None)
        try:
            from mpi4py import MPI  # optional
        except ImportError as e:
            raise ImportError("comm=None needs torch.distributed initialised, or mpi4py: "
                              "pip install 'fastadam[mpi]'") from e
        return MPITransport(MPI.COMM_WORLD)
    if type(comm).__module__.startswith("mpi4py"):
        return MPITransport(comm)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(comm, torch.distributed.ProcessGroup):
        return TorchTransport(comm)
    raise TypeError("comm must be an mpi4py communicator, a torch.distributed process group, "
                    f"or None; got {type(comm).__name__}")


def offsets(counts) -> np.ndarray:
    """Where each segment starts, and the end."""
    return np.concatenate(([0], np.cumsum(counts))).astype(np.int64)


class MPITransport:
    """Collectives over an mpi4py communicator."""

    name = "mpi"

    def __init__(self, comm) -> None:
        from mpi4py import MPI  # optional

        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def _spec(self, buffer: np.ndarray, counts) -> list:
        from mpi4py.util.dtlib import from_numpy_dtype  # optional

        units = np.asarray(counts, np.int64)
        return [buffer, units, offsets(units)[:-1], from_numpy_dtype(buffer.dtype)]

    def allgather_object(self, obj) -> list:
        return self.comm.allgather(obj)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank."""
        return bool(self.comm.allreduce(int(flag), op=self.MPI.MAX))

    def reduce_scatter_sum(self, send: np.ndarray, recv: np.ndarray, counts) -> None:
        self.comm.Reduce_scatter(send, recv, list(counts), op=self.MPI.SUM)

    def allgather(self, buffer: np.ndarray, counts) -> None:
        """Fill ``buffer`` (n,) with every rank's segment; this rank's is in place."""
        self.comm.Allgatherv(self.MPI.IN_PLACE, self._spec(_bits(buffer), counts))

    def gather(self, segment: np.ndarray, counts, root: int, dtype) -> np.ndarray | None:
        out = np.empty(int(np.sum(counts)), dtype) if self.rank == root else None
        self.comm.Gatherv(_bits(segment), None if out is None else self._spec(_bits(out), counts),
                          root=root)
        return out

    def broadcast(self, buffer: np.ndarray, root: int) -> None:
        self.comm.Bcast(_bits(buffer), root=root)


class TorchTransport:
    """Collectives over a torch.distributed process group (gloo on the CPU): segments
    padded to the largest, as its collectives want equal ones."""

    name = "torch"

    def __init__(self, group) -> None:
        import torch  # optional
        import torch.distributed as dist  # optional

        self.torch, self.dist, self.group = torch, dist, group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        # torch 2.13 names them *_single; the *_tensor names before it (deprecated since)
        self._reduce_scatter = getattr(dist, "reduce_scatter_single", None) or \
            dist.reduce_scatter_tensor
        self._all_gather = getattr(dist, "all_gather_single", None) or \
            dist.all_gather_into_tensor

    def _global(self, rank: int) -> int:
        return rank if self.group is None else self.dist.get_global_rank(self.group, rank)

    def _padded(self, buffer: np.ndarray, counts) -> tuple[np.ndarray, np.ndarray]:
        """(a zeroed (size, chunk) array, the segment starts): segment r in row r."""
        return np.zeros((self.size, max(counts)), buffer.dtype), offsets(counts)

    def allgather_object(self, obj) -> list:
        out = [None] * self.size
        self.dist.all_gather_object(out, obj, group=self.group)
        return out

    def any(self, flag: bool) -> bool:
        t = self.torch.tensor([int(flag)], dtype=self.torch.int64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def reduce_scatter_sum(self, send: np.ndarray, recv: np.ndarray, counts) -> None:
        padded, starts = self._padded(send, counts)
        for r in range(self.size):
            padded[r, : counts[r]] = send[starts[r]:starts[r + 1]]
        out = np.empty(padded.shape[1], send.dtype)
        self._reduce_scatter(self.torch.from_numpy(out), self.torch.from_numpy(padded.reshape(-1)),
                             op=self.dist.ReduceOp.SUM, group=self.group)
        recv[...] = out[: counts[self.rank]]

    def allgather(self, buffer: np.ndarray, counts) -> None:
        bits = _bits(buffer, "f")
        padded, starts = self._padded(bits, counts)
        mine = np.zeros(padded.shape[1], bits.dtype)
        mine[: counts[self.rank]] = bits[starts[self.rank]:starts[self.rank + 1]]
        self._all_gather(self.torch.from_numpy(padded.reshape(-1)), self.torch.from_numpy(mine),
                         group=self.group)
        for r in range(self.size):
            if r != self.rank:
                bits[starts[r]:starts[r + 1]] = padded[r, : counts[r]]

    def gather(self, segment: np.ndarray, counts, root: int, dtype) -> np.ndarray | None:
        bits = _bits(segment, "f")
        chunk = max(counts)
        mine = np.zeros(chunk, bits.dtype)
        mine[: bits.size] = bits
        rows = [self.torch.empty(chunk, dtype=self.torch.from_numpy(mine).dtype)
                for _ in range(self.size)] if self.rank == root else None
        self.dist.gather(self.torch.from_numpy(mine), rows, dst=self._global(root),
                         group=self.group)
        if rows is None:
            return None
        return np.concatenate([t.numpy()[:c] for t, c in zip(rows, counts)]).view(dtype)

    def broadcast(self, buffer: np.ndarray, root: int) -> None:
        self.dist.broadcast(self.torch.from_numpy(_bits(buffer, "f")), src=self._global(root),
                            group=self.group)


def _bits(a: np.ndarray, kind: str = "u") -> np.ndarray:
    """16-bit arrays as another 16-bit type (``kind``: "u" uint16, "f" float16), moved as
    bits: bfloat16 has no MPI type, and gloo moves float16 but no 16-bit integers."""
    return a.view(f"{kind}2") if a.dtype.itemsize == 2 else a
