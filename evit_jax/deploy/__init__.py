"""Deployment exports of zoo models: ONNX (`evit_jax.deploy.onnx`), run in ONNX Runtime, and
TFLite (`evit_jax.deploy.tflite`), run in LiteRT.

Every export folds BatchNorm (`evit_jax.fuse_bn`), traces the portable depthwise
convolution (no process-local custom calls) and is checked against the JAX model in its
runtime by the tests. Contracts (names, layouts) are in docs/deploy.md.
"""

# Every jax2onnx release that runs with our jax (0.16 on) declares orbax-checkpoint<0.11.37,
# which the trainer's orbax pin ([train]) excludes, so pip cannot install it as part of the
# [onnx] extra beside [train] (what `make setup` installs). It runs without that orbax (only
# its own examples use it): installed with --no-deps, as the Makefile does
# (tests/test_export.py checks that the three agree).
JAX2ONNX = "jax2onnx==0.17.1"
ONNX_INSTALL = f"pip install 'evit-jax[onnx]' && pip install --no-deps {JAX2ONNX}"
