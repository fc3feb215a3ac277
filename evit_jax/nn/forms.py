"""Which form of an op to trace: XLA's fastest, or the one exporters map onto fused kernels.

The two forms compute the same function (to float32 rounding). XLA:CPU runs 1x1
convolutions fastest as matmuls on NHWC and linear attention as einsums; ONNX Runtime
(and TFLite) fuse a `Conv` node with its bias, residual add and activation in their
blocked layouts, run batched `MatMul`s well and `Einsum`s slowly, and fuse one
`HardSwish` node into the preceding Conv.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_EXPORTING = contextvars.ContextVar("evit_export_forms", default=False)


@contextlib.contextmanager
def export_forms() -> Iterator[None]:
    """Trace the exporters' forms: every convolution, 1x1 ones included, as one
    `lax.conv_general_dilated` (`nn.conv.conv2d`), linear attention channel-major as batched
    matmuls (`nn.attention.relu_linear_attention`), hard-swish as `jax.nn.hard_swish`
    (which jax2onnx emits as one node). Combine with `depthwise_impl("lax")` for the
    depthwise convolutions.
    """
    token = _EXPORTING.set(True)
    try:
        yield
    finally:
        _EXPORTING.reset(token)


def exporting() -> bool:
    """Whether `export_forms` is active."""
    return _EXPORTING.get()
