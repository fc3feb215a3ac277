"""`DetPredictor`: uint8 images of any size in, boxes in original pixels out (numpy).

The images are letterboxed on the host (`transforms.preprocess`); the batch goes to the
device as uint8 and one jitted call normalises it, runs the detector, decodes and runs the
class-aware NMS (`boxes.batched_nms`, fixed `max_det`). Only the boxes' mapping back to each
image's pixels runs on the host. One compilation per batch size and input size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from evit_jax.det.boxes import Detections, batched_nms, decode
from evit_jax.det.transforms import check_image, normalize, preprocess, to_original
from evit_jax.det.transforms import input_size as checked_size
from evit_jax.errors import UserError

DEFAULT_SIZE = 640  # YOLOX's test size, for a module that is not named


@functools.partial(jax.jit, static_argnames=("model", "max_det", "pre_nms_topk",
                                             "class_agnostic"))
def detect(model: nn.Module, variables: Any, images: jax.Array, score_thr: float,
           nms_thr: float, max_det: int = 100, pre_nms_topk: int = 1000,
           class_agnostic: bool = False) -> Detections:
    """Letterboxed uint8 images `[N, h, w, 3]` -> `Detections` on the canvas, one call."""
    boxes, scores = decode(model.apply(variables, normalize(images)), model.strides)
    return batched_nms(boxes, scores, score_thr, nms_thr, max_det, pre_nms_topk,
                       class_agnostic)


class DetPredictor:
    """Detect objects in RGB uint8 images, as YOLOX's demo `Predictor` (numpy in and out).

    Args:
      model: an EfficientViT-Det module (`evit_jax.create_model("efficientvit-det-b1")`), or
        its zoo name.
      variables: its variables (`evit_jax.load_variables`).
      input_size: the letterbox canvas, S or (H, W), multiples of 32; default the zoo entry's
        resolution for a name, else 640.
      score_thr: keep detections scoring at least this (objectness x class probability).
      nms_thr: IoU above which a box suppresses lower-scored boxes of its class.
      max_det: detections per image at most.
      pre_nms_topk: candidates per image entering NMS.
      class_agnostic: suppress across classes too.
    """

    def __init__(self, model: nn.Module | str, variables: Any,
                 input_size: int | Sequence[int] | None = None, score_thr: float = 0.3,
                 nms_thr: float = 0.65, max_det: int = 100, pre_nms_topk: int = 1000,
                 class_agnostic: bool = False):
        if isinstance(model, str):
            from evit_jax.zoo import create_model, model_info

            spec = model_info(model)
            if spec.task != "det":
                raise UserError(f"DetPredictor needs a detector (efficientvit-det-*), got "
                                f"{model!r}, a {spec.task} model")
            input_size = input_size or spec.resolution
            model = create_model(spec.name)
        if not isinstance(model, nn.Module) or not hasattr(model, "strides"):
            raise UserError("DetPredictor needs an EfficientViT-Det module, e.g. "
                            "evit_jax.create_model('efficientvit-det-b1')")
        self.model = model
        self.variables = jax.device_put(variables)
        self.input_size = checked_size(input_size or DEFAULT_SIZE)
        self.score_thr, self.nms_thr = float(score_thr), float(nms_thr)
        self.max_det, self.pre_nms_topk = int(max_det), int(pre_nms_topk)
        self.class_agnostic = bool(class_agnostic)

    def __call__(self, images: np.ndarray | Sequence[np.ndarray]
                 ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        return self.predict(images)

    def predict(self, images: np.ndarray | Sequence[np.ndarray]
                ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """Detect in one image or a batch, in one device call.

        Args:
          images: a uint8 `[H, W, 3]` RGB image, a list of them (any sizes), or a `[N, H,
            W, 3]` batch.
        Returns:
          per image a dict: `boxes` float32 `[n, 4]` xyxy in the image's pixels (clipped to
          it), `scores` float32 `[n]`, `labels` int64 `[n]`, best first; one dict for one
          image, a list for a list or batch.
        """
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        if not batch:
            return []
        batch = [check_image(np.asarray(im)) for im in batch]
        canvas, scales = preprocess(batch, self.input_size)
        dets = jax.device_get(detect(self.model, self.variables, canvas, self.score_thr,
                                     self.nms_thr, self.max_det, self.pre_nms_topk,
                                     self.class_agnostic))
        out = []
        for i, im in enumerate(batch):
            n = int(dets.num[i])
            out.append({"boxes": to_original(dets.boxes[i, :n], scales[i], im.shape[:2]),
                        "scores": np.asarray(dets.scores[i, :n], np.float32),
                        "labels": np.asarray(dets.labels[i, :n], np.int64)})
        return out[0] if single else out
