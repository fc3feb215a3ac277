"""Super-resolution with EfficientViT: MATLAB-exact degradation, tiled inference, CLIs.

`imresize` is the bicubic of the benchmarks; `upscale` runs a zoo SR model on an image of any
size (stage by stage in exact tiles when it is large: `evit_jax.sr.tiled`). Metrics:
`evit_jax.metrics.psnr` / `ssim`.
"""

from evit_jax.sr.imresize import cubic, imresize, output_size, resize_matrix

__all__ = ["cubic", "imresize", "output_size", "resize_matrix"]
