"""fastadam: a fused, one-pass Adam/AdamW update for large flat float buffers."""

from ._core.bfloat16 import as_bfloat16
from .flat import FlatBuffer, flatten
from .functional import adam_step, adam_step_4bit, adam_step_8bit, grad_norm, sparse_adam_step
from .optimizer import Adam, AdamW
from .sparse import SparseAdam
from .variants import AdamWScheduleFree, AdEMAMix

__all__ = ["AdEMAMix", "Adam", "AdamW", "AdamWScheduleFree", "FlatBuffer", "SparseAdam",
           "adam_step", "adam_step_4bit", "adam_step_8bit", "as_bfloat16", "flatten", "grad_norm",
           "sparse_adam_step", "__version__"]
__version__ = "0.1.0"
