"""fastadam: a fused, one-pass Adam/AdamW update for large flat float buffers."""

from .functional import adam_step
from .optimizer import Adam, AdamW

__all__ = ["Adam", "AdamW", "adam_step", "__version__"]
__version__ = "0.1.0"
