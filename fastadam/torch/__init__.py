"""``torch.optim`` replacements that step with fastadam's fused kernels.

    import fastadam.torch
    opt = fastadam.torch.AdamW(model.parameters(), lr=1e-3)

``Adam``/``AdamW`` (torch's state, ``_dense.py``), ``Adam8bit``/``AdamW8bit``
(bitsandbytes' 8-bit state, ``_eight_bit.py``), ``Adam4bit``/``AdamW4bit`` (torchao's
4-bit state, ``_four_bit.py``) and ``SparseAdam`` (row-sparse gradients, ``_sparse.py``)
subclass torch's optimizers and replace only ``step``; ``AdamWScheduleFree`` and
``AdEMAMix`` (``_variants.py``) are the schedulefree and bitsandbytes optimizers, fused.
torch is an optional dependency: only this package imports it.
"""

from ._dense import Adam, AdamW
from ._eight_bit import Adam8bit, AdamW8bit
from ._four_bit import Adam4bit, AdamW4bit, torchao_state_dict
from ._sparse import SparseAdam
from ._variants import AdamWScheduleFree, AdEMAMix

__all__ = ["AdEMAMix", "Adam", "AdamW", "AdamWScheduleFree", "Adam4bit", "AdamW4bit",
           "Adam8bit", "AdamW8bit", "SparseAdam", "torchao_state_dict"]
