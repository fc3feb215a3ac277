"""PyTorch timing worker: the authors' reference EfficientViT, eager, in inference mode.

Run by `evit_jax.bench.compare` with the reference's own Python (`DEST/venv/bin/python
ref_worker.py N`, `PYTHONPATH=DEST/stubs:DEST/src`, DEST from `setup.sh`). It imports
neither JAX nor evit_jax: only `protocol.py`, found next to this file. Pins itself to N
CPUs and uses N intra-op threads, like the JAX worker.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol import pin, serve  # noqa: E402


def build(name: str, part: str):
    import evstub_boot  # noqa: F401  (stand-ins for torchvision etc.; see setup.sh)
    from efficientvit.cls_model_zoo import create_efficientvit_cls_model
    from efficientvit.sam_model_zoo import create_efficientvit_sam_model
    from efficientvit.seg_model_zoo import create_efficientvit_seg_model

    if name.startswith("efficientvit-sam"):
        if part != "encoder":
            raise ValueError(f"the reference worker times SAM's image encoder only, not {part!r}")
        return create_efficientvit_sam_model(name, pretrained=False).image_encoder
    if name.startswith("efficientvit-seg"):
        return create_efficientvit_seg_model(name, pretrained=False)
    return create_efficientvit_cls_model(name, pretrained=False)


def main() -> None:
    threads = int(sys.argv[1])
    pin(threads)
    import torch

    torch.set_num_threads(threads)

    def setup(req: dict):
        if req.get("dtype", "float32") != "float32":
            raise ValueError("the reference worker runs float32 only")
        model = build(req["model"], req.get("part") or "model").eval()
        x = torch.randn(req["batch"], 3, req["height"], req["width"])

        def run() -> None:
            with torch.inference_mode():
                model(x)

        return run

    serve(setup)


if __name__ == "__main__":
    main()
