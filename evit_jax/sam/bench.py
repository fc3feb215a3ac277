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


def _median(fn, repeat: int) -> tuple[float, float, float]:
    """(first call, median of `repeat` further calls, median process CPU time of those) in
    seconds. On a busy machine the CPU time (all threads) is the steadier of the two."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return first, statistics.median(times), statistics.median(cpu)


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

    def report(what, fn, repeat=args.repeat, per=1):
        first, med, cpu = _median(fn, repeat)
        each = f" = {med / per * 1e3:.1f} ms each" if per > 1 else ""
        print(f"{what}: {med * 1e3:.0f} ms{each} (CPU {cpu * 1e3:.0f} ms; first call, "
              f"compiling: {first:.1f} s)")

    report("set_image", set_image)
    click = (np.array([[args.width / 2, args.height / 2]]), np.array([1]))
    report("predict, 1 click, 3 masks", lambda: p.predict(*click))
    box = np.array([args.width * 0.2, args.height * 0.2, args.width * 0.7, args.height * 0.8])
    report("predict, 1 box, 1 mask", lambda: p.predict(box=box, multimask_output=False))
    boxes = np.tile(box, (64, 1)) * rng.uniform(0.8, 1.0, (64, 1))
    report("predict_batch, 64 boxes", lambda: p.predict_batch(boxes=boxes,
                                                              multimask_output=False),
           max(1, args.repeat // 2), per=64)
    if args.amg:
        gen = SamAutomaticMaskGenerator(model, variables, points_per_side=32)
        report("automatic mask generator, 32x32 points", lambda: gen.generate(image), 1)


if __name__ == "__main__":
    main()
