"""evit-jax against the reference PyTorch EfficientViT, side by side, in one run.

On a shared, noisy machine only numbers taken together are comparable, so this runs both
sides at once: one worker process per side (JAX: `evit_jax.bench.worker`; PyTorch eager:
`evit_jax.bench.ref_worker` on the reference set up by `setup.sh`), each pinned to the same
CPUs with the same thread count, never running at the same time. Each round asks every side
for a few timed calls, rotating who goes first; the speedup is the ratio of the medians
(reference / evit-jax, so > 1 means evit-jax is faster), with its spread over rounds.

With `--ort` two more sides run in ONNX Runtime: the authors' model exported with
`torch.onnx.export` ("ort-authors", what a deployer on CPU runs) and evit-jax's ONNX export
("ort-evit"), on the same weights (the reference's random initialisation, saved and
converted). It needs `onnx onnxruntime onnxscript` installed in the reference's venv.

  python -m evit_jax.bench.compare --ref /tmp/evit-ref --targets
  python -m evit_jax.bench.compare --ref /tmp/evit-ref --case efficientvit-b2:256:4
  python -m evit_jax.bench.compare --ref /tmp/evit-ref --targets --ort --baseline ort-authors
  python -m evit_jax.bench.compare --ref /tmp/evit-ref --sam-pipeline --rounds 3
  python -m evit_jax.bench.compare --ref /tmp/evit-ref --train-step
  evit-bench --vs-reference /tmp/evit-ref --targets --markdown

`--sam-pipeline` (or cases `NAME:set_image|boxes|amg:HxW:N`) times our `SamPredictor` /
`SamAutomaticMaskGenerator` against the authors' `EfficientViTSamPredictor` /
`EfficientViTSamAutomaticMaskGenerator` on the same weights and picture
(`evit_jax.bench.sam_inputs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from evit_jax.bench.protocol import MARK
from evit_jax.bench.tables import render

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    part: str
    batch: int
    height: int
    width: int

    @property
    def label(self) -> str:
        part = "" if self.part == "model" else f" {self.part}"
        return f"{self.model}{part} {self.height}x{self.width} bs{self.batch}"


# The speed targets of the project (float32, same threads as the reference).
TARGETS = (Case("efficientvit-b1", "model", 1, 224, 224),
           Case("efficientvit-b1", "model", 8, 224, 224),
           Case("efficientvit-l1", "model", 8, 224, 224),
           Case("efficientvit-seg-b1-cityscapes", "model", 1, 512, 1024),
           Case("efficientvit-sam-l0", "encoder", 1, 512, 512))
# The SAM pipeline targets (`evit_jax.bench.sam_inputs`): a 480x640 picture encoded, 64
# boxes decoded in one call, the 32x32-point automatic mask generator.
SAM_PIPELINE = (Case("efficientvit-sam-l0", "set_image", 1, 480, 640),
                Case("efficientvit-sam-l0", "boxes", 64, 480, 640),
                Case("efficientvit-sam-l0", "amg", 32, 480, 640))
# One training step (forward, cross-entropy, backward, AdamW) of B1 at 224², batch 8.
TRAIN_STEP = Case("efficientvit-b1", "train", 8, 224, 224)


def parse_case(text: str) -> Case:
    """`NAME:RES:BATCH` or `NAME:PART:RES:BATCH`, RES `224` or `512x1024`."""
    fields = text.split(":")
    if len(fields) not in (3, 4):
        raise argparse.ArgumentTypeError(
            f"case {text!r} must be NAME:RES:BATCH or NAME:PART:RES:BATCH "
            "(e.g. efficientvit-b1:224:8, efficientvit-sam-l0:encoder:512:1)")
    name, part = fields[0], fields[1] if len(fields) == 4 else None
    res, batch = fields[-2].lower().split("x"), fields[-1]
    try:
        h, w = (int(res[0]), int(res[-1]))
        b = int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"case {text!r}: resolution and batch must be integers")\
            from None
    if len(res) > 2 or min(h, w, b) <= 0:
        raise argparse.ArgumentTypeError(f"case {text!r}: bad resolution or batch")
    if part is None:
        part = "encoder" if name.startswith("efficientvit-sam") else "model"
    return Case(name, part, b, h, w)


def summarise(times: dict[str, list[list[float]]], baseline: str,
              cpu: dict[str, list[list[float]]] | None = None) -> dict:
    """Per-side median/p90 over all calls, and each side's speedup over `baseline`
    (baseline median / side median) with its range over the rounds.

    `times[side][round]` holds the latencies (ms) of that side's calls in that round;
    `cpu`, laid out alike, their process CPU times (summarised as `cpu_ms` and `cpu_speedup`:
    with one thread, a measure that the machine's other load barely moves).
    """
    out: dict = {"sides": {}}
    if cpu:
        base_cpu = float(np.median(sum(cpu[baseline], [])))
    base_round = [float(np.median(r)) for r in times[baseline]]
    base_all = float(np.median(sum(times[baseline], [])))
    for side, rounds in times.items():
        flat = sum(rounds, [])
        med = float(np.median(flat))
        per_round = [b / float(np.median(r)) for b, r in zip(base_round, rounds)]
        out["sides"][side] = {
            "median_ms": med, "p90_ms": float(np.percentile(flat, 90)), "calls": len(flat),
            "speedup": base_all / med, "speedup_min": min(per_round),
            "speedup_max": max(per_round)}
        if cpu:
            c = float(np.median(sum(cpu[side], [])))
            out["sides"][side].update(cpu_ms=c, cpu_speedup=base_cpu / c)
    return out


class WorkerError(RuntimeError):
    pass


class Worker:
    """One timing process speaking `evit_jax.bench.protocol`."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str],
                 reference: bool = False):
        self.label = label
        self.reference = reference  # writes the weights the other sides may read
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"evit-{label}-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env)

    def request(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(MARK):
                reply = json.loads(line[len(MARK):])
                if not reply["ok"]:
                    raise WorkerError(f"{self.label}: {reply['error']}\n{reply.get('trace', '')}")
                return reply
        self.log.flush()
        tail = Path(self.log.name).read_text()[-3000:]
        raise WorkerError(f"{self.label} worker exited (code {self.proc.wait()}); its log "
                          f"{self.log.name} ends with:\n{tail}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request(cmd="quit")
            except (WorkerError, BrokenPipeError, json.JSONDecodeError):
                pass
            self.proc.wait(timeout=30)
        os.unlink(self.log.name)


def reference_worker(ref: Path, threads: int, runtime: str = "eager") -> Worker:
    """The authors' model in `runtime`: "eager" PyTorch, or "ort" (their ONNX export)."""
    python = ref / "venv" / "bin" / "python"
    if not python.exists() or not (ref / "src" / "efficientvit").is_dir():
        from evit_jax.cli import UserError
        raise UserError(
            f"no reference set up in {ref}: run setup.sh (shared/reference/setup.sh "
            "MIRROR_GIT_DIR DEST, with MIRROR_GIT_DIR a git snapshot of "
            "mit-han-lab/efficientvit) and pass --ref DEST")
    stubs = ref / "stubs"
    if runtime == "ort":
        stubs = _stubs_without_onnx(stubs)
        probe = subprocess.run([str(python), "-c", "import onnx, onnxruntime, onnxscript"],
                               capture_output=True)
        if probe.returncode:
            from evit_jax.cli import UserError
            raise UserError(f"--ort needs ONNX Runtime in the reference's venv: "
                            f"{python} -m pip install onnx onnxruntime onnxscript")
    env = dict(os.environ, PYTHONPATH=f"{stubs}:{ref / 'src'}", OMP_NUM_THREADS=str(threads))
    label = "pytorch" if runtime == "eager" else "ort-authors"
    return Worker(label, [str(python), str(HERE / "ref_worker.py"), str(threads), runtime],
                  env, reference=True)


def _stubs_without_onnx(stubs: Path) -> Path:
    """A copy (of links) of setup.sh's import stand-ins without its onnx/onnxruntime ones, so
    that the real packages import; the onnxsim stand-in stays (the exporter never runs it)."""
    out = Path(tempfile.mkdtemp(prefix="evit-stubs-"))
    for entry in stubs.iterdir():
        name = entry.name.split(".")[0]
        if name in ("onnx", "onnxruntime"):
            continue
        (out / entry.name).symlink_to(entry)
    return out


def jax_worker(label: str, threads: int, extra_env: dict[str, str],
               runtime: str = "xla") -> Worker:
    # This checkout first, unless the side names another one (`PYTHONPATH=/other/checkout`:
    # e.g. the commit before a change, to measure the change).
    root = str(HERE.parent.parent)
    env = dict(os.environ, **extra_env)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (extra_env.get("PYTHONPATH"), root, os.environ.get("PYTHONPATH")) if p)
    return Worker(label, [sys.executable, "-m", "evit_jax.bench.worker", str(threads),
                          runtime], env)


def run_case(case: Case, workers: list[Worker], rounds: int, calls: int, warmup: int,
             progress=None, onnx_dir: str | None = None) -> tuple[dict, dict]:
    """Set the case up on every worker, then `rounds` rounds of `calls` timed calls each,
    rotating which side starts. Returns (wall times, CPU times): `[side][round][call]` ms."""
    with tempfile.TemporaryDirectory(prefix="evit-compare-") as tmp:
        req = dict(model=case.model, part=case.part, batch=case.batch, height=case.height,
                   width=case.width, warmup=warmup, state_dict=os.path.join(tmp, "ref.pt"),
                   onnx_dir=onnx_dir)
        # One at a time (compiling is heavy); the reference first: it writes the weights
        # that the ONNX Runtime side of evit-jax converts.
        for w in sorted(workers, key=lambda w: not w.reference):
            w.request(cmd="setup", label=w.label, **req)
    times: dict[str, list[list[float]]] = {w.label: [] for w in workers}
    cpu: dict[str, list[list[float]]] = {w.label: [] for w in workers}
    for r in range(rounds):
        k = r % len(workers)
        for w in workers[k:] + workers[:k]:
            reply = w.request(cmd="time", n=calls)
            times[w.label].append(reply["times_ms"])
            cpu[w.label].append(reply["cpu_ms"])
        if progress is not None:
            progress.update(1)
    return times, cpu


def add_efficiency(rows: list[dict], peak: float) -> None:
    """Each model case's MACs (`count_macs`) and every side's achieved GFLOP/s and fraction
    of `peak` (2 * MACs / median time); the SAM pipeline cases have no MAC count."""
    from evit_jax.bench.macs import count_macs
    from evit_jax.bench.sam_inputs import PARTS
    for row in rows:
        row["gemm_peak_gflops"] = peak
        if row["part"] in PARTS or row["part"] == "train":
            continue
        macs = count_macs(row["model"], (row["height"], row["width"]),
                          part=None if row["part"] == "model" else row["part"],
                          batch=row["batch"])
        row["macs"] = macs
        for side in row["sides"].values():
            side["gflops"] = 2 * macs / side["median_ms"] / 1e6
            side["efficiency"] = side["gflops"] / peak


def format_rows(rows: list[dict], baseline: str, markdown: bool = False) -> str:
    sides = [s for s in rows[0]["sides"] if s != baseline] if rows else []
    with_eff = any("macs" in r for r in rows)
    head = ["case", *(f"{s} ms" for s in sides), f"{baseline} ms",
            *(f"{s} speedup (range)" for s in sides), *(f"{s} CPU-time speedup" for s in sides),
            *(f"{s} GFLOP/s (of peak)" for s in [*sides, baseline] if with_eff),
            "load"]
    body = []
    for row in rows:
        st = row["sides"]
        body.append([row["case"], *(f"{st[s]['median_ms']:.1f}" for s in sides),
                     f"{st[baseline]['median_ms']:.1f}",
                     *(f"{st[s]['speedup']:.2f}x ({st[s]['speedup_min']:.2f}-"
                       f"{st[s]['speedup_max']:.2f})" for s in sides),
                     *(f"{st[s]['cpu_speedup']:.2f}x" if "cpu_speedup" in st[s] else "-"
                       for s in sides),
                     *(f"{st[s]['gflops']:.0f} ({100 * st[s]['efficiency']:.0f}%)"
                       if "gflops" in st[s] else "-"
                       for s in [*sides, baseline] if with_eff),
                     "-" if "load_avg" not in row else f"{max(row['load_avg']):.1f}"])
    return render(head, body, markdown, rule=True)


def parse_env(text: str) -> tuple[str, dict[str, str]]:
    """`LABEL:KEY=VAL;KEY=VAL` -> (label, env)."""
    label, _, rest = text.partition(":")
    env = dict(kv.split("=", 1) for kv in rest.split(";") if kv)
    return label, env


PROG = "python -m evit_jax.bench.compare"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", type=Path, help="the reference set up by setup.sh (its DEST)")
    ap.add_argument("--no-ref", action="store_true",
                    help="no PyTorch side: compare JAX variants (the first is the baseline)")
    ap.add_argument("--case", type=parse_case, action="append", default=[],
                    help="NAME:RES:BATCH or NAME:PART:RES:BATCH (repeatable)")
    ap.add_argument("--targets", action="store_true", help="the project's five speed targets")
    ap.add_argument("--sam-pipeline", action="store_true",
                    help="the SAM pipeline targets: set_image, 64 boxes, 32x32 automatic "
                         "generator (our predictor vs the authors', same weights and picture)")
    ap.add_argument("--train-step", action="store_true",
                    help="B1's training step at 224² batch 8 (jitted vs eager PyTorch)")
    ap.add_argument("--threads", type=int, default=2, help="CPUs and threads of each side")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=3, help="timed calls per side per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls after setup")
    ap.add_argument("--fuse-bn", action="store_true", help="evit-jax with BatchNorm folded")
    ap.add_argument("--jax-env", type=parse_env, action="append", default=[],
                    metavar="LABEL:KEY=VAL;...",
                    help="an extra evit-jax side with these environment variables, e.g. "
                         "'shift_add:EVIT_DEPTHWISE=shift_add' (repeatable)")
    ap.add_argument("--ort", action="store_true",
                    help="two more sides in ONNX Runtime: the authors' torch.onnx.export "
                         "(ort-authors) and evit-jax's ONNX export (ort-evit), same weights")
    ap.add_argument("--ort-env", type=parse_env, action="append", default=[],
                    metavar="LABEL:KEY=VAL;...",
                    help="with --ort, an extra side running evit-jax's ONNX export made with "
                         "these environment variables, e.g. 'before:PYTHONPATH=/old/checkout' "
                         "(repeatable)")
    ap.add_argument("--ort-profile", metavar="DIR",
                    help="with --ort: keep each ONNX Runtime side's graph in DIR and print "
                         "where its time goes, per ONNX op type (ORT's profiler)")
    ap.add_argument("--baseline", metavar="LABEL",
                    help="the side the speedups are relative to (default: pytorch, or the "
                         "first evit-jax side with --no-ref)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--json", metavar="PATH", help="write the raw times and summary as JSON")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (`evit_jax.cli`)."""
    from evit_jax.cli import run
    return run(PROG, build_parser(), _main, argv)


def _main(args: argparse.Namespace) -> int:
    from evit_jax.bench.sam_inputs import PARTS
    from evit_jax.cli import UserError
    cases = (list(args.case) + (list(TARGETS) if args.targets else [])
             + (list(SAM_PIPELINE) if args.sam_pipeline else [])
             + ([TRAIN_STEP] if args.train_step else []))
    if not cases:
        raise UserError("give --case NAME:RES:BATCH (repeatable), --targets, --sam-pipeline "
                        "or --train-step")
    pipeline = [c.label for c in cases if c.part in PARTS]
    if pipeline and (args.no_ref or args.ort or args.jax_env):
        raise UserError(f"{pipeline[0]}: the SAM pipeline cases compare our predictor with "
                        "the authors' (give --ref; not with --no-ref, --ort or --jax-env)")
    train = [c.label for c in cases if c.part == "train"]
    if train and args.ort:
        raise UserError(f"{train[0]}: a training step has no ONNX Runtime side; leave out --ort")
    if args.ort_profile and not args.ort:
        raise UserError("--ort-profile profiles the ONNX Runtime sides: give --ort too")
    if args.ort_env and not args.ort:
        raise UserError("--ort-env adds an ONNX Runtime side: give --ort too")
    if args.ref is None and not args.no_ref:
        raise UserError("give --ref DEST (the reference set up by setup.sh) or --no-ref")
    from tqdm.auto import tqdm

    env = {"EVIT_FUSE_BN": "1"} if args.fuse_bn else {}
    workers = [jax_worker("evit-jax", args.threads, env)]
    workers += [jax_worker(label, args.threads, {**env, **e}) for label, e in args.jax_env]
    if args.ort:
        if args.no_ref:
            raise UserError("--ort compares against the authors' export: give --ref, not --no-ref")
        workers.append(jax_worker("ort-evit", args.threads, env, runtime="ort"))
        workers += [jax_worker(label, args.threads, {**env, **e}, runtime="ort")
                    for label, e in args.ort_env]
        workers.append(reference_worker(args.ref, args.threads, runtime="ort"))
    if not args.no_ref:
        workers.append(reference_worker(args.ref, args.threads))
    baseline = args.baseline or (workers[-1].label if not args.no_ref else workers[0].label)
    if baseline not in {w.label for w in workers}:
        for w in workers:
            w.close()
        raise UserError(f"--baseline {baseline!r} is not a side; the sides are "
                        f"{', '.join(w.label for w in workers)}")
    rows = []
    peak = None
    bar = tqdm(total=len(cases) * args.rounds, desc="side by side", unit="round",
               disable=args.no_progress, file=sys.stderr)
    try:
        for case in cases:
            bar.set_postfix_str(case.label)
            load0 = os.getloadavg()[0]
            case_dir = None
            if args.ort_profile:
                case_dir = os.path.join(args.ort_profile, case.label.replace(" ", "_"))
                os.makedirs(case_dir, exist_ok=True)
            times, cpu = run_case(case, workers, args.rounds, args.calls, args.warmup, bar,
                                  case_dir)
            rows.append({"case": case.label, **dataclasses.asdict(case), "times_ms": times,
                         "cpu_ms": cpu, "threads": args.threads, "onnx_dir": case_dir,
                         "load_avg": [load0, os.getloadavg()[0]],
                         **summarise(times, baseline, cpu)})
        peak = workers[0].request(cmd="peak")["gflops"]
    finally:
        bar.close()
        for w in workers:
            w.close()
    add_efficiency(rows, peak)
    print(format_rows(rows, baseline, args.markdown))
    if args.ort_profile:
        from evit_jax.bench.ort_profile import format_profile, profile_dir
        for row in rows:
            row["ort_profile"] = profile_dir(row["onnx_dir"], args.threads)
            print(f"\n{row['case']}: ONNX Runtime time per call by op type (ms)")
            print(format_profile(row["ort_profile"], args.markdown))
    print(f"GEMM peak (float32 1024^3 matmul, {args.threads} threads): {peak:.0f} GFLOP/s; "
          "efficiency = 2 * MACs / median time / peak")
    if args.json:
        from evit_jax.cli import write_atomic
        write_atomic(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
