"""Object detection with EfficientViT-Det: decoding, NMS, the predictor and YOLOX's loss.

  model = evit_jax.create_model("efficientvit-det-b1")
  outputs = model.apply(variables, images)         # raw per-level head outputs
  boxes, scores = evit_jax.det.decode(outputs)     # xyxy [N, A, 4], [N, A, C]
  dets = evit_jax.det.batched_nms(boxes, scores, score_thr=0.3, nms_thr=0.65, max_det=100)

  predictor = evit_jax.det.DetPredictor(model, variables, input_size=416)
  result = predictor(image)                        # uint8 [H, W, 3] RGB, any size
  result["boxes"], result["scores"], result["labels"]  # numpy, original pixels
"""

from evit_jax.det.boxes import Detections, batched_nms, decode, grid_points
from evit_jax.det.loss import Assignment, LossTerms, simota_assign, yolox_loss
from evit_jax.det.predictor import DetPredictor
from evit_jax.det.transforms import letterbox, normalize, preprocess

__all__ = ["Assignment", "DetPredictor", "Detections", "LossTerms", "batched_nms", "decode",
           "grid_points", "letterbox", "normalize", "preprocess", "simota_assign",
           "yolox_loss"]
