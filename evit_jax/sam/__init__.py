"""EfficientViT-SAM apps, segment-anything's API: the predictor, the automatic mask generator,
and the `evit-segment` CLI, bench, drawing, prompts, transforms and evaluation (`eval/`).

The model itself (image encoder, prompt encoder, mask decoder) is in `evit_jax.models.sam`.
"""

from evit_jax.sam.amg import SamAutomaticMaskGenerator
from evit_jax.sam.predictor import SamPredictor

__all__ = ["SamAutomaticMaskGenerator", "SamPredictor"]
