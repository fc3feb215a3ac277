"""The model zoo: one table of variants, `create_model`, `list_models`, `model_info`.

Names are the authors' (`efficientvit-b1-r224`, `efficientvit-seg-b0-cityscapes`,
`efficientvit-sam-l0`) and timm's (`efficientvit_b1`; a pretrained tag such as
`efficientvit_b1.r288_in1k` is accepted too). A resolution suffix only names the checkpoint's
evaluation resolution; the architecture is the same at every resolution.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from evit_jax.errors import UserError
from evit_jax.models.backbone import BackboneConfig, EfficientViTBackbone
from evit_jax.models.cls import EfficientViTCls
from evit_jax.models.det import DetConfig, EfficientViTDet, det_parts
from evit_jax.models.heads import ClsHead, ClsHeadConfig, SegHeadConfig, seg_head
from evit_jax.models.sam import EfficientViTSam, SamConfig
from evit_jax.models.sam.mask_decoder import MaskDecoder
from evit_jax.models.sam.neck import SamImageEncoder, sam_neck
from evit_jax.models.sam.prompt_encoder import PromptEncoder
from evit_jax.models.seg import EfficientViTSeg
from evit_jax.models.sr import EfficientViTSR, SRBodyConfig, SRHeadConfig
from evit_jax.models.v1 import FastSegHead, FastSegHeadConfig, V1Backbone, V1Config
from evit_jax.nn.conv import with_folded_bn
from evit_jax.nn.init import recording

_L = dict(family="l", dim=32, act="gelu")
_XL = dict(family="l", dim=32, act="gelu",
           block_list=("res", "fmb", "fmb", "fmb", "att@3", "att@3"),
           expand_list=(1, 4, 4, 4, 4, 6), fewer_norm_list=(False,) * 4 + (True, True))

BACKBONES: dict[str, BackboneConfig | V1Config] = {
    "b0": BackboneConfig("b", (8, 16, 32, 64, 128), (1, 2, 2, 2, 2), dim=16),
    "b1": BackboneConfig("b", (16, 32, 64, 128, 256), (1, 2, 3, 3, 4), dim=16),
    "b2": BackboneConfig("b", (24, 48, 96, 192, 384), (1, 3, 4, 4, 6), dim=32),
    "b3": BackboneConfig("b", (32, 64, 128, 256, 512), (1, 4, 6, 6, 9), dim=32),
    "l0": BackboneConfig(width_list=(32, 64, 128, 256, 512), depth_list=(1, 1, 1, 4, 4), **_L),
    "l1": BackboneConfig(width_list=(32, 64, 128, 256, 512), depth_list=(1, 1, 1, 6, 6), **_L),
    "l2": BackboneConfig(width_list=(32, 64, 128, 256, 512), depth_list=(1, 2, 2, 8, 8), **_L),
    "l3": BackboneConfig(width_list=(64, 128, 256, 512, 1024), depth_list=(1, 2, 2, 8, 8), **_L),
    "xl0": BackboneConfig(width_list=(32, 64, 128, 256, 512, 1024),
                          depth_list=(0, 1, 1, 2, 3, 3), **_XL),
    "xl1": BackboneConfig(width_list=(32, 64, 128, 256, 512, 1024),
                          depth_list=(1, 2, 2, 4, 6, 6), **_XL),
    # The v1 paper's EfficientViT-Base (seed 003; models/v1.py, docs/v1.md).
    "base": V1Config(),
    "base-w1.2": V1Config().scaled(1.2),
}
CLS_HEAD_WIDTHS = {"b0": (1024, 1280), "b1": (1536, 1600), "b2": (2304, 2560),
                   "b3": (2304, 2560), "l1": (3072, 3200), "l2": (3072, 3200),
                   "l3": (6144, 6400),
                   # v1 (ours, fitted to the paper's params and MACs: docs/v1.md)
                   "base": (1024, 2688), "base-w1.2": (1232, 3224)}
NORM_EPS = {"b": 1e-5, "l": 1e-7}  # the zoo's eps of every norm, per family


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One zoo entry: the architecture and what is known of its pretrained weights.

    Attributes:
      name: zoo name.
      task: "cls", "seg", "sam", "sr" or "det".
      backbone: key of BACKBONES (SR_BODIES for "sr").
      head: the head config (ClsHeadConfig, SegHeadConfig, or SAM's).
      norm_eps: eps of every norm (the reference's `set_norm_eps`).
      attn_eps: LiteMLA eps (1e-15 official, 1e-5 timm).
      key_style: checkpoint key naming, "official", "timm" or "yolox" (Megvii's layout of
        a YOLOX detector, the EfficientViT backbone as its `backbone.backbone`); the
        converter requires it.
      resolution: evaluation resolution (H, W) of its checkpoint / fixtures.
      crop_pct: evaluation center-crop ratio (classification).
      dataset: what the checkpoint was trained and evaluated on: "imagenet", "cityscapes",
        "ade20k", "sa-1b" (SAM), "coco" (detection); None for SR (ours, no published
        weights).
      eval_mode: evaluation resize: "shorter" (shorter side to `eval_size`, then the
        `crop_pct` centre crop), "fixed" (to (eval_size, 2 * eval_size), Cityscapes) or
        "letterbox" (detection: longer side to the resolution, padded bottom / right).
      checkpoint: file name of the official checkpoint, if one is published.
      paper: published figures, e.g. {"top1": 79.39, "top5": 94.346} or {"miou": 80.547};
        for the v1 models also "params" and "macs" (at `resolution`), and for the
        segmenter "macs_at" {(H, W): MACs} (the paper's tables).
    """

    name: str
    task: str
    backbone: str
    head: Any
    norm_eps: float
    attn_eps: float = 1e-15
    key_style: str = "official"
    resolution: tuple[int, int] = (224, 224)
    crop_pct: float = 1.0
    dataset: str | None = None
    eval_mode: str = "shorter"
    checkpoint: str | None = None
    paper: dict | None = None

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def family(self) -> str:
        """The backbone family: "b" (B0-B3) or "l" (L and XL: one builder, one key layout);
        "sr" for the super-resolution models."""
        return "sr" if self.task == "sr" else BACKBONES[self.backbone].family

    @property
    def eval_size(self) -> int:
        """The side `eval_mode` resizes to: the resolution's H."""
        return self.resolution[0]


# ---------------------------------------------------------------------------------------------
# The table. Classification: (variant, resolution or None, top-1, top-5) from the authors'
# README; no suffix = architecture only. Segmentation: one row per released checkpoint.
_CLS = [
    ("b0", None, None, None), ("b0", 224, None, None),
    ("b1", None, None, None), ("b1", 224, 79.390, 94.346), ("b1", 256, 79.918, 94.704),
    ("b1", 288, 80.410, 94.984),
    ("b2", None, None, None), ("b2", 224, 82.100, 95.782), ("b2", 256, 82.698, 96.096),
    ("b2", 288, 83.086, 96.302),
    ("b3", None, None, None), ("b3", 224, 83.468, 96.356), ("b3", 256, 83.806, 96.514),
    ("b3", 288, 84.150, 96.732),
    ("l1", None, None, None), ("l1", 224, 84.484, 96.862),
    ("l2", None, None, None), ("l2", 224, 85.050, None), ("l2", 256, 85.366, None),
    ("l2", 288, 85.630, None), ("l2", 320, 85.734, None), ("l2", 384, 85.978, None),
    ("l3", None, None, None), ("l3", 224, 85.814, None), ("l3", 256, 85.938, None),
    ("l3", 288, 86.070, None), ("l3", 320, 86.230, None), ("l3", 384, 86.408, None),
]
# (variant, dataset, head_width, depth, expand, middle, final_expand, mIoU)
_SEG = [
    ("b0", "cityscapes", 32, 1, 4, "mbconv", 4, 75.653),
    ("b1", "cityscapes", 64, 3, 4, "mbconv", 4, 80.547),
    ("b2", "cityscapes", 96, 3, 4, "mbconv", 4, 82.073),
    ("b3", "cityscapes", 128, 3, 4, "mbconv", 4, 83.016),
    ("l1", "cityscapes", 256, 3, 1, "fmbconv", None, 82.716),
    ("l2", "cityscapes", 256, 5, 1, "fmbconv", None, 83.228),
    ("b1", "ade20k", 64, 3, 4, "mbconv", None, 42.840),
    ("b2", "ade20k", 96, 3, 4, "mbconv", None, 45.941),
    ("b3", "ade20k", 128, 3, 4, "mbconv", None, 49.013),
    ("l1", "ade20k", 128, 3, 4, "fmbconv", 8, 49.191),
    ("l2", "ade20k", 128, 3, 4, "fmbconv", 8, 50.702),
]
# EfficientViT-SAM: (variant, encoder size, neck depth, neck expand, COCO mAP, LVIS mAP); the
# neck reads the three deepest stages. mAP: zero-shot with ViTDet boxes (EfficientViT-SAM paper).
_SAM = [("l0", 512, 4, 1, 45.7, 41.8), ("l1", 512, 8, 1, 46.2, 42.1),
        ("l2", 512, 12, 1, 46.6, 42.7), ("xl0", 1024, 6, 4, 47.5, 43.9),
        ("xl1", 1024, 12, 4, 47.8, 44.4)]
SEG_DATASETS = {"cityscapes": dict(num_classes=19, resolution=(1024, 2048), eval_mode="fixed"),
                "ade20k": dict(num_classes=150, resolution=(512, 512), eval_mode="shorter")}
# Evaluation centre-crop ratio: the authors evaluate B1 at 0.95, the rest at 1.0; timm's
# pretrained configs say 0.95 for every B model.
CROP_PCT = {"official": {"b1": 0.95}, "timm": {"b0": 0.95, "b1": 0.95, "b2": 0.95, "b3": 0.95}}


def _build_table() -> dict[str, ModelSpec]:
    table: dict[str, ModelSpec] = {}
    for v, res, top1, top5 in _CLS:
        fam = BACKBONES[v].family
        name = f"efficientvit-{v}" + (f"-r{res}" if res else "")
        table[name] = ModelSpec(
            name, "cls", v, ClsHeadConfig(CLS_HEAD_WIDTHS[v]), NORM_EPS[fam],
            resolution=(res or 224,) * 2, crop_pct=CROP_PCT["official"].get(v, 1.0),
            dataset="imagenet",
            checkpoint=f"efficientvit_{v}_r{res}.pt" if res else None,
            paper={"top1": top1, "top5": top5} if top1 else None)
    for v, ds, width, depth, expand, middle, fexp, miou in _SEG:
        bb = BACKBONES[v]
        name = f"efficientvit-seg-{v}-{ds}"
        head = SegHeadConfig(tuple(bb.width_list[4:1:-1]), width, depth, expand, middle, fexp,
                             SEG_DATASETS[ds]["num_classes"])
        table[name] = ModelSpec(name, "seg", v, head, NORM_EPS[bb.family],
                                resolution=SEG_DATASETS[ds]["resolution"], dataset=ds,
                                eval_mode=SEG_DATASETS[ds]["eval_mode"],
                                checkpoint=f"efficientvit_seg_{v}_{ds}.pt", paper={"miou": miou})
    for v, size, depth, expand, coco, lvis in _SAM:
        n = BACKBONES[v].num_stages
        fids = tuple(f"stage{i}" for i in range(n - 1, n - 4, -1))
        name = f"efficientvit-sam-{v}"
        table[name] = ModelSpec(name, "sam", v, SamConfig(size, fids, depth, expand), 1e-6,
                                resolution=(size, size), dataset="sa-1b",
                                checkpoint=f"efficientvit_sam_{v}.pt",
                                paper={"coco_map": coco, "lvis_map": lvis})
    for v in ("b0", "b1", "b2", "b3", "l1", "l2", "l3"):  # timm: own key names, attn eps 1e-5
        name = f"efficientvit_{v}"
        table[name] = dataclasses.replace(table[f"efficientvit-{v}"], name=name, attn_eps=1e-5,
                                          key_style="timm",
                                          crop_pct=CROP_PCT["timm"].get(v, 1.0))
    _add_sr(table)
    _add_v1(table)
    _add_det(table)
    return table


# ---------------------------------------------------------------------------------------------
# Super-resolution (ours; the papers publish no architecture, see docs/sr.md): one body per
# width, one upsampler per scale. Name: efficientvit-sr[-w0.75]-x{scale}.
SR_BODIES: dict[str, SRBodyConfig] = {"sr": SRBodyConfig()}
SR_BODIES["sr-w0.75"] = SR_BODIES["sr"].scaled(0.75)
_SR = [("sr", 2), ("sr", 3), ("sr", 4), ("sr-w0.75", 2), ("sr-w0.75", 3), ("sr-w0.75", 4)]
# Evaluation resolution of the LR input: BSD100's 160x240 (-> 320x480 at x2), the paper's.
SR_RESOLUTION = (160, 240)


def _add_sr(table: dict[str, ModelSpec]) -> None:
    for body, scale in _SR:
        name = f"efficientvit-{body}-x{scale}"
        table[name] = ModelSpec(name, "sr", body, SRHeadConfig(scale), 1e-5,
                                resolution=SR_RESOLUTION)


# ---------------------------------------------------------------------------------------------
# EfficientViT-Base of the v1 paper (seed 003, Tables 2-3; never released, no checkpoints): the
# backbone is BACKBONES["base"]; heads and fitting are ours (models/v1.py, docs/v1.md).
# Classification: (name suffix, backbone, resolution, top-1, top-5, params, MACs).
_V1_CLS = [("r192", "base", 192, 77.7, None, 7.9e6, 304e6),
           ("r224", "base", 224, 78.6, None, 7.9e6, 406e6),
           ("r224-w1.2", "base-w1.2", 224, 79.7, 94.8, 10.9e6, 584e6)]
# Segmentation (Cityscapes): "r1408" etc. name the longer side of a 1:2 input (docs/v1.md).
_V1_SEG_MACS = {(704, 1408): 9.1e9, (768, 1536): 10.8e9, (1024, 2048): 19.1e9}


def _add_v1(table: dict[str, ModelSpec]) -> None:
    for suffix, bb, res, top1, top5, params, macs in _V1_CLS:
        name = f"efficientvit-base-{suffix}"
        table[name] = ModelSpec(name, "cls", bb, ClsHeadConfig(CLS_HEAD_WIDTHS[bb]), 1e-5,
                                resolution=(res, res), dataset="imagenet",
                                paper={"top1": top1, "top5": top5, "params": params,
                                       "macs": macs})
    name, city = "efficientvit-base-seg-cityscapes", SEG_DATASETS["cityscapes"]
    table[name] = ModelSpec(name, "seg", "base", FastSegHeadConfig(num_classes=19), 1e-5,
                            resolution=city["resolution"], dataset="cityscapes",
                            eval_mode=city["eval_mode"],
                            paper={"miou": 78.7, "params": 6.5e6,
                                   "macs": _V1_SEG_MACS[city["resolution"]],
                                   "macs_at": dict(_V1_SEG_MACS)})


# Detection: EfficientViT-Det = an EfficientViT backbone (P2, P3, P4 = stage2..4, strides 8,
# 16, 32), YOLOX's PAFPN neck and decoupled head (docs/det.md). Detectors on the released
# backbones (ours; no published weights) follow YOLOX's own sizing rule, neck widths = the
# backbone's and head width = the finest neck width: B1 has YOLOX-Nano's widths (with full
# 3x3 convs), B2 YOLOX-Tiny's, B3 and L1 YOLOX-S's.
# (variant, neck depth, evaluation resolution)
_DET = [("b1", 1, 416), ("b2", 1, 416), ("b3", 1, 640), ("l1", 1, 640)]
# The paper's EfficientViT-Det (v1 paper Table 1) on the v1 EfficientViT-Base: neck and head
# widths are not given; ours meet the paper's MACs at all three resolutions (YOLOX-Nano's
# neck widths 64 / 128 / 256 with full 3x3 convs, head width 56). No neck and head reaches
# its 10.6 M parameters within those MACs (docs/det.md).
DET_BASE_HEAD = DetConfig((48, 96, 192), (64, 128, 256), 1, 56)
# (resolution, AP, AP50, AP75, MACs) of COCO val2017, 10.6 M parameters
_DET_BASE = [(416, 38.1, 55.6, 40.3, 2.1e9), (512, 40.7, 58.6, 43.6, 3.2e9),
             (608, 42.6, 60.5, 45.3, 4.4e9)]


def _add_det(table: dict[str, ModelSpec]) -> None:
    for v, depth, res in _DET:
        bb = BACKBONES[v]
        widths = tuple(bb.width_list[2:5])
        name = f"efficientvit-det-{v}"
        table[name] = ModelSpec(name, "det", v, DetConfig(widths, widths, depth, widths[0]),
                                NORM_EPS[bb.family], key_style="yolox", resolution=(res, res),
                                dataset="coco", eval_mode="letterbox")
    for res, ap, ap50, ap75, macs in _DET_BASE:
        name = f"efficientvit-det-base-r{res}"
        table[name] = ModelSpec(name, "det", "base", DET_BASE_HEAD, 1e-5, key_style="yolox",
                                resolution=(res, res), dataset="coco", eval_mode="letterbox",
                                paper={"ap": ap, "ap50": ap50, "ap75": ap75, "params": 10.6e6,
                                       "macs": macs})


MODELS: dict[str, ModelSpec] = _build_table()
# What create_model's keyword options may set. Each part declares the ones it takes, with
# its own default; an option goes to every part of the model that declares it.
OPTIONS = ("norm_eps", "attn_eps", "drop_path", "drop_path_skip", "zero_init_last", "dtype",
           "attention", "ffn", "multi_scale", "global_attention")
# The architecture ablations among them, and the models they apply to (for the refusal).
ABLATIONS = {
    "attention": "the v1 EfficientViT-Base models (efficientvit-base-*): 'linear' | 'softmax'",
    "ffn": "the v1 EfficientViT-Base models (efficientvit-base-*): 'dwconv' | 'vanilla'",
    "multi_scale": "the models with multi-scale linear attention (efficientvit-b*/-l*, their "
                   "seg and SAM models)",
    "global_attention": "the models with multi-scale linear attention (efficientvit-b*/-l*, "
                        "their seg and SAM models)",
}


class OptionError(UserError, TypeError):
    """A `create_model` option the model does not take: a `UserError` (one line from the
    commands: configs and command lines pass options through) and a `TypeError`, what an
    unexpected keyword argument raises."""


def list_models(pattern: str | None = None) -> list[str]:
    """Every zoo name (sorted), optionally filtered by a shell pattern like `*seg*`."""
    names = sorted(MODELS)
    return fnmatch.filter(names, pattern) if pattern else names


def _canonical(name: str) -> str:
    base = name.split(".", 1)[0] if name.startswith("efficientvit_") else name
    if base not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown model {name!r}{hint} (evit_jax.list_models() lists all)")
    return base


def model_info(name: str) -> ModelSpec:
    """The zoo entry of `name` (architecture, eps, resolution, checkpoint, paper numbers)."""
    return MODELS[_canonical(name)]


def _example_inputs(model: nn.Module) -> tuple:
    """Arguments for `model.init`: SAM provides `example_inputs()`; the others take a 64x64
    image batch (parameter shapes do not depend on the resolution)."""
    if hasattr(model, "example_inputs"):
        return tuple(model.example_inputs())
    return (jnp.zeros((1, 64, 64, 3), jnp.float32),)


def abstract_variables(model: nn.Module) -> dict[str, Any]:
    """The variables' tree of shapes and dtypes (`jax.ShapeDtypeStruct` leaves), no values."""
    return dict(jax.eval_shape(model.init, jax.random.key(0), *_example_inputs(model)))


def init_variables(model: nn.Module, rng: Any = 0) -> dict[str, Any]:
    """Freshly initialised variables (`params`, `batch_stats`) of a zoo module, as numpy.

    Initialisation runs on the host (see `evit_jax.nn.init`): shapes come from tracing the
    model, values from numpy seeded by (seed, variable path), so no random-number program is
    compiled (that takes minutes for the large models on a CPU). The same rng always gives the
    same variables.

    Args:
      model: a module from `create_model`.
      rng: an int seed or a jax PRNG key.
    """
    args = _example_inputs(model)
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    with recording() as specs:
        abstract = jax.eval_shape(model.init, key, *args)
    flat = flatten_dict(dict(abstract))
    if any(path not in specs for path in flat):
        # A module with parameters declared outside evit_jax.nn.init: let Flax do it.
        return dict(jax.jit(model.init)(key, *args))
    seed = [int(v) for v in np.asarray(jax.random.key_data(key)).ravel()]
    out = {}
    for path, leaf in flat.items():
        rng_np = np.random.default_rng(seed + [zlib.crc32("/".join(path).encode())])
        out[path] = specs[path].numpy(rng_np, tuple(leaf.shape)).astype(leaf.dtype)
    return unflatten_dict(out)


def random_variables(model: Any, seed: int = 0, inputs: tuple | None = None) -> Any:
    """Variables of `model` filled with numpy random values of sane scale, for benchmarks and
    export checks (speed and exactness do not depend on the values); this skips compiling the
    model's `init` (a minute for some).

    Kernels ~ N(0, 1/fan_in), norm scales and variances ~ U(0.5, 1.5), biases and means
    small, so activations stay O(1) (no overflow, no denormals). `inputs`: example inputs
    for `model.init` when it is not a zoo model.
    """
    shapes = abstract_variables(model) if inputs is None else \
        jax.eval_shape(model.init, jax.random.key(0), *inputs)
    rng = np.random.default_rng(seed)

    def fill(path: tuple, leaf: Any) -> np.ndarray:
        key = str(getattr(path[-1], "key", path[-1]))
        shape, dtype = leaf.shape, leaf.dtype
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1])) or 1
            value = rng.normal(0.0, fan_in ** -0.5, shape)
        elif key in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.05, shape)
        return np.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _build(spec: ModelSpec, part: Any) -> nn.Module:
    """The module of `spec`, assembled from its parts; `part(module)` gives each part its
    options (the task models own no options themselves)."""
    if spec.task == "sr":
        return part(EfficientViTSR(SR_BODIES[spec.backbone], spec.head))
    bb = BACKBONES[spec.backbone]
    backbone = part(V1Backbone(bb) if isinstance(bb, V1Config) else EfficientViTBackbone(bb))
    if spec.task == "cls":
        return EfficientViTCls(backbone, part(ClsHead(spec.head, bb.act)))
    if spec.task == "seg":
        head = FastSegHead(spec.head, bb.act) if isinstance(spec.head, FastSegHeadConfig) \
            else seg_head(spec.head, bb.act)
        return EfficientViTSeg(backbone, part(head))
    if spec.task == "det":
        neck, head = det_parts(spec.head)
        return EfficientViTDet(backbone, part(neck), part(head), spec.head.in_features)
    sam, dec = spec.head, spec.head.decoder
    encoder = part(SamImageEncoder(backbone, part(sam_neck(sam, bb.act))))
    prompts = part(PromptEncoder(dec.embed_dim, dec.grid, dec.prompt_size, dec.mask_in_chans))
    return EfficientViTSam(encoder, prompts, part(MaskDecoder(dec)), sam.encoder_size)


def create_model(name: str, dtype: Any = jnp.float32, fused_bn: bool = False,
                 **overrides: Any) -> nn.Module:
    """Build the Flax module of a zoo model (parameters come separately, as `variables`).

    Args:
      name: a zoo name (`list_models()`).
      dtype: compute dtype (`jnp.float32` or `jnp.bfloat16`); parameters stay float32 and
        linear attention runs in float32.
      fused_bn: build every conv + BatchNorm as one conv with a bias (inference only): the
        module that `evit_jax.fuse_bn(variables, name)` output fits.
      **overrides: `OPTIONS` of the parts, e.g. `drop_path=0.1`, `zero_init_last=True`
        (the backbone's), `norm_eps` (every part with a norm), or `num_classes=10` (a new
        classifier for fine-tuning); the papers' ablations (`ABLATIONS`):
        `attention="softmax"`, `ffn="vanilla"` (v1 models), `multi_scale=False`,
        `global_attention=False` (models with LiteMLA). An option the model does not take
        raises `OptionError` (a `UserError`) naming what it applies to.
    Returns:
      A `flax.linen.Module`; `model.apply(variables, x)` runs inference on `[N, H, W, 3]`.
    """
    return model_from_spec(model_info(name), dtype, fused_bn, **overrides)


def model_from_spec(spec: ModelSpec, dtype: Any = jnp.float32, fused_bn: bool = False,
                    **overrides: Any) -> nn.Module:
    """`create_model` for an entry that is not in the table: a zoo entry changed with
    `dataclasses.replace` (e.g. a SAM head at another encoder size or embedding grid, for
    training at reduced size). The arguments are `create_model`'s."""
    name = spec.name
    head_fields = {f.name for f in dataclasses.fields(spec.head)}
    if "num_classes" in overrides and "num_classes" in head_fields:
        spec = dataclasses.replace(spec, head=dataclasses.replace(
            spec.head, num_classes=int(overrides.pop("num_classes"))))
    options = dict(norm_eps=spec.norm_eps, attn_eps=spec.attn_eps, dtype=dtype)
    options.update(overrides)
    declared: set[str] = set()

    def part(module: nn.Module) -> nn.Module:
        # Route the options this part declares to it (a frozen dataclass: replace).
        names = {f.name for f in dataclasses.fields(module)} & set(OPTIONS)
        declared.update(names)
        return dataclasses.replace(module, **{k: options[k] for k in names & set(options)})

    model = _build(spec, part)
    unknown = sorted(set(overrides) - declared)
    if unknown:
        allowed = sorted(declared | ({"num_classes"} & head_fields))
        scope = "; ".join(f"{k} applies to {ABLATIONS[k]}" for k in unknown if k in ABLATIONS)
        raise OptionError(f"create_model({name!r}) got unknown options {unknown}"
                          + (f" ({scope})" if scope else "") + f"; allowed: {allowed}")
    return with_folded_bn(model) if fused_bn else model  # fused_bn: evit_jax.nn.conv


def sam_spec(model: str, encoder_size: int = 0, grid: int = 0) -> ModelSpec:
    """The zoo entry of a SAM model at another encoder input size or embedding grid
    (0 = the model's own; training runs at reduced sizes), or the entry itself."""
    spec = model_info(model)
    if spec.task != "sam":
        raise UserError(f"the SAM tasks need an EfficientViT-SAM model "
                        f"(efficientvit-sam-l0 ...), got {model!r}")
    head = spec.head
    size, g = encoder_size or head.encoder_size, grid or head.decoder.grid
    if (size, g) == (head.encoder_size, head.decoder.grid):
        return spec
    return dataclasses.replace(spec, head=dataclasses.replace(
        head, encoder_size=size, decoder=dataclasses.replace(head.decoder, grid=g)))


def sam_model(name: str, encoder_size: int = 0, grid: int = 0, **kw: Any) -> nn.Module:
    """`create_model(name, **kw)` with another encoder input size / embedding grid."""
    spec = sam_spec(name, encoder_size, grid)
    if spec == model_info(name):
        return create_model(name, **kw)
    return model_from_spec(spec, **kw)
