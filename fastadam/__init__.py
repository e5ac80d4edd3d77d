"""fastadam: a fused, one-pass Adam/AdamW update for large flat float buffers."""

from .flat import FlatBuffer, flatten
from .functional import adam_step
from .optimizer import Adam, AdamW

__all__ = ["Adam", "AdamW", "FlatBuffer", "adam_step", "flatten", "__version__"]
__version__ = "0.1.0"
