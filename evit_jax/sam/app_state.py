"""The state behind `evit-sam-app` (evit_jax/sam/app.py): sessions, the model calls, the
masks as overlay PNGs and downloads. No web framework here: `app.create_app` wires these to
HTTP.

Concurrency: the handlers are `async`; every model call runs in a worker thread, and XLA
releases the GIL while it computes, so the event loop keeps answering (the page, progress
polls, other users, uploads still arriving) during an encode. Uploads are decoded and
encoded one at a time, in arrival order, by one worker (`encoder`): two encodes at once
would share the same cores and both finish late. At most `max_queued_uploads` wait there;
more are refused with 429 and a Retry-After, so a burst cannot pile up memory. Prompts take
no lock: a decoder call is short and runs beside an encode or a generator batch, so a user's
click never waits behind another user's upload. "Segment everything" runs in its own
thread, one job at a time (`generator_pool`; at most `max_queued_everything` queued or
running, shown as queued), and checks for cancellation between batches of clicks. Prompts
and downloads run on `prompt_workers` fixed threads (`workers`); more wait in its queue.

Memory: a session keeps its image's embedding (`[1, 64, 64, 256]` float32, 4 MiB), the
upscaling maps of its size and its last result (run-length encoded, 4 bytes a run), not the
image itself (the generator needs only its shape). Sessions live in an LRU bounded both in
count (`max_sessions`) and in those bytes (`session_memory_bytes`); a session running or
queueing "segment everything" is not dropped while it does. So the memory the sessions hold
is at most `session_memory_bytes` (and `max_sessions` times one session), on top of what
the model and compiled code take, plus the uploads in flight (at most `max_queued_uploads`
of `max_upload_bytes`, and one decoded image). Session ids are 128-bit random
(`secrets.token_urlsafe(16)`): the id is the key to a session, never listed, logged or put
in an error message.
"""

from __future__ import annotations

import base64
import io
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_jax.cli import UserError, one_line
from evit_jax.sam import amg_utils as U
from evit_jax.sam.amg import SamAutomaticMaskGenerator
from evit_jax.sam.cli import read_image
from evit_jax.sam.draw import outline, palette
from evit_jax.sam.predictor import SamPredictor

MAX_CLICKS = 30  # decoder token rows are padded to powers of two: <= 32 tokens, 5 shapes
# Segment everything decodes a batch of clicks at once: the decoder's working memory per
# row (XLA's memory analysis of L0's decoder on a 64x64 grid: 27 MiB for one row, 316 MiB
# for 16, so ~19.3 MiB a row, scaling with the grid's area), then their full-size masks:
# logits (float32), masks and the stability score's thresholds, ~10 bytes a pixel for each
# of a click's three masks. The batch is sized to keep both within 256 MiB.
EVERYTHING_BATCH_BYTES = 256 << 20
DECODER_ROW_BYTES = 20 << 20
EVERYTHING_BYTES_PER_PIXEL = 10
PROMPT_RGB = (30, 144, 255)  # the mask overlay of a prompt result


class AppError(Exception):
    """A request the app refuses: HTTP `status` with a one-line `detail` (and headers, e.g.
    Retry-After for 429)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


# ------------------------------------------------------------------------------- masks
def mask_png(masks: Sequence[Any], colors: np.ndarray, alpha: int = 110) -> str:
    """Masks (boolean `[H, W]` arrays, or RLEs decoded one at a time, so N masks never take
    N full-size arrays) -> a base64 palette PNG of their overlay: transparent outside, each
    mask tinted in its colour (largest drawn first, so small ones stay visible) and outlined
    opaquely. A palette PNG is a fraction of the size of RGBA and encodes faster."""
    def get(i: int) -> np.ndarray:
        m = masks[i]
        return U.rle_to_mask(m) if isinstance(m, dict) else np.asarray(m, bool)

    def area(m: Any) -> int:
        return U.area_from_rle(m) if isinstance(m, dict) else int(np.asarray(m).sum())

    n = len(masks)
    first = masks[0]
    shape = tuple(first["size"]) if isinstance(first, dict) else np.shape(first)
    idx = np.zeros(shape, np.uint8)
    order = sorted(range(n), key=lambda i: -area(masks[i]))
    slot = {i: k % 127 for k, i in enumerate(order)}  # 127 colours: fill k + 1, edge k + 128
    for i in order:
        idx[get(i)] = slot[i] + 1
    for i in order:
        idx[outline(get(i))] = slot[i] + 128
    pal = np.zeros((256, 3), np.uint8)
    cols = np.asarray(colors, np.uint8)[order][:127]
    pal[1:1 + len(cols)] = cols
    pal[128:128 + len(cols)] = cols
    alphas = bytes([0] + [alpha] * 127 + [255] * 128)
    img = _pil().frombytes("P", idx.shape[::-1], idx.tobytes())
    img.putpalette(pal.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=alphas, compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def size_text(n: int) -> str:
    """A byte count for a message: MB, or bytes when small."""
    return f"{n / 2**20:.1f} MB" if n >= 2**17 else f"{n} bytes"


def _pil():
    from PIL import Image
    return Image


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`; elsewhere
    nothing). `import evit_jax` keeps freed XLA buffers mapped for speed
    (`evit_jax.malloc`), and every worker thread's arena would then keep the peak of its own
    calls: in a long-running server that is memory no session holds. Called after each
    upload's encode (which also returns what evicted sessions freed) and each
    segment-everything run: a few milliseconds."""
    global _libc
    if _libc is None:
        try:
            import ctypes
            lib = ctypes.CDLL(None)
            _libc = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc: Any = None


def compact_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """An uncompressed RLE with its counts as uint32 (4 bytes a run instead of a Python
    int in a list); `amg_utils` reads either."""
    return {"size": list(rle["size"]), "counts": np.asarray(rle["counts"], np.uint32)}


@dataclass
class Result:
    """The masks of the last prompt or generator run (compact RLEs: a few KB each) and the
    image they belong to (its name and `[H, W]`)."""

    kind: str  # "prompt" | "everything"
    rles: list[dict[str, Any]]
    scores: list[float]
    name: str
    size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(r["counts"].nbytes + 64 for r in self.rles)

    def ids(self, index: int | None) -> list[int]:
        """The masks a download asks for: all, or `index` (404 if there is none)."""
        if index is not None and not 0 <= index < len(self.rles):
            raise AppError(404, f"no mask {index}: the last result has {len(self.rles)}")
        return list(range(len(self.rles))) if index is None else [index]


@dataclass
class Job:
    """A "segment everything" run: progress in clicks, cancelled by a new upload."""

    total: int
    state: str = "queued"  # queued | running | done | error | cancelled
    done: int = 0
    error: str = ""
    png: str = ""
    count: int = 0
    seconds: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def live(self) -> bool:
        return self.state in ("queued", "running")

    def view(self) -> dict[str, Any]:
        out = {"state": self.state, "done": self.done, "total": self.total,
               "masks": self.count, "seconds": round(self.seconds, 2)}
        if self.state == "error":
            out["error"] = self.error
        if self.state == "done":
            out["png"] = self.png
        return out


class _Cancelled(Exception):
    pass


class _Encoded(SamPredictor):
    """A view of a session's predictor for the mask generator: `set_image` of the full image
    keeps the cached embedding instead of encoding again, and `reset_image` keeps it too
    (the app runs the generator without crops, so it only ever sees the full image)."""

    def __init__(self, src: SamPredictor):
        self.__dict__.update(src.__dict__)  # not super().__init__: that resets the state

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if tuple(image.shape[:2]) != self.original_size:
            raise RuntimeError("the app's generator runs without crops")

    def reset_image(self) -> None:
        pass


class _SessionGenerator(SamAutomaticMaskGenerator):
    """The mask generator on a session's embedding, reporting progress per batch of clicks."""

    def __init__(self, predictor: SamPredictor, job: Job, **kwargs: Any):
        super().__init__(predictor.model, predictor.variables, crop_n_layers=0,
                         output_mode="uncompressed_rle", **kwargs)
        self.predictor = _Encoded(predictor)
        self.job = job

    def _process_batch(self, points: np.ndarray, *args: Any) -> None:
        if self.job.cancel.is_set():
            raise _Cancelled
        super()._process_batch(points, *args)
        self.job.done += len(points)


@dataclass(frozen=True)
class Encoded:
    """One upload: its file name, `[H, W]`, and the predictor holding its embedding
    `[1, 64, 64, 256]` (`nbytes`: what that keeps in memory). Replaced whole by the next
    upload, never changed, so a request that took it sees one consistent image."""

    name: str
    size: tuple[int, int]
    predictor: SamPredictor
    nbytes: int

    def shape_only_image(self) -> np.ndarray:
        """A uint8 `[H, W, 3]` that takes no memory (one pixel, broadcast): the generator
        reads only the image's shape, the embedding is the predictor's."""
        return np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (*self.size, 3))


@dataclass
class Session:
    id: str
    current: Encoded | None = None
    result: Result | None = None
    job: Job | None = None

    def require(self) -> Encoded:
        cur = self.current
        if cur is None:
            raise AppError(409, "no image in this session yet: open one first")
        return cur

    @property
    def nbytes(self) -> int:
        """The memory this session holds: embedding, maps, last result, overlay PNG."""
        cur, result, job = self.current, self.result, self.job
        return ((cur.nbytes if cur else 0) + (result.nbytes if result else 0)
                + (len(job.png) if job else 0))


# ----------------------------------------------------------------------------- the app
def check_limits(**limits: float) -> None:
    """One-line errors for limits below 1, named as the CLI's flags (`max_sessions` ->
    `--max-sessions`)."""
    for key, value in limits.items():
        if value < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {value:g}")


class SamApp:
    """The state behind the endpoints: model, sessions, queues. `create_app` wraps it.

    Args:
      model, variables: an EfficientViT-SAM model and its variables.
      max_sessions: sessions kept (LRU); each holds a 4 MiB embedding and its last result.
      session_memory_mb: the most memory the sessions together hold (LRU, as `max_sessions`).
      max_upload_bytes, max_pixels: uploads above these are refused (413).
      max_queued_uploads: uploads waiting to be encoded; more are refused (429).
      max_queued_everything: "segment everything" runs queued or running; more are refused
        (429).
      upload_timeout_s: an upload not received whole within this is refused (408).
      prompt_workers: prompts and downloads computed at once (default: the cores, 2..8).
      points_per_side: the default grid of "segment everything".
      generator: more `SamAutomaticMaskGenerator` arguments (e.g. `pred_iou_thresh`).
    """

    def __init__(self, model: Any, variables: Any, max_sessions: int = 64,
                 session_memory_mb: float = 1024, max_upload_bytes: int = 20 << 20,
                 max_pixels: int = 16_000_000, max_queued_uploads: int = 32,
                 max_queued_everything: int = 4, upload_timeout_s: float = 60.0,
                 prompt_workers: int = 0, points_per_side: int = 16,
                 generator: dict[str, Any] | None = None):
        import jax
        check_limits(max_sessions=max_sessions, session_memory_mb=session_memory_mb,
                     max_queued_uploads=max_queued_uploads, upload_timeout=upload_timeout_s)
        self.model = model
        self.variables = jax.device_put(variables)
        self.max_sessions = max_sessions
        self.session_memory_bytes = int(session_memory_mb * 2**20)
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.max_queued_uploads = max_queued_uploads
        self.max_queued_everything = max_queued_everything
        self.upload_timeout_s = upload_timeout_s
        # More decoder calls at once than cores only add memory (each has its working set
        # and full-size masks) and latency spread; the rest wait their turn (`create_app`).
        self.prompt_workers = prompt_workers or min(8, max(2, os.cpu_count() or 2))
        self.points_per_side = points_per_side
        self.generator = dict(generator or {})
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.lock = threading.Lock()  # guards `sessions` and the counters below
        self.uploads_queued = 0
        self.everything_pending = 0
        self.evicted = 0
        # Fixed threads for each kind of work: a thread's C-heap arena keeps the peak of its
        # own calls (`release_free_memory`), so a few fixed threads bound that, where a
        # rotating pool would spread it over many arenas.
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix="sam-encode")
        self.workers = ThreadPoolExecutor(self.prompt_workers, thread_name_prefix="sam-prompt")
        self.generator_pool = ThreadPoolExecutor(1, thread_name_prefix="sam-everything")

    # ------------------------------------------------------------------- sessions (LRU)
    def session(self, sid: str | None) -> Session:
        """The live session `sid` (now the most recently used); 404 for any other string."""
        with self.lock:
            s = self.sessions.get(sid or "")
            if s is None:
                raise AppError(404, "unknown or expired session: open the image again")
            self.sessions.move_to_end(s.id)
            return s

    def new_session(self) -> Session:
        """An empty session (the next upload fills it); the LRU is trimmed."""
        with self.lock:
            s = Session(secrets.token_urlsafe(16))
            self.sessions[s.id] = s
            self._trim(keep=s)
            return s

    def install(self, sid: str | None, encoded: Encoded) -> Session:
        """Put an encoded upload into session `sid` (a new one if `sid` is not live), cancel
        that session's running job, and drop least recently used sessions beyond the limits.
        """
        with self.lock:
            s = self.sessions.get(sid or "")
            if s is None:
                s = Session(secrets.token_urlsafe(16))
                self.sessions[s.id] = s
            self.sessions.move_to_end(s.id)
            if s.job is not None:
                s.job.cancel.set()
            # One assignment each: a prompt running now keeps the embedding it started with.
            s.current, s.result, s.job = encoded, None, None
            self._trim(keep=s)
            return s

    def _trim(self, keep: Session | None = None) -> None:
        """Drop least recently used sessions while over `max_sessions` or the memory budget
        (`lock` held); sessions with a queued or running "segment everything" stay."""
        total = sum(s.nbytes for s in self.sessions.values())
        for sid in list(self.sessions):
            if (len(self.sessions) <= self.max_sessions
                    and total <= self.session_memory_bytes):
                return
            s = self.sessions[sid]
            if s is keep or (s.job is not None and s.job.live):
                continue
            total -= s.nbytes
            del self.sessions[sid]
            self.evicted += 1  # its memory goes back with the next encode's release

    def stats(self) -> dict[str, Any]:
        """Counts for `/api/status` (no ids)."""
        with self.lock:
            held = sum(s.nbytes for s in self.sessions.values())
            return {"sessions": len(self.sessions), "max_sessions": self.max_sessions,
                    "session_mb": round(held / 2**20, 2),
                    "session_memory_mb": round(self.session_memory_bytes / 2**20, 2),
                    "evicted": self.evicted, "uploads_queued": self.uploads_queued,
                    "everything_pending": self.everything_pending}

    def generator_args(self, size: tuple[int, int]) -> dict[str, Any]:
        """The generator's arguments for an `(H, W)` image: `generator`, and unless it sets
        one, the largest `points_per_batch` (a power of two, at most 64, segment-anything's)
        whose decoder rows and full-size masks fit `EVERYTHING_BATCH_BYTES` (on a 64x64
        grid: 8 up to 0.4 Mpx, 4 up to 1.5 Mpx, 2 up to 3.8 Mpx, then 1)."""
        grid = self.model.low_res_size // 4
        per_point = (DECODER_ROW_BYTES * (grid / 64) ** 2
                     + EVERYTHING_BYTES_PER_PIXEL * 3 * size[0] * size[1])  # 3 masks a click
        fit = int(max(1, min(64, EVERYTHING_BATCH_BYTES // per_point)))
        return {"points_per_batch": 1 << (fit.bit_length() - 1), **self.generator}

    # ------------------------------------------------------------------------- warm-up
    def warm(self, prompts: Sequence[tuple[int, bool]] | None = None,
             everything: bool = True, image_size: tuple[int, int] = (64, 64)) -> float:
        """Compile before the first user: the encoder, the decoder for the prompt shapes of
        `prompts` ((clicks, multimask); default every token bucket up to `MAX_CLICKS`
        clicks with multimask, the page's default, and 1 and 3 clicks without) and the
        generator's batch; the upscaling to the original size for `image_size` (H, W) (other
        sizes compile theirs in well under a second). Returns seconds."""
        if prompts is None:
            prompts = [(n, True) for n in (1, 3, 7, 15, MAX_CLICKS)] + [(1, False),
                                                                         (3, False)]
        t0 = time.perf_counter()
        image = np.zeros((*image_size, 3), np.uint8)
        p = SamPredictor(self.model, self.variables)
        p.set_image(image)
        for clicks, multimask in prompts:
            p.predict(np.full((clicks, 2), 8.0), np.ones(clicks), multimask_output=multimask)
        if everything:
            job = Job(total=0)
            gen = _SessionGenerator(p, job, points_per_side=self.points_per_side,
                                    **self.generator_args(image_size))
            gen.generate(image)
        return time.perf_counter() - t0

    # ------------------------------------------------------------------------- upload
    def admit_upload(self) -> None:
        """Count an upload in, or refuse it (429) when `max_queued_uploads` already wait;
        `upload_done` counts it out."""
        with self.lock:
            if self.uploads_queued >= self.max_queued_uploads:
                wait = max(1, round(self.uploads_queued * 0.5))
                raise AppError(429, f"{self.uploads_queued} images are waiting to be encoded: "
                                    f"try again in {wait} s", {"Retry-After": str(wait)})
            self.uploads_queued += 1

    def upload_done(self) -> None:
        with self.lock:
            self.uploads_queued -= 1

    def process_upload(self, data: bytes, name: str) -> tuple[Encoded, str, float, float]:
        """Decode and encode one upload (the `encoder` worker runs these one at a time):
        (the encoded image, a notice, decode seconds, encode seconds)."""
        t0 = time.perf_counter()
        image, notice = self.decode_upload(data, name)
        t1 = time.perf_counter()
        encoded = self.encode(image, name)
        t2 = time.perf_counter()
        del image
        release_free_memory()  # the decode's and the encode's buffers
        return encoded, notice, t1 - t0, t2 - t1

    def decode_upload(self, data: bytes, name: str) -> tuple[np.ndarray, str]:
        """Upload bytes -> uint8 RGB `[H, W, 3]` and a notice ("" or what was converted),
        through `evit-segment`'s reader (16-bit scaling, decompression-bomb guard)."""
        if not data:
            raise AppError(422, f"{name}: the file is empty")
        if len(data) > self.max_upload_bytes:
            raise AppError(413, f"{name}: {size_text(len(data))} is more than this app accepts "
                                f"({size_text(self.max_upload_bytes)})")
        Image = _pil()
        with tempfile.TemporaryDirectory(prefix="evit-sam-app-") as d:
            path = Path(d) / "upload"
            path.write_bytes(data)
            notice = ""
            try:  # the header only: refuse big images before decoding them
                with Image.open(path) as im:
                    (w, h), mode = im.size, im.mode
                if w * h > self.max_pixels:
                    raise AppError(413, f"{name}: {w}x{h} pixels is more than this app "
                                        f"accepts ({self.max_pixels / 1e6:.0f} Mpx); "
                                        "downscale the image")
                if mode.startswith("I;16") or mode == "I":
                    notice = f"{name}: {mode} pixels (16-bit grey) scaled to 8 bits"
            except AppError:
                raise
            except Exception:  # not readable: the reader below says why, in its words
                pass
            try:
                image = read_image(path)
            except UserError as e:
                msg = one_line(e).replace(str(path), name)
                status = (415 if "not an image" in msg else  # the reader's words, tested
                          413 if "too many pixels" in msg else 422)
                raise AppError(status, msg) from None
        return image, notice

    def encode(self, image: np.ndarray, name: str) -> Encoded:
        """Encode `image` (uint8 `[H, W, 3]`) -> `Encoded`; the image is not kept."""
        p = SamPredictor(self.model, self.variables)
        p.set_image(image)
        p.features.block_until_ready()
        held = p.features.nbytes + sum(m.nbytes for m in p._maps)
        return Encoded(name, tuple(image.shape[:2]), p, int(held))

    # ------------------------------------------------------------------------- prompt
    def prompt(self, s: Session, points: list[list[float]], labels: list[int],
               box: list[float] | None, multimask: bool) -> dict[str, Any]:
        """One decoder call for one prompt; the masks as overlay PNGs with their IoUs."""
        cur = s.require()
        p = cur.predictor
        if not points and box is None:
            raise AppError(422, "give at least one click or a box")
        if any(len(xy) != 2 for xy in points):
            raise AppError(422, "points must be [x, y] pairs in image pixels")
        if len(points) > MAX_CLICKS:
            raise AppError(422, f"{len(points)} clicks: at most {MAX_CLICKS} per prompt")
        t0 = time.perf_counter()
        try:
            masks, iou, _ = p.predict(np.asarray(points, np.float64) if points else None,
                                      np.asarray(labels) if points else None,
                                      None if box is None else np.asarray(box, np.float64),
                                      multimask_output=multimask)
        except UserError as e:  # prompts outside the image, bad labels, ... (a bug: a 500)
            raise AppError(422, one_line(e)) from None
        decode_ms = 1e3 * (time.perf_counter() - t0)
        if s.current is cur:  # not if a new upload replaced the image meanwhile
            s.result = Result("prompt", [compact_rle(U.mask_to_rle(m)) for m in masks],
                              [float(v) for v in iou], cur.name, p.original_size)
        color = np.array([PROMPT_RGB])
        return {"masks": [{"png": mask_png(m[None], color), "score": float(v),
                           "area": int(m.sum())} for m, v in zip(masks, iou)],
                "best": int(np.argmax(iou)), "decode_ms": round(decode_ms, 1),
                "points": np.asarray(points, float).tolist(), "box": box}

    # --------------------------------------------------------------------- everything
    def start_everything(self, s: Session, points_per_side: int | None) -> Job:
        cur = s.require()
        n = points_per_side or self.points_per_side
        if not 2 <= n <= 64:
            raise AppError(422, f"points_per_side must be in 2..64, got {n}")
        with self.lock:
            if s.job is not None and s.job.live:
                return s.job
            if self.everything_pending >= self.max_queued_everything:
                raise AppError(429, f"{self.everything_pending} segment-everything runs are "
                                    "queued or running: try again in a minute",
                               {"Retry-After": "30"})
            self.everything_pending += 1
            job = Job(total=n * n)
            s.job = job
        self.generator_pool.submit(self._everything, s, cur, job, n)  # one at a time
        return job

    def _everything(self, s: Session, cur: Encoded, job: Job, n: int) -> None:
        image = cur.shape_only_image()
        try:
            t0 = time.perf_counter()
            job.state = "running"
            try:
                gen = _SessionGenerator(cur.predictor, job, points_per_side=n,
                                        **self.generator_args(cur.size))
                records = gen.generate(image)
                rles = [compact_rle(r["segmentation"]) for r in records]
                job.png = mask_png(rles, palette(len(rles))) if rles else ""
                job.count = len(rles)
                if s.job is job:  # not replaced by a new upload meanwhile
                    s.result = Result("everything", rles,
                                      [float(r["predicted_iou"]) for r in records],
                                      cur.name, cur.size)
                job.state = "done"
            except _Cancelled:
                job.state = "cancelled"
            except Exception as e:  # shown in the page; the server goes on
                job.error, job.state = one_line(e), "error"
            job.seconds = time.perf_counter() - t0
        finally:
            with self.lock:
                self.everything_pending -= 1
                self._trim()  # its result counts now
            release_free_memory()  # its batches' full-size masks

    # ---------------------------------------------------------------------- downloads
    def download_png(self, s: Session, index: int | None) -> bytes:
        """Mask `index` as a 0/255 PNG, or all of them as a label map (0 none, i + 1 mask
        i); one full-size mask decoded at a time."""
        r = self._result(s)
        ids = r.ids(index)
        h, w = r.size
        if index is not None:
            out = U.rle_to_mask(r.rles[index]).astype(np.uint8) * 255
        else:  # label map: larger masks first so smaller ones stay visible
            out = np.zeros((h, w), np.uint16 if len(ids) > 255 else np.uint8)
            for i in sorted(ids, key=lambda i: -U.area_from_rle(r.rles[i])):
                out[U.rle_to_mask(r.rles[i])] = i + 1
        buf = io.BytesIO()
        _pil().fromarray(out).save(buf, format="PNG")
        return buf.getvalue()

    def download_json(self, s: Session, index: int | None) -> dict[str, Any]:
        r = self._result(s)
        h, w = r.size
        anns = []
        for k, i in enumerate(r.ids(index)):
            rle = r.rles[i]
            m = U.rle_to_mask(rle)
            ys, xs = np.nonzero(m)
            bbox = ([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                     int(ys.max() - ys.min() + 1)] if xs.size else [0, 0, 0, 0])
            anns.append({"id": k + 1, "image_id": 1, "segmentation": U.coco_encode_rle(rle),
                         "area": U.area_from_rle(rle), "bbox": bbox,
                         "score": r.scores[i], "index": i})
        return {"images": [{"id": 1, "file_name": r.name, "width": w, "height": h}],
                "annotations": anns, "source": r.kind}

    @staticmethod
    def _result(s: Session) -> Result:
        if s.result is None:
            raise AppError(404, "no masks yet: click the image or segment everything first")
        return s.result
