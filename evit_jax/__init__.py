"""evit-jax: EfficientViT (multi-scale linear attention) in JAX/Flax."""

from evit_jax.malloc import keep_buffers_mapped

keep_buffers_mapped()  # XLA:CPU's per-call buffers stay mapped (EVIT_MALLOC=0: off)

from evit_jax.convert.keymap import convert_state_dict  # noqa: E402
from evit_jax.fuse import fuse_bn  # noqa: E402
from evit_jax.io import load_variables, pretrained, save_variables  # noqa: E402
from evit_jax.version import __version__  # noqa: E402, F401
from evit_jax.zoo import create_model, init_variables, list_models, model_info  # noqa: E402

__all__ = ["convert_state_dict", "create_model", "fuse_bn", "init_variables", "list_models",
           "load_variables", "model_info", "pretrained", "save_variables"]
