"""``fastadam.torch.SparseAdam``: ``torch.optim.SparseAdam`` with the fused row-sparse step.

It subclasses torch's SparseAdam and replaces only ``step``: construction, its
errors, param groups, hooks and ``state_dict`` are torch's, and so is the state
(``step``, an int, and dense ``exp_avg``/``exp_avg_sq`` tensors), so state_dicts
load into torch's SparseAdam and back. Gradients are sparse COO tensors as
``nn.Embedding(sparse=True)`` and ``nn.EmbeddingBag(sparse=True)`` make them,
coalesced or not: the kernel sums duplicate rows itself, without coalescing.
A gradient sparse in more than its first dimension, or a non-contiguous param,
steps with torch's own function.
"""

from __future__ import annotations

import numpy as np
import torch

from .._backends.dispatch import apply_sparse, prepare_sparse, rounding_key
from .._core import array_checks, checks
from .._core.hyper import hyper
from ._tensors import as_array, current_stream

__all__ = ["SparseAdam"]


class SparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` with fastadam's fused row-sparse step (same arguments,
    defaults, checks and state). A dense gradient raises TypeError naming its param.
    Beyond torch's: ``stochastic_rounding`` (with ``seed``) rounds float16 and bfloat16
    tables stochastically, as :class:`fastadam.SparseAdam` does; both travel in the param
    groups."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, maximize: bool = False, *,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(params, lr, betas, eps, maximize)
        options = {"stochastic_rounding": checks.flag("stochastic_rounding",
                                                      stochastic_rounding),
                   "seed": checks.seed(seed)}
        self.defaults.update(options)
        for group in self.param_groups:
            group.update(options)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one step; every gradient is checked before any param changes."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fused, by_torch, fresh = [], [], {}
        first = self.param_groups[0] if self.param_groups else {}
        stochastic, seed = first.get("stochastic_rounding", False), first.get("seed", 0)
        index = -1
        for g_index, group in enumerate(self.param_groups):
            h = hyper(lr=float(group["lr"]), betas=tuple(float(b) for b in group["betas"]),
                      eps=group["eps"], maximize=group.get("maximize", False))
            for p_index, p in enumerate(group["params"]):
                index += 1
                grad = p.grad
                if grad is None:
                    continue
                name = f"param_groups[{g_index}]['params'][{p_index}].grad"
                if not grad.is_sparse:
                    raise TypeError(f"{name} is dense: SparseAdam takes sparse gradients "
                                    "(nn.Embedding(sparse=True)); use fastadam.torch.Adam")
                state = self.state[p] if p in self.state else fresh.setdefault(p, {
                    "step": 0, "exp_avg": _zeros_like(p), "exp_avg_sq": _zeros_like(p)})
                if grad.sparse_dim() != 1 or p.dim() == 0 or not all(
                        t.is_contiguous() for t in (p, state["exp_avg"], state["exp_avg_sq"])):
                    by_torch.append((h, p, grad, state))
                    continue
                shape = (p.shape[0], p[0].numel() if p.shape[0] else 0)
                values = grad._values().contiguous().view(grad._nnz(), shape[1])
                backend = "cuda" if p.is_cuda else "cpu"
                stream = current_stream(p) if p.is_cuda else None
                try:
                    m, v = (as_array(state[k].view(shape)) for k in ("exp_avg", "exp_avg_sq"))
                    arrays = array_checks.sparse_arrays(
                        backend, as_array(p.view(shape)), _indices(grad, p.is_cuda),
                        as_array(values), m, v, None, None)
                    prepare_sparse(backend, arrays, stream)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"{name}: {e}") from e
                sixteen = p.dtype in (torch.float16, torch.bfloat16)
                fused.append((h, state, arrays, backend, stream, bool(stochastic and sixteen),
                              rounding_key(seed, index)))
        for p, state in fresh.items():  # everything is checked: commit
            self.state[p] = state
        for h, state, arrays, backend, stream, rounded, key in fused:
            state["step"] += 1
            apply_sparse(backend, arrays, h, state["step"], stream=stream, stochastic=rounded,
                         key=key)
        for h, p, grad, state in by_torch:
            state["step"] += 1
            torch.optim._functional.sparse_adam(
                [p], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [state["step"]],
                eps=h.eps, beta1=h.beta1, beta2=h.beta2, lr=h.lr, maximize=h.maximize)
        return loss


def _indices(grad: torch.Tensor, cuda: bool):
    """The row of each gradient value: a NumPy view on the CPU, the tensor on the GPU."""
    indices = grad._indices()[0]
    return indices if cuda else indices.numpy()


def _zeros_like(p: torch.Tensor) -> torch.Tensor:
    """Zeroed state shaped like ``p``. On the CPU it is NumPy's memory, which NumPy
    backs with huge pages (it advises them for large arrays; torch does not unless
    ``THP_MEM_ALLOC_ENABLE=1``): a step touches scattered rows, and on 4 KiB pages
    each one is a TLB miss."""
    if p.is_cuda or not p.is_contiguous() or p.dtype not in _SAME_BITS:
        return torch.zeros_like(p)
    return torch.from_numpy(np.zeros(p.shape, _SAME_BITS[p.dtype])).view(p.dtype)


_SAME_BITS = {torch.float32: np.float32, torch.float64: np.float64,
              torch.float16: np.float16, torch.bfloat16: np.uint16}
