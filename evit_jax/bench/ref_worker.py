"""PyTorch timing worker: the authors' reference EfficientViT, eager, in inference mode,
or (`ref_worker.py N ort`) their model exported with `torch.onnx.export` and run in ONNX
Runtime, the way a deployer runs it on CPU.

Run by `evit_jax.bench.compare` with the reference's own Python (`DEST/venv/bin/python
ref_worker.py N`, `PYTHONPATH=DEST/stubs:DEST/src`, DEST from `setup.sh`). It imports
neither JAX nor evit_jax: only `protocol.py`, found next to this file. Pins itself to N
CPUs and uses N intra-op threads, like the JAX worker. The weights are PyTorch's random
initialisation under `torch.manual_seed(0)`; in ONNX Runtime mode a setup request with
`state_dict` saves them there, so that the evit-jax side runs the same weights
(denormal-heavy random weights would otherwise make one side slow for a reason no
deployment has).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol import pin, serve  # noqa: E402
from sam_inputs import PARTS  # noqa: E402


def build(name: str, part: str):
    """(the module to time, the state dict a checkpoint of the model holds), eval mode."""
    import evstub_boot  # noqa: F401  (stand-ins for torchvision etc.; see setup.sh)
    from efficientvit.cls_model_zoo import create_efficientvit_cls_model
    from efficientvit.sam_model_zoo import create_efficientvit_sam_model
    from efficientvit.seg_model_zoo import create_efficientvit_seg_model

    if name.startswith("efficientvit-sam"):
        if part not in ("encoder", *PARTS):
            raise ValueError(f"SAM parts here: encoder, {', '.join(PARTS)}; not {part!r}")
        full = create_efficientvit_sam_model(name, pretrained=False).eval()
        return (full.image_encoder if part == "encoder" else full), full.state_dict()
    if name.startswith("efficientvit-seg"):
        model = create_efficientvit_seg_model(name, pretrained=False).eval()
    else:
        model = create_efficientvit_cls_model(name, pretrained=False).eval()
    return model, model.state_dict()


def ort_runner(model, x, threads: int, keep: str | None = None):
    """`torch.onnx.export` of `model` at `x`'s shape (opset 17, the TorchScript exporter
    the authors' `assets/onnx_export.py` uses), run in an ONNX Runtime CPU session
    (ORT_ENABLE_ALL, `threads` intra-op threads)."""
    import tempfile

    import onnxruntime as ort
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(model, x, path, opset_version=17, input_names=["input"],
                          dynamo=False)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        if keep:  # the driver's --ort-profile reads it; never a half-copied file
            import shutil
            shutil.copyfile(path, keep + ".part")
            os.replace(keep + ".part", keep)
    feed = {"input": x.numpy()}
    return lambda: sess.run(None, feed)


def sam_pipeline_runner(model, req: dict):
    """The authors' `EfficientViTSamPredictor` / `...AutomaticMaskGenerator` on the shared
    picture (`sam_inputs`), as their applications call them."""
    import sam_inputs
    import torch
    from efficientvit.models.efficientvit.sam import (
        EfficientViTSamAutomaticMaskGenerator,
        EfficientViTSamPredictor,
    )

    image = sam_inputs.picture(req["height"], req["width"])
    part, n = req["part"], req["batch"]
    if part == "amg":
        gen = EfficientViTSamAutomaticMaskGenerator(model, points_per_side=n)
        return lambda: gen.generate(image)
    pred = EfficientViTSamPredictor(model)
    if part == "set_image":
        return lambda: pred.set_image(image)
    pred.set_image(image)
    prompts = pred.apply_boxes_torch(torch.from_numpy(sam_inputs.boxes(req["height"],
                                                                       req["width"], n)))

    def decode() -> None:
        pred.predict_torch(boxes=prompts, multimask_output=False)

    return decode


def train_step(model, x):
    """Forward in train mode, cross-entropy, backward, AdamW (lr 1e-3, weight decay 0.05):
    one eager training step, as evit-jax's side does it jitted."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    y = torch.randint(0, 1000, (x.shape[0],))

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return run


def _no_grad(run) -> None:
    import torch
    with torch.inference_mode():
        run()


def main() -> None:
    threads = int(sys.argv[1])
    runtime = sys.argv[2] if len(sys.argv) > 2 else "eager"
    pin(threads)
    import torch

    torch.set_num_threads(threads)

    def setup(req: dict):
        if req.get("dtype", "float32") != "float32":
            raise ValueError("the reference worker runs float32 only")
        torch.manual_seed(0)
        part = req.get("part") or "model"
        model, state = build(req["model"], part)
        if (runtime == "ort" or part in PARTS) and req.get("state_dict"):
            torch.save(state, req["state_dict"])  # evit-jax's side runs the same weights
        if part in PARTS:
            if runtime != "eager":
                raise ValueError("the SAM pipeline cases run the authors' PyTorch code only")
            with torch.inference_mode():
                run = sam_pipeline_runner(model, req)
            return lambda: _no_grad(run)
        x = torch.randn(req["batch"], 3, req["height"], req["width"])
        if part == "train":
            if runtime != "eager":
                raise ValueError("the train step runs in eager PyTorch only")
            return train_step(model, x)
        if runtime == "ort":
            keep = req.get("onnx_dir") and os.path.join(req["onnx_dir"], req["label"] + ".onnx")
            return ort_runner(model, x, threads, keep)

        def run() -> None:
            with torch.inference_mode():
                model(x)

        return run

    serve(setup)


if __name__ == "__main__":
    main()
