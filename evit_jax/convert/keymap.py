"""PyTorch state dict (official or timm key names) -> Flax variables, strictly.

The Flax modules carry the reference's names, so a key maps to a variable path by rule:
numeric components join their parent (`stages.2.op_list.1` -> `stages_2/op_list_1`), and the
leaf names translate as

  conv / linear `weight` -> `kernel` (OIHW -> HWIO, or (O, I) -> (I, O))
  norm `weight` -> `scale`; `bias` -> `bias`; embeddings `weight` -> `embedding`
  `running_mean` / `running_var` -> `batch_stats/.../mean` / `var`;
  `num_batches_tracked` is dropped.

timm's names are first renamed to the official ones, and a detector's keys in Megvii's YOLOX
layout to ours (`yolox_to_ours`). Every target variable must be filled
and every source key used with the right shape; otherwise one error lists all problems.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from evit_jax.cli import UserError, write_report
from evit_jax.zoo import MODELS, abstract_variables, create_model, model_info

Path = tuple[str, ...]


class CheckpointMismatchError(UserError):
    """A state dict that does not fit the model (or, with `reason`, why none fits).

    `str(e)` is one readable line: the counts of missing, unexpected and mis-shaped keys, the
    first `SHOWN` of each kind, and where the full list is (`report_path`, a text file written
    when the line cannot show everything; `report()` gives the same text). The lists
    themselves are `e.missing` (variable paths), `e.unexpected` (checkpoint keys) and
    `e.mismatched` ("key: checkpoint SHAPE, model SHAPE (at PATH SHAPE)").
    """

    SHOWN = 3  # keys of each kind named in the one-line message

    def __init__(self, model: str, missing: list[str], unexpected: list[str],
                 mismatched: list[str], reason: str = ""):
        self.model, self.missing, self.unexpected, self.mismatched, self.reason = (
            model, list(missing), list(unexpected), list(mismatched), reason)
        kinds = [(what, items) for what, items in (
            (("missing key", "missing keys"), self.missing),
            (("unexpected key", "unexpected keys"), self.unexpected),
            (("shape mismatch", "shape mismatches"),  # the line leaves out the Flax side
             [m.split(" (at ")[0] for m in self.mismatched])) if items]
        line = f"the checkpoint does not match model {model!r}:" + (f" {reason}" if reason
                                                                      else "")
        line += ", ".join(
            f" {len(items)} {what[len(items) != 1]} ({'; '.join(items[:self.SHOWN])}"
            + (f"; ... {len(items) - self.SHOWN} more)" if len(items) > self.SHOWN else ")")
            for what, items in kinds)
        if len(kinds) > 1:  # more than a key or two off: most likely another model's file
            line += (". Is this the checkpoint of another model? (evit_jax.list_models() "
                     "lists names; timm files need the timm name, e.g. 'efficientvit_b1')")
        self.report_path = (write_report(f"key-mismatch-{model}.txt", self.report())
                            if any(len(items) > self.SHOWN for _, items in kinds) else None)
        if self.report_path is not None:
            line += f". The full list: {self.report_path}"
        super().__init__(line)

    def report(self) -> str:
        """Every missing, unexpected and mis-shaped key, one per line (docs/convert.md)."""
        lines = [f"the checkpoint does not match model {self.model!r}:"
                 + (f" {self.reason}" if self.reason else "")]
        for title, items in (("missing keys (model variables the checkpoint lacks)",
                              self.missing),
                             ("unexpected keys (checkpoint keys the model has no place for)",
                              self.unexpected),
                             ("shape mismatches", self.mismatched)):
            if items:
                lines.append(f"{len(items)} {title}:")
                lines.extend(f"  {k}" for k in items)
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- timm names
_TIMM_HEAD = [(r"^head\.in_conv\.", "head.op_list.0."),
              (r"^head\.classifier\.0\.", "head.op_list.2.linear."),
              (r"^head\.classifier\.1\.", "head.op_list.2.norm."),
              (r"^head\.classifier\.4\.", "head.op_list.3.linear.")]


def timm_to_official(key: str, family: str) -> str:
    """Rename one key of timm's `efficientvit_mit` to the authors' naming."""
    for pat, rep in _TIMM_HEAD:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    stem = "backbone.input_stem" if family == "b" else "backbone.stages.0"
    if key.startswith("stem.in_conv."):
        return f"{stem}.op_list.0." + key[len("stem.in_conv."):]
    m = re.match(r"^stem\.res(\d+)\.(.*)$", key)
    if m:
        return f"{stem}.op_list.{int(m.group(1)) + 1}.{m.group(2)}"
    m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key)
    if m:
        stage = int(m.group(1)) + (0 if family == "b" else 1)
        return f"backbone.stages.{stage}.op_list.{m.group(2)}.{m.group(3)}"
    return key  # unknown: reported as unexpected


# ------------------------------------------------------------------------ YOLOX (Megvii) names
def yolox_to_ours(key: str) -> str:
    """Rename one key of a YOLOX detector in Megvii's layout to our EfficientViT-Det's:
    `backbone.backbone.*` (the feature extractor; here an EfficientViT backbone, in the
    authors' names) -> `backbone.*`, the PAFPN's other `backbone.*` keys -> `neck.*`,
    `head.*` stays; YOLOX's BatchNorms `bn` are our `norm`."""
    if key.startswith("backbone.backbone."):
        return key[len("backbone."):]
    if key.startswith("backbone."):
        key = "neck." + key[len("backbone."):]
    elif not key.startswith("head."):
        return key  # unknown: reported as unexpected
    return re.sub(r"\.bn\.", ".norm.", key)


# ------------------------------------------------------------------------------ key -> path
def module_path(key: str) -> tuple[Path, str]:
    """`a.b.0.1.c.weight` -> (("a", "b_0_1", "c"), "weight")."""
    parts = key.split(".")
    out: list[str] = []
    for p in parts[:-1]:
        if p.isdigit() and out:
            out[-1] = f"{out[-1]}_{p}"
        else:
            out.append(p)
    return tuple(out), parts[-1]


def _torch_to_flax_kernel(w: np.ndarray) -> np.ndarray:
    if w.ndim == 4:
        return w.transpose(2, 3, 1, 0)   # (O, I/g, kh, kw) -> (kh, kw, I/g, O)
    if w.ndim == 2:
        return w.T                        # Linear (O, I) -> Dense (I, O)
    return w


def _torch_layout(shape: tuple[int, ...], fn: Callable[[np.ndarray], np.ndarray]
                  ) -> tuple[int, ...]:
    """A Flax variable's shape in the checkpoint's layout (the inverse of `fn`'s transpose),
    so a mismatch compares like with like: (3, 3, 3, 16) HWIO -> (16, 3, 3, 3) OIHW."""
    if fn is _torch_to_flax_kernel and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if fn is _torch_to_flax_kernel and len(shape) == 2:
        return shape[::-1]
    return tuple(shape)


def _target_of(key: str, target: Mapping[tuple[str, ...], Any]
               ) -> tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]] | None:
    """The flattened variable path a torch key fills, and the array transform; None if none."""
    mod, leaf = module_path(key)
    if leaf == "running_mean":
        return ("batch_stats", *mod, "mean"), np.asarray
    if leaf == "running_var":
        return ("batch_stats", *mod, "var"), np.asarray
    if leaf == "bias":
        return ("params", *mod, "bias"), np.asarray
    if leaf == "weight":
        for name, fn in (("kernel", _torch_to_flax_kernel), ("scale", np.asarray),
                         ("embedding", np.asarray)):
            if ("params", *mod, name) in target:
                return ("params", *mod, name), fn
        return ("params", *mod, "kernel"), _torch_to_flax_kernel
    if ("params", *mod, leaf) in target:  # plain parameters (e.g. SAM's token embeddings)
        return ("params", *mod, leaf), np.asarray
    return None


def to_numpy(value: Any) -> np.ndarray:
    """An array-like (numpy, torch tensor, jax array) as a float32 / integer numpy array."""
    if hasattr(value, "detach"):  # a torch tensor, when torch is at hand
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    a = np.asarray(value)
    if a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float32)
    return a


def unwrap_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Take `{"state_dict": ...}` / `{"model": ...}` wrappers and DDP `module.` prefixes off."""
    for wrapper in ("state_dict", "model"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
            break
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def is_timm_style(keys) -> bool:
    """Whether state-dict keys use timm's names (`stem.*`, `stages.*`; the authors' start
    with `backbone.`)."""
    return any(k.startswith(("stem.", "stages.")) for k in keys)


def _check_key_style(name: str, timm_keys: bool) -> None:
    """Refuse keys in the other naming than the entry's `key_style`: timm's entries differ
    from the authors' in more than names (LiteMLA eps 1e-5), so a wrong pick would convert
    cleanly and compute something else."""
    spec = model_info(name)
    if timm_keys == (spec.key_style == "timm"):
        return
    have, want = ("timm's", "the authors'") if timm_keys else ("the authors'", "timm's")
    if timm_keys:  # timm has the classifiers only
        fit = [f"efficientvit_{spec.backbone}"] if spec.task == "cls" else []
    else:
        fit = [n for n, s in MODELS.items() if s.key_style == "official" and s.task == spec.task
               and s.backbone == spec.backbone]
    fit = [n for n in fit if n in MODELS]
    fix = f"convert it as {fit[0]!r}" if fit else "no zoo entry takes them"
    raise CheckpointMismatchError(
        name, [], [], [], reason=f"it has {have} key names and {name!r} takes {want} "
        f"(the two differ in more than names: timm's LiteMLA eps is 1e-5); {fix}")


def convert_state_dict(name: str, state_dict: Mapping[str, Any], model: Any = None,
                       parts: Sequence[str] | None = None) -> dict[str, Any]:
    """Convert a PyTorch state dict of zoo model `name` to Flax variables.

    Args:
      name: zoo name (`evit_jax.list_models()`).
      state_dict: key -> array (numpy arrays or torch tensors), in the authors' naming
        (optionally wrapped as `{"state_dict": ...}`), for `efficientvit_*` names timm's,
        for detectors Megvii's YOLOX layout.
      model: the module to fill, if not `create_model(name)`: the entry changed with
        `zoo.model_from_spec` (another head width or class count), same key naming.
      parts: fill only these top-level submodules (e.g. `("neck", "head")` of a detector,
        whose backbone comes from elsewhere); keys of the others are unexpected.
    Returns:
      `{"params": ..., "batch_stats": ...}` of float32 numpy arrays, ready for
      `create_model(name).apply(variables, x)`.
    Raises:
      CheckpointMismatchError: listing every missing, unexpected and mis-shaped key.
    """
    spec = model_info(name)
    sd = unwrap_state_dict(state_dict)
    if sd:  # an empty one is reported as missing every key
        _check_key_style(spec.name, is_timm_style(sd))
    family, timm = spec.family, spec.key_style == "timm"
    abstract = abstract_variables(create_model(name) if model is None else model)
    target = {k: v for k, v in flatten_dict(abstract).items()
              if parts is None or k[1] in parts}
    out: dict[tuple[str, ...], np.ndarray] = {}
    unexpected, mismatched, mismatched_paths = [], [], set()
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        official = (timm_to_official(key, family) if timm else
                    yolox_to_ours(key) if spec.key_style == "yolox" else key)
        hit = _target_of(official, target)
        if hit is None or hit[0] not in target:
            unexpected.append(key)
            continue
        path, fn = hit
        arr = fn(to_numpy(value))
        want = tuple(target[path].shape)
        if arr.shape != want:
            mismatched.append(f"{key}: checkpoint {tuple(to_numpy(value).shape)}, model "
                              f"{_torch_layout(want, fn)} (at {'/'.join(path)} {want})")
            mismatched_paths.add(path)
            continue
        out[path] = arr.astype(target[path].dtype, copy=False)
    missing = ["/".join(p) for p in target if p not in out and p not in mismatched_paths]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(name, missing, unexpected, mismatched)
    return unflatten_dict(out)
