"""evit-jax: EfficientViT (multi-scale linear attention) in JAX/Flax."""

from evit_jax.zoo import create_model, list_models, model_info

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info"]
