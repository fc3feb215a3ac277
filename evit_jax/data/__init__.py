"""Embedded datasets: `evit_shapes`, rendered locally (`shapes`, the renderer; `shapes_tfds`,
its tfds builder, which imports tensorflow-datasets only when used)."""
