"""Prompt checking and packing (host side) for the SAM predictor.

Bad prompts raise `evit_jax.errors.UserError` (a `ValueError`) with a one-line message.

A prompt (clicks, a box, or both) becomes a row of tokens: the clicks, segment-anything's
padding point when there is no box, then the two box corners. Rows are padded with `PAD`
tokens to a bucketed length, and batches to a bucketed size, so a new number of clicks or
boxes reuses a compiled decoder instead of compiling a new one.
"""

from __future__ import annotations

import numpy as np

from evit_jax.errors import UserError
from evit_jax.models.sam.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NOT_A_POINT, PAD


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    n = max(n, minimum, 1)
    return 1 << (n - 1).bit_length()


def _finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise UserError(f"{name} contains NaN or infinite values")


def check_points(coords, labels, size: tuple[int, int], batched: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Validate clicks in original-image pixels: coords `[(B,) N, 2]` XY inside the image
    (0 <= x <= W, 0 <= y <= H), labels `[(B,) N]` in {1 foreground, 0 background,
    -1 not-a-point}. Returns float64 coords and int32 labels."""
    lead = "[B, N, 2]" if batched else "[N, 2]"
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != (3 if batched else 2) or c.shape[-1] != 2:
        raise UserError(f"point_coords must have shape {lead} (XY pixels), got {c.shape}")
    if labels is None:
        raise UserError("point_labels must be given with point_coords (1 = foreground, "
                         "0 = background), e.g. np.ones(len(point_coords))")
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iubf":
        raise UserError(f"point_labels must be numbers (1, 0 or -1), got dtype {lab.dtype}")
    if lab.shape != c.shape[:-1]:
        raise UserError(f"point_labels shape {lab.shape} does not match point_coords "
                         f"{c.shape}: one label per point")
    if lab.size and not np.isin(lab, (-1, 0, 1)).all():
        raise UserError(f"point_labels must be 1 (foreground), 0 (background) or -1 "
                         f"(ignored point), got {np.unique(lab)}")
    _finite("point_coords", c)
    h, w = size
    if c.size and ((c[..., 0] < 0).any() or (c[..., 0] > w).any() or (c[..., 1] < 0).any()
                   or (c[..., 1] > h).any()):
        raise UserError(f"point_coords lie outside the {w}x{h} (WxH) image; points are XY "
                         "pixels of the original image (clip with np.clip)")
    return c, lab.astype(np.int32)


def check_boxes(box, size: tuple[int, int], batched: bool = False) -> np.ndarray:
    """Validate XYXY boxes `[(B,) 4]` inside the image with x0 <= x1, y0 <= y1."""
    b = np.asarray(box, dtype=np.float64)
    if not batched and b.shape == (1, 4):
        b = b[0]
    if b.ndim != (2 if batched else 1) or b.shape[-1] != 4:
        want = "[B, 4]" if batched else "[4]"
        raise UserError(f"box must have shape {want} (XYXY pixels), got {b.shape}")
    _finite("box", b)
    h, w = size
    rows = b.reshape(-1, 4)

    def first(bad: np.ndarray) -> str:  # name one offending box, not all B of them
        i = int(np.flatnonzero(bad)[0])
        return (f"box {i} of {len(rows)} ({rows[i].tolist()})" if batched
                else f"box {rows[i].tolist()}")

    bad = (rows[:, 2] < rows[:, 0]) | (rows[:, 3] < rows[:, 1])
    if bad.any():
        raise UserError(f"boxes must be XYXY with x0 <= x1 and y0 <= y1; {first(bad)} is not")
    bad = ((rows[:, 0::2] < 0) | (rows[:, 0::2] > w) | (rows[:, 1::2] < 0)
           | (rows[:, 1::2] > h)).any(1)
    if bad.any():
        raise UserError(f"{first(bad)} lies (partly) outside the {w}x{h} (WxH) image; "
                         f"clip it: np.clip(box, 0, [{w}, {h}, {w}, {h}])")
    return b


def check_masks(mask_input, n: int, low_res: int, batched: bool = False) -> np.ndarray:
    """Validate low-res mask logits `[(B,) 1, 256, 256]` (or without the 1) -> float32
    `[B, 256, 256]`."""
    m = np.asarray(mask_input, dtype=np.float32)
    if m.ndim == (4 if batched else 3) and m.shape[-3] == 1:
        m = m[..., 0, :, :]
    if not batched:
        m = m[None]
    if m.shape != (n, low_res, low_res):
        want = f"[B, 1, {low_res}, {low_res}]" if batched else f"[1, {low_res}, {low_res}]"
        raise UserError(f"mask_input must have shape {want} (the low_res logits of a "
                         f"previous prediction), got {np.shape(mask_input)}")
    _finite("mask_input", m)
    return m


def prompt_tokens(coords: np.ndarray | None, labels: np.ndarray | None,
                  boxes: np.ndarray | None, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Token coords `[B, T, 2]` and labels `[B, T]` of B prompts (coords already in the
    prompt frame): clicks, then the padding point if there is no box, then box corners."""
    cs, ls = [], []
    if coords is not None:
        cs.append(coords)
        ls.append(labels)
        if boxes is None:  # segment-anything appends a not-a-point when no box is given
            cs.append(np.zeros((batch, 1, 2)))
            ls.append(np.full((batch, 1), NOT_A_POINT))
    if boxes is not None:
        cs.append(boxes.reshape(batch, 2, 2))
        ls.append(np.broadcast_to([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], (batch, 2)))
    if not cs:
        return np.zeros((batch, 0, 2), np.float32), np.zeros((batch, 0), np.int32)
    return (np.concatenate(cs, 1).astype(np.float32),
            np.concatenate(ls, 1).astype(np.int32))


def pad_tokens(coords: np.ndarray, labels: np.ndarray, tokens: int, rows: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pad `[B, T, 2]` / `[B, T]` to `[rows, tokens, ...]` with PAD tokens."""
    b, t = labels.shape
    c = np.zeros((rows, tokens, 2), np.float32)
    lab = np.full((rows, tokens), PAD, np.int32)
    c[:b, :t] = coords
    lab[:b, :t] = labels
    return c, lab


def append_padding_point(coords, labels):
    """segment-anything's padding point, decided per row inside a graph (the ONNX decoder):
    a row with clicks (labels 0 / 1) but no box corner (2 / 3) and no not-a-point (-1) of
    its own gets the point (0, 0) with label -1 appended, as `SamPredictor` appends it; every
    other row gets a `PAD` token, which changes nothing (masked out of attention). So clicks
    alone, clicks padded as segment-anything's ONNX example pads them, a box, a box with
    clicks, and a mask prompt alone decode as `SamPredictor.predict` decodes them.

    Args:
      coords: `[B, P, 2]` float tokens (prompt frame).
      labels: `[B, P]` integer labels (`PAD` for padding).
    Returns:
      coords `[B, P + 1, 2]` and labels `[B, P + 1]`, jnp arrays of the input dtypes.
    """
    import jax
    import jax.numpy as jnp

    has_click = jnp.any((labels == 0) | (labels == 1), axis=-1)
    has_box = jnp.any((labels == BOX_TOP_LEFT) | (labels == BOX_BOTTOM_RIGHT), axis=-1)
    has_own = jnp.any(labels == NOT_A_POINT, axis=-1)
    extra = jnp.where(has_click & ~has_box & ~has_own, NOT_A_POINT, PAD).astype(labels.dtype)
    # lax.concatenate, not jnp's: jax2onnx's own jnp.concatenate gives a symbolic P + 1 a
    # static length (see evit_jax/models/sam/mask_decoder.py).
    coords = jax.lax.concatenate([coords, jnp.zeros_like(coords[:, :1])], 1)
    return coords, jax.lax.concatenate([labels, extra[:, None]], 1)
