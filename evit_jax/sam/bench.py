"""Time EfficientViT-SAM's predictor and mask generator (jitted, after compilation).

  python -m evit_jax.sam.bench --model efficientvit-sam-l0 [--amg] [--repeat 5]

Weights are a random initialisation (speed does not depend on them, except the mask
generator's host-side work, which grows with the number of masks kept).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np


def _median(fn, repeat: int) -> tuple[float, float]:
    """(first call, median of `repeat` further calls) in seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def main(argv=None) -> None:
    import evit_jax
    from evit_jax.sam import SamAutomaticMaskGenerator, SamPredictor
    from evit_jax.zoo import init_variables

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientvit-sam-l0")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--amg", action="store_true", help="also time a 32x32-point generator run")
    args = ap.parse_args(argv)

    model = evit_jax.create_model(args.model)
    variables = init_variables(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.height, args.width, 3), np.uint8)
    p = SamPredictor(model, variables)
    print(f"{args.model}, {args.height}x{args.width} image, {jax.devices()[0].device_kind}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    def set_image():
        p.set_image(image)
        p.features.block_until_ready()

    first, med = _median(set_image, args.repeat)
    print(f"set_image: {med * 1e3:.0f} ms (first call, with compilation: {first:.1f} s)")
    click = (np.array([[args.width / 2, args.height / 2]]), np.array([1]))
    first, med = _median(lambda: p.predict(*click), args.repeat)
    print(f"predict, 1 click, 3 masks: {med * 1e3:.0f} ms (first: {first:.1f} s)")
    box = np.array([args.width * 0.2, args.height * 0.2, args.width * 0.7, args.height * 0.8])
    first, med = _median(lambda: p.predict(box=box, multimask_output=False), args.repeat)
    print(f"predict, 1 box, 1 mask: {med * 1e3:.0f} ms (first: {first:.1f} s)")
    boxes = np.tile(box, (64, 1)) * rng.uniform(0.8, 1.0, (64, 1))
    first, med = _median(lambda: p.predict_batch(boxes=boxes, multimask_output=False),
                         max(1, args.repeat // 2))
    print(f"predict_batch, 64 boxes: {med * 1e3:.0f} ms = {med / 64 * 1e3:.1f} ms per box "
          f"(first: {first:.1f} s)")
    if args.amg:
        gen = SamAutomaticMaskGenerator(model, variables, points_per_side=32)
        first, med = _median(lambda: gen.generate(image), 1)
        print(f"automatic mask generator, 32x32 points: {med:.1f} s (first: {first:.1f} s)")


if __name__ == "__main__":
    main()
