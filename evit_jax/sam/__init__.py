"""EfficientViT-SAM: model, predictor, automatic mask generator (segment-anything's API)."""

from evit_jax.sam.amg import SamAutomaticMaskGenerator
from evit_jax.sam.model import EfficientViTSam, SamConfig
from evit_jax.sam.predictor import SamPredictor

__all__ = ["EfficientViTSam", "SamAutomaticMaskGenerator", "SamConfig", "SamPredictor"]
