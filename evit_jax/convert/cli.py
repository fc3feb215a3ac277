"""`evit-convert`: PyTorch checkpoint -> evit-jax variables directory.

  evit-convert --model efficientvit-b1-r224 --src efficientvit_b1_r224.pt --dst ckpt/b1
  evit-convert --model efficientvit_b1 --src model.safetensors --dst ckpt/b1-timm --verify
  evit-convert --model efficientvit-b1-r224 --dst ckpt/b1   (the published file, from the Hub)

Reads the file without torch and without running pickled code (`readers`), maps the keys
strictly (`keymap.convert_state_dict`), optionally checks the result against PyTorch
(`verify`), and writes DST atomically (`evit_jax.vardir.save_variables`): a failed run leaves no
DST. User errors exit with status 1 and one line, no traceback (`evit_jax.cli`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evit_jax.cli import UserError, run
from evit_jax.convert.keymap import convert_state_dict
from evit_jax.convert.readers import detect_format, file_sha256, load_state_dict
from evit_jax.convert.verify import VerificationError
from evit_jax.vardir import save_variables
from evit_jax.zoo import model_info

PROG = "evit-convert"


def convert_checkpoint(model: str, src: str | Path, dst: str | Path, *, key: str | None = None,
                       verify: bool = False, overwrite: bool = False,
                       log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Convert checkpoint file `src` of zoo model `model` into the variables directory `dst`.

    Args:
      model: zoo name (`evit_jax.list_models()`), official or timm.
      src: `.pt` / `.pth` / `.bin` (torch.save) or `.safetensors` file.
      dst: directory to create (must not exist or be empty, unless `overwrite`).
      key: where the weights sit inside a training checkpoint (e.g. "ema"); default: found.
      verify: compare with PyTorch first (needs torch); a failed check writes nothing.
      log: where progress lines go.
    Returns:
      A summary dict: model, src, dst, format, tensors, params, sha256, seconds, verify errors.
    Raises:
      UserError (unknown model, existing DST; CheckpointFormatError, CheckpointMismatchError
      and VerificationError derive from it), FileNotFoundError, OSError.
    """
    t0 = time.perf_counter()
    spec = model_info(model)
    src, dst = Path(src), Path(dst)
    if verify:  # fail before any work when torch is missing
        from evit_jax.convert.verify import require_torch

        require_torch()
    _check_dst(dst, overwrite)
    fmt = detect_format(src)
    state_dict = load_state_dict(src, key)
    variables = convert_state_dict(model, state_dict)
    summary: dict[str, Any] = dict(model=spec.name, src=str(src), dst=str(dst), format=fmt,
                                   tensors=len(state_dict))
    summary["params"] = sum(int(v.size) for v in _leaves(variables.get("params", {})))
    if verify:
        summary.update(_verify(spec.name, src, key, state_dict, variables, log))
    summary["sha256"] = file_sha256(src)
    meta = {"source_file": src.name, "source_sha256": summary["sha256"], "source_format": fmt,
            "key_style": spec.key_style, "converted_by": PROG}
    save_variables(variables, dst, model=spec.name, metadata=meta, overwrite=overwrite)
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _check_dst(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise UserError(f"destination {dst} exists and is a file, not a directory; choose a "
                        "new --dst")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise UserError(f"destination {dst} already exists and is not empty; choose a new "
                        "--dst or pass --overwrite")


def _leaves(tree: Any):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def _verify(name: str, src: Path, key: str | None, state_dict, variables,
            log: Callable[[str], Any]) -> dict[str, Any]:
    from evit_jax.convert.verify import MODEL_TOLERANCE, verify_file, verify_model

    file_err = verify_file(src, state_dict, key)
    log(f"verify (file):  every tensor vs torch's own reading: max relative error "
        f"{file_err:.1e}")
    if file_err != 0.0:
        raise VerificationError(f"the torch-free reader differs from torch.load on {src} "
                                f"(max relative error {file_err:.2e}); nothing was written")
    model_err, note = verify_model(name, state_dict, variables)
    if model_err is None:
        log(f"verify (model): skipped: {note}")
    else:
        log(f"verify (model): PyTorch vs Flax outputs ({note}): rel-L2 {model_err:.2e}")
        if model_err > MODEL_TOLERANCE:
            raise VerificationError(f"PyTorch and Flax outputs differ (rel-L2 {model_err:.2e} > "
                                    f"{MODEL_TOLERANCE:.0e}); nothing was written")
    return {"verify_file_error": file_err, "verify_model_error": model_err}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Convert an EfficientViT PyTorch checkpoint (the authors' .pt, "
        "timm's .safetensors/.bin) into an evit-jax variables directory. Needs no torch.")
    p.add_argument("--model", required=True,
                   help="zoo name, e.g. efficientvit-b1-r224 or efficientvit_b1 (timm)")
    p.add_argument("--src", default=None,
                   help="checkpoint file (.pt/.pth/.bin/.safetensors); default: the model's "
                        "published checkpoint from the Hugging Face Hub (evit_jax.hub)")
    p.add_argument("--revision", default=None,
                   help="without --src: branch, tag or commit of the Hub repository "
                        "(default main)")
    p.add_argument("--dst", required=True, help="output directory (created atomically)")
    p.add_argument("--key", default=None,
                   help="entry of a training checkpoint holding the weights, e.g. 'ema' "
                        "(default: 'state_dict'/'model' if present, else the whole file)")
    p.add_argument("--verify", action="store_true",
                   help="compare with PyTorch before writing (needs torch; the model-level "
                        "check also needs timm or the authors' efficientvit package)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    return p


def _main(args: argparse.Namespace) -> int:
    src = args.src
    if src is None:
        from evit_jax.hub import checkpoint_location, fetch

        repo, filename = checkpoint_location(args.model)
        _check_dst(Path(args.dst), args.overwrite)  # before a download
        src = fetch(args.model, args.revision)
        print(f"{filename} of huggingface.co/{repo}: {src}")
    elif args.revision:
        raise UserError("--revision picks a Hub revision: use it without --src")
    s = convert_checkpoint(args.model, src, args.dst, key=args.key, verify=args.verify,
                           overwrite=args.overwrite)
    print(f"{s['model']}: {s['tensors']} tensors from {s['src']} ({s['format']}, sha256 "
          f"{s['sha256'][:12]}) -> {s['params'] / 1e6:.3f} M parameters")
    print(f"wrote {s['dst']} in {s['seconds']:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (`evit_jax.cli`: 0 ok, 1 user error,
    2 bad command line, 130 interrupted; nothing is written unless it succeeds)."""
    return run(PROG, build_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
