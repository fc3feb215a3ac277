"""Training metrics: a progress bar, `metrics.jsonl`, TensorBoard events, the curves plot.

Only host 0 writes. `metrics.jsonl` holds one JSON object per line: `{"step", "split":
"train", "loss", "top1", "lr", "img_per_s", ...}` every `log_every_steps`, and `{"step",
"split": "eval", "top1", "top5"}` / `{"step", "split": "eval", "miou"}` per evaluation. On
resume the lines past the restored step are dropped, so the file tells one story.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax


class MetricWriter:
    """Writes metrics of host 0 to `WORKDIR/metrics.jsonl` and TensorBoard (`WORKDIR/tb`)."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(self.path):  # keep the history up to the step we resume from
            kept = [line for line in read_jsonl(self.path) if line.get("step", 0) <= resume_step]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in kept)
            os.replace(tmp, self.path)
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step or None)
        except ImportError:  # TensorBoard files are optional; metrics.jsonl is always written
            self.tb = None

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.active:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), int(step))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: skip it
                    continue
    return rows


class Progress:
    """tqdm bar over the steps (host 0 only): steps, ETA, img/s, loss, lr."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled and jax.process_index() == 0:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            file=sys.stdout, desc="train")

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.bar is None:
            return
        if postfix:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                  for k, v in postfix.items()}, refresh=False)
        self.bar.update(n)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif jax.process_index() == 0:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_curves(workdir: str, percent: tuple[str, ...] = ("top1", "top5", "miou"),
                out: str | None = None) -> str | None:
    """PNG of training loss and train / eval accuracy (or mIoU) against the step; the eval
    metrics named in `percent` are fractions (shown x100), the others already percent."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rows = read_jsonl(path)
    train = [r for r in rows if r.get("split") == "train"]
    ev = [r for r in rows if r.get("split") == "eval"]
    if not train:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    ax0.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax0.set_xlabel("step")
    ax0.set_ylabel("loss")
    ax0.set_yscale("log")
    ax0.grid(alpha=0.3)
    ax0.legend()
    if any("top1" in r for r in train):
        ax1.plot([r["step"] for r in train if "top1" in r],
                 [100 * r["top1"] for r in train if "top1" in r], label="train top-1 (batch)")
    if any("train_iou" in r for r in train):  # SAM: IoU of the trained masks
        ax1.plot([r["step"] for r in train if "train_iou" in r],
                 [100 * r["train_iou"] for r in train if "train_iou" in r],
                 label="train mask IoU (batch)")
    for key, name in (("top1", "eval top-1"), ("top5", "eval top-5"), ("miou", "eval mIoU")):
        pts = [(r["step"], (100 if key in percent else 1) * r[key]) for r in ev if key in r]
        if pts:
            ax1.plot(*zip(*pts), "o-", label=name)
    ax1.set_xlabel("step")
    ax1.set_ylabel("%")
    ax1.grid(alpha=0.3)
    ax1.legend()
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    out = out or os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
