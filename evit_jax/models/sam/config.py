"""The settings of EfficientViT-SAM: `SamDecoderConfig` (prompt encoder and mask decoder,
the same in every zoo entry) and `SamConfig` (one zoo entry's SAM part, its `head`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamDecoderConfig:
    """segment-anything's prompt encoder and mask decoder (the same in every zoo entry).

    Attributes:
      embed_dim: token and embedding channels (256).
      grid: side of the image embedding (64).
      prompt_size: side of the frame prompts and masks live in (1024, for every family).
      mask_in_chans: hidden channels of the mask-prompt downscaler.
      num_multimask_outputs, iou_head_depth, iou_head_hidden_dim: the mask decoder.
      transformer_depth, transformer_heads, transformer_mlp_dim,
      attention_downsample_rate: its two-way transformer.
    """

    embed_dim: int = 256
    grid: int = 64
    prompt_size: int = 1024
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    transformer_depth: int = 2
    transformer_heads: int = 8
    transformer_mlp_dim: int = 2048
    attention_downsample_rate: int = 2

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (4x the embedding grid: 256)."""
        return 4 * self.grid


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """The SAM part of one zoo entry (the zoo's `head_cfg`).

    Attributes:
      encoder_size: side of the encoder input (512 for L, 1024 for XL).
      fid_list: backbone features read by the neck (deepest first).
      neck_depth, neck_expand: residual FusedMBConv blocks of the neck and their expansion.
      neck_width: width of the neck (256).
      decoder: the prompt encoder / mask decoder.
    """

    encoder_size: int
    fid_list: tuple[str, ...]
    neck_depth: int
    neck_expand: float
    neck_width: int = 256
    decoder: SamDecoderConfig = SamDecoderConfig()

    @property
    def prompt_size(self) -> int:
        return self.decoder.prompt_size

    @property
    def low_res_size(self) -> int:
        return self.decoder.low_res_size
