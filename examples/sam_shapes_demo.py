"""Make EfficientViT-SAM weights that segment drawn shapes, to demonstrate the predictor,
the automatic mask generator and `evit-segment` without downloading a checkpoint.

The image encoder is random and never trained (every conv / linear weight drawn from
N(0, 1 / fan_in), so features neither vanish nor explode through its depth); only the prompt
encoder and mask decoder (4 M parameters) are trained, for some CPU minutes, on procedurally
drawn scenes of coloured shapes with exact masks: clicks and boxes as prompts, sigmoid BCE +
dice on the masks, MSE on the predicted IoU, and the best of the three multimask outputs for
single clicks (as segment-anything trains). This is a demonstration of the machinery, not a
substitute for the authors' checkpoints (convert those with `evit-convert`). Measured on a
busy 2-core CPU: 300 steps take ~45 min (mask loss 1.66 -> 0.80) and the masks are still
rough and speckled; more steps (`--steps`) give cleaner ones.

  python examples/sam_shapes_demo.py --dst demo_weights --steps 300
  evit-segment --model efficientvit-sam-l0 --weights demo_weights \
      --image assets/sam_shapes.png --auto --out auto.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image, ImageDraw

import evit_jax
from evit_jax.models.sam.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NOT_A_POINT, PAD
from evit_jax.sam.predictor import encode
from evit_jax.sam.transforms import preprocess, preprocess_shape
from evit_jax.zoo import init_variables

MODEL = "efficientvit-sam-l0"
H, W = 384, 512


def draw_scene(rng: np.random.Generator, h: int = H, w: int = W
               ) -> tuple[np.ndarray, list[np.ndarray]]:
    """A random scene: a two-colour gradient background and 3-6 shapes (discs, ellipses,
    rectangles, triangles) of distinct colours; returns the image and each shape's visible
    mask (later shapes occlude earlier ones)."""
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    c0, c1 = rng.integers(0, 256, (2, 3))
    t = (yy * rng.uniform(-1, 1) + xx * rng.uniform(-1, 1))[..., None]
    t = (t - t.min()) / (t.max() - t.min() + 1e-9)
    img = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    labels = Image.new("L", (w, h), 0)
    ldraw = ImageDraw.Draw(labels)
    n = int(rng.integers(3, 7))
    for k in range(1, n + 1):
        size = rng.uniform(0.12, 0.35) * min(h, w)
        cx, cy = rng.uniform(size * 0.6, w - size * 0.6), rng.uniform(size * 0.6, h - size * 0.6)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(4)
        if kind == 0:
            box = [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]
            shape = ("ellipse", box)
        elif kind == 1:
            a = rng.uniform(0.4, 1.0)
            shape = ("ellipse", [cx - size / 2, cy - a * size / 2, cx + size / 2,
                                 cy + a * size / 2])
        elif kind == 2:
            a = rng.uniform(0.4, 1.0)
            shape = ("rectangle", [cx - size / 2, cy - a * size / 2, cx + size / 2,
                                   cy + a * size / 2])
        else:
            ang = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2])
            shape = ("polygon", [(cx + size / 1.6 * np.cos(a), cy + size / 1.6 * np.sin(a))
                                 for a in ang])
        getattr(draw, shape[0])(shape[1], fill=colour)
        getattr(ldraw, shape[0])(shape[1], fill=k)
    lab = np.asarray(labels)
    masks = [lab == k for k in range(1, n + 1) if (lab == k).sum() > 200]
    return np.asarray(img), masks


def low_res_target(mask: np.ndarray, input_size: tuple[int, int], n: int = 256) -> np.ndarray:
    """A full-size mask as the decoder's `[256, 256]` low-res frame (zeros over the padding)."""
    ih, iw = (round(s * n / 1024) for s in input_size)
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((iw, ih),
                                                                            Image.BILINEAR))
    out = np.zeros((n, n), np.float32)
    out[:ih, :iw] = small / 255.0
    return out


def sample_prompt(rng, mask: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens `[4, 2]`, labels `[4]` in the 1024 frame: a jittered box, or 1-2 clicks inside
    the mask (plus segment-anything's padding point)."""
    ys, xs = np.nonzero(mask)
    coords, labels = np.zeros((4, 2), np.float32), np.full(4, PAD, np.int32)
    if rng.random() < 0.4:
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)
        box += rng.normal(0, 0.05 * (box[2:] - box[:2]).mean(), 4)
        coords[:2] = box.reshape(2, 2) * scale
        labels[:2] = (BOX_TOP_LEFT, BOX_BOTTOM_RIGHT)
    else:
        k = int(rng.integers(1, 3))
        pick = rng.integers(len(xs), size=k)
        coords[:k] = np.stack([xs[pick], ys[pick]], 1) * scale
        labels[:k] = 1
        labels[k] = NOT_A_POINT
    return coords, labels


def random_encoder(variables: dict, seed: int) -> dict:
    """Fan-in-scaled random weights for the image encoder (a stand-in for a trained one)."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    rng = np.random.default_rng(seed)
    flat = flatten_dict(variables["params"]["image_encoder"])
    for path, v in flat.items():
        if path[-1] == "kernel":
            fan_in = int(np.prod(v.shape[:-1]))
            flat[path] = (rng.standard_normal(v.shape) / np.sqrt(fan_in)).astype(np.float32)
    variables["params"]["image_encoder"] = unflatten_dict(flat)
    return variables


def losses(logits, iou_pred, target, single):
    """Per prompt: sigmoid BCE + dice on the chosen mask (token 0 for boxes / several clicks,
    the best of tokens 1-3 for one click); MSE of the predicted IoUs."""
    t = target[:, None]
    bce = optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(t, logits.shape))
    bce = bce.mean((-2, -1))
    p = jax.nn.sigmoid(logits)
    dice = 1 - (2 * (p * t).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + t.sum((-2, -1)) + 1)
    per_token = bce + dice                                            # [B, 4]
    multi = per_token[:, 1:].min(-1)
    mask_loss = jnp.where(single, per_token[:, 0], multi)
    hard = (logits > 0).astype(jnp.float32)
    inter, union = (hard * t).sum((-2, -1)), jnp.maximum(hard, t).sum((-2, -1))
    true_iou = jax.lax.stop_gradient(inter / jnp.maximum(union, 1.0))
    return mask_loss.mean(), ((iou_pred - true_iou) ** 2).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dst", required=True, help="variables directory to write")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scene-out", help="also draw a held-out scene to this PNG")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    model = evit_jax.create_model(MODEL)
    variables = random_encoder(init_variables(model, args.seed), args.seed)
    size = model.head_cfg.encoder_size
    input_size = preprocess_shape(H, W, 1024)
    scale = np.array([input_size[1] / W, input_size[0] / H])

    t0 = time.time()
    scenes = [draw_scene(rng) for _ in range(args.scenes)]
    feats = np.concatenate([np.asarray(encode(model, variables, preprocess(img, size)))
                            for img, _ in scenes])
    targets = [[low_res_target(m, input_size) for m in masks] for _, masks in scenes]
    print(f"encoded {len(scenes)} scenes in {time.time() - t0:.0f} s", flush=True)

    decoder = model.prompt_decoder()
    params = model.decoder_variables(variables)["params"]
    opt = optax.adamw(optax.cosine_decay_schedule(args.lr, args.steps), weight_decay=1e-4)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, feats, coords, labels, target, single):
        def loss_fn(p):
            low, iou = decoder.apply({"params": p}, feats, coords, labels)
            mask_loss, iou_loss = losses(low, iou, target, single)
            return mask_loss + iou_loss, (mask_loss, iou_loss)

        grads, aux = jax.grad(loss_fn, has_aux=True)(params)
        # The Fourier matrix is a fixed buffer in the reference: never update it.
        grads["prompt_encoder"]["pe_layer"] = jax.tree.map(jnp.zeros_like,
                                                           grads["prompt_encoder"]["pe_layer"])
        updates, opt_state = opt.update(grads, opt_state, params)
        updates["prompt_encoder"]["pe_layer"] = grads["prompt_encoder"]["pe_layer"]
        return optax.apply_updates(params, updates), opt_state, aux

    t0 = time.time()
    for i in range(args.steps):
        idx = rng.integers(len(scenes), size=args.batch)
        batch = []
        for j in idx:
            k = int(rng.integers(len(targets[j])))
            c, lab = sample_prompt(rng, scenes[j][1][k], scale)
            single = lab[0] == BOX_TOP_LEFT or (lab[:2] == 1).all()
            batch.append((c, lab, targets[j][k], single))
        c, lab, tgt, single = (np.stack(x) for x in zip(*batch))
        params, opt_state, (ml, il) = step(params, opt_state, feats[idx], c, lab, tgt, single)
        if i % 25 == 0 or i == args.steps - 1:
            print(f"step {i:4d}  mask loss {float(ml):.3f}  iou loss {float(il):.4f}  "
                  f"{time.time() - t0:.0f} s", flush=True)
        if (i + 1) % 100 == 0 or i == args.steps - 1:  # a usable directory along the way
            variables["params"].update(jax.device_get(params))
            evit_jax.save_variables(variables, args.dst, model=MODEL, overwrite=True, metadata={
                "demo": "random image encoder; prompt encoder and mask decoder trained "
                        f"{i + 1} steps on drawn shapes (examples/sam_shapes_demo.py)"})
            print(f"wrote {args.dst} (step {i + 1})", flush=True)
    if args.scene_out:
        img, _ = draw_scene(np.random.default_rng(args.seed + 1000))
        Image.fromarray(img).save(args.scene_out)
        print(f"wrote {args.scene_out}")


if __name__ == "__main__":
    main()
