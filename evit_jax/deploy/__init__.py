"""Deployment exports of zoo models: ONNX (`evit_jax.deploy.onnx`), run in ONNX Runtime, and
TFLite (`evit_jax.deploy.tflite`), run in LiteRT.

Every export folds BatchNorm (`evit_jax.fuse_bn`), traces the portable depthwise
convolution (no process-local custom calls) and is checked against the JAX model in its
runtime by the tests. Contracts (names, layouts) are in docs/deploy.md.
"""
