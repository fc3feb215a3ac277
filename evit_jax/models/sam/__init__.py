"""EfficientViT-SAM modeling: the image encoder (EfficientViT backbone + neck), and
segment-anything's prompt encoder, mask decoder and two-way transformer, as Flax modules.

The apps on top of them (predictor, automatic mask generator, CLI, bench, drawing,
evaluation) live in `evit_jax.sam` and import from here, never the other way round.
"""

from evit_jax.models.sam.config import SamConfig, SamDecoderConfig
from evit_jax.models.sam.model import EfficientViTSam, SamPromptDecoder

__all__ = ["EfficientViTSam", "SamConfig", "SamDecoderConfig", "SamPromptDecoder"]
