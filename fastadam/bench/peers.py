"""The peers: torch's fused and foreach Adam (CPU and CUDA), bitsandbytes' and torchao's
8-bit AdamW and torchao's 4-bit AdamW where installed. All optional: imported inside the
functions that time them."""

from __future__ import annotations

import numpy as np

from .configs import CONFIGS, VARIANTS
from .harness import Contender


def torch_optimizer(config: str):
    """torch's class and keyword arguments for ``config`` (None: torch has no such option)."""
    import torch  # optional

    kw = dict(CONFIGS[config])
    if set(kw) - {"weight_decay", "decoupled_weight_decay", "amsgrad"}:
        return None, None
    cls = torch.optim.AdamW if kw.pop("decoupled_weight_decay", False) else torch.optim.Adam
    return cls, kw


def torch_contenders(param, grad, config, threads) -> list[Contender]:
    """torch.optim.Adam/AdamW fused and foreach on the same param and grad memory; for
    low-bit states, torch's fp32-state Adam and, where installed, bitsandbytes' and
    torchao's 8-bit AdamW (8 bits) or torchao's 4-bit AdamW (4 bits)."""
    import torch  # optional

    if config in VARIANTS:
        return _variant_peers(param, grad, threads, config)
    eight = config in ("8bit", "4bit")
    cls, kw = torch_optimizer("adam" if eight else config)
    if cls is None or param.dtype not in (np.float32, np.float64):
        return []
    torch.set_num_threads(threads)
    out = []
    for impl in ("fused", "foreach"):
        p = torch.from_numpy(param)
        p.grad = torch.from_numpy(grad)
        opt = cls([p], **kw, **{impl: True})
        out.append(Contender(f"torch-{impl}" + ("-fp32" if eight else ""), threads, opt.step))
    if eight and param.dtype == np.float32:
        out += _eight_bit_peers(param, grad, threads, config)
    return out


def _eight_bit_makers(config: str = "8bit") -> list[tuple[str, type]]:
    """(name, class) of the low-bit AdamW peers installed: for 8 bits bitsandbytes' and
    torchao's, for 4 bits torchao's."""
    makers = []
    if config == "4bit":
        try:
            from torchao.optim import AdamW4bit  # optional

            makers.append(("torchao", AdamW4bit))
        except ImportError:
            pass
        return makers
    try:
        import bitsandbytes  # optional

        makers.append(("bitsandbytes", bitsandbytes.optim.AdamW8bit))
    except ImportError:
        pass
    try:
        from torchao.optim import AdamW8bit  # optional

        makers.append(("torchao", AdamW8bit))
    except ImportError:
        pass
    return makers


def _eight_bit_peers(param, grad, threads, config: str = "8bit") -> list[Contender]:
    """The low-bit AdamW peers on copies of param (where installed)."""
    import torch  # optional

    out = []
    for name, cls in _eight_bit_makers(config):
        p = torch.nn.Parameter(torch.from_numpy(param.copy()))
        p.grad = torch.from_numpy(grad)
        opt = cls([p], weight_decay=0.0)
        out.append(Contender(f"{name}-{config}", threads, opt.step))
    return out


def cuda_peers(n: int, dtype: str, config: str) -> list[Contender]:
    """torch's fused CUDA Adam (for low-bit states: its fp32-state step) and, where
    installed, the low-bit AdamW peers of ``config`` on the GPU; each call synced."""
    import torch  # optional

    if not torch.cuda.is_available():
        return []
    eight = config in ("8bit", "4bit")
    cls, kw = torch_optimizer("adam" if eight else config)

    def tensor():
        p = torch.nn.Parameter(torch.randn(n, dtype=getattr(torch, dtype), device="cuda"))
        p.grad = torch.randn_like(p)
        return p

    def synced(step):
        return lambda: (step(), torch.cuda.synchronize())

    out = []
    if cls is not None:
        out.append(Contender("torch-cuda-fused" + ("-fp32" if eight and dtype == "float32"
                                                   else ""), 1,
                             synced(cls([tensor()], fused=True, **kw).step)))
    if eight:
        out += [Contender(f"{name}-cuda-{config}", 1,
                          synced(maker([tensor()], weight_decay=0.0).step))
                for name, maker in _eight_bit_makers(config)]
    return out


def _variant_peers(param, grad, threads, config: str) -> list[Contender]:
    """The references of the other update rules, where installed, on copies of param and
    grad (schedulefree's step divides the gradient in place): schedulefree's
    ``AdamWScheduleFree`` (foreach PyTorch), bitsandbytes' 32-bit ``AdEMAMix``."""
    import torch  # optional

    if param.dtype != np.float32:
        return []
    torch.set_num_threads(threads)
    p = torch.nn.Parameter(torch.from_numpy(param.copy()))
    p.grad = torch.from_numpy(grad.copy())
    try:
        if config == "schedulefree":
            import schedulefree  # optional

            opt = schedulefree.AdamWScheduleFree([p])
            opt.train()
            return [Contender("schedulefree", threads, opt.step)]
        import bitsandbytes  # optional

        return [Contender("bitsandbytes-ademamix", threads,
                          bitsandbytes.optim.AdEMAMix([p]).step)]
    except ImportError:
        return []
