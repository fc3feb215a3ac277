"""`evit-convert --verify`: check a conversion against PyTorch (needs torch; optional).

Two tiers:
  (a) file: load the checkpoint with torch itself (`torch.load(weights_only=True)` or
      safetensors' torch API) and compare every tensor with what the torch-free reader gave.
      They must be identical.
  (b) model: when the authors' `efficientvit` package (official names) or timm
      (`efficientvit_*` names) is importable, build the PyTorch model, load the state dict,
      and compare its output with the converted Flax model's on one random image.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evit_jax.convert.readers import detect_format, select_state_dict
from evit_jax.errors import UserError
from evit_jax.zoo import model_info

MODEL_TOLERANCE = 1e-4  # rel-L2; a correct float32 port lands near 1e-6


class VerificationError(UserError):
    """The converted weights or outputs differ from PyTorch's."""


def require_torch():
    try:
        import torch
    except ImportError:
        raise VerificationError("--verify needs PyTorch, which is not installed: "
                                "pip install 'evit-jax[torch]' (or run without --verify)") from None
    return torch


def _torch_state_dict(path: Path, key: str | None) -> dict[str, Any]:
    torch = require_torch()
    if detect_format(path) == "safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (torch raises many kinds; report them all)
            raise VerificationError(f"torch.load(weights_only=True) could not read {path}: "
                                    f"{str(e).splitlines()[0]}") from None
    obj = _tensors_to_numpy(obj)
    return select_state_dict(obj, key, source=path)


def _tensors_to_numpy(obj: Any) -> Any:
    if hasattr(obj, "detach"):
        t = obj.detach().cpu()
        if t.is_floating_point() and t.element_size() < 2 or str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    if isinstance(obj, Mapping):
        return {k: _tensors_to_numpy(v) for k, v in obj.items()}
    return obj


def verify_file(path: str | Path, ours: Mapping[str, np.ndarray], key: str | None = None
                ) -> float:
    """Tier (a): the largest relative difference between torch's and our reading (must be 0).

    Raises:
      VerificationError: different keys, shapes or dtypes.
    """
    theirs = _torch_state_dict(Path(path), key)
    if set(theirs) != set(ours):
        diff = sorted(set(theirs) ^ set(ours))[:10]
        raise VerificationError(f"torch and the reader disagree on the keys: {diff}")
    worst = 0.0
    for k, ref in theirs.items():
        got = ours[k]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise VerificationError(f"{k}: reader gave {got.dtype}{got.shape}, torch "
                                    f"{ref.dtype}{ref.shape}")
        if np.array_equal(got, ref, equal_nan=ref.dtype.kind in "fc"):
            continue
        if ref.dtype.kind in "fc":
            scale = float(np.max(np.abs(ref))) or 1.0
            worst = max(worst, float(np.max(np.abs(got - ref))) / scale)
        elif not np.array_equal(got, ref):
            worst = max(worst, 1.0)
    return worst


def _torch_model(name: str) -> tuple[Any, str]:
    """The reference PyTorch module of a zoo name, or (None, why not)."""
    spec = model_info(name)
    if spec.task not in ("cls", "seg"):
        return None, f"no PyTorch model comparison for task {spec.task!r}"
    if spec.key_style == "timm":
        try:
            import timm
        except ImportError as e:
            return None, f"timm is not importable ({e}; pip install timm)"

        return timm.create_model(name, pretrained=False), "timm"
    if importlib.util.find_spec("efficientvit") is None:
        return None, ("the authors' `efficientvit` package is not importable (clone "
                      "mit-han-lab/efficientvit and put it on PYTHONPATH)")
    try:
        if spec.task == "cls":
            from efficientvit.cls_model_zoo import create_efficientvit_cls_model as create
        else:
            from efficientvit.seg_model_zoo import create_efficientvit_seg_model as create
    except ImportError as e:
        return None, f"the authors' `efficientvit` package failed to import ({e})"
    return create(name, pretrained=False), "efficientvit (authors)"


def verify_model(name: str, state_dict: Mapping[str, np.ndarray], variables: Mapping[str, Any],
                 size: int = 224, seed: int = 0) -> tuple[float | None, str]:
    """Tier (b): rel-L2 between the PyTorch and Flax outputs on a random `[1, size, size, 3]`
    image, and a note saying which reference ran; `(None, reason)` if none is available."""
    torch = require_torch()
    import jax
    import jax.numpy as jnp

    from evit_jax.convert.keymap import unwrap_state_dict
    from evit_jax.zoo import create_model

    module, source = _torch_model(name)
    if module is None:
        return None, source
    sd = {k: torch.from_numpy(np.array(v)) for k, v in unwrap_state_dict(state_dict).items()}
    module.load_state_dict(sd, strict=True)
    module.eval()
    x = np.random.default_rng(seed).standard_normal((1, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    apply = jax.jit(create_model(name).apply)  # compiled: op-by-op dispatch is far slower
    out = np.asarray(apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
    if out.ndim == 4:  # segmentation maps: NHWC -> NCHW
        out = out.transpose(0, 3, 1, 2)
    err = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))
    return err, f"{source}, random 1x3x{size}x{size} input"
