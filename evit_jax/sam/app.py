"""`evit-sam-app`: a browser demo of EfficientViT-SAM (FastAPI + uvicorn, one static page).

  evit-sam-app --model efficientvit-sam-l0 --weights DIR [--host 127.0.0.1] [--port 8000]

Endpoints (JSON unless said otherwise; `session` is the id an upload returns):

  GET  /                     the page (static/index.html, plain JavaScript, no build step)
  POST /api/upload           multipart `file` (+ `session` to replace that session's image):
                             decode, encode once, cache the embedding ->
                             {session, width, height, decode_ms, encode_ms, notice}
  POST /api/prompt           {session, points [[x, y], ...], labels [1 | 0, ...],
                             box [x0, y0, x1, y1] | null, multimask} -> one compiled decoder
                             call -> {masks: [{png, score}], best, decode_ms}
  POST /api/everything       {session, points_per_side?}: start the mask generator (202)
  GET  /api/everything       ?session=: {state, done, total, masks, png (when done)}
  GET  /api/masks.png        ?session=&index=: mask `index` of the last result as a 0/255 PNG,
                             or without index all of them as a label map (0 = none, i + 1)
  GET  /api/masks.json       ?session=&index=: the same masks as COCO RLE annotations
  GET  /api/status           {sessions, max_sessions, session_mb, session_memory_mb, evicted,
                             uploads_queued, everything_pending}: load, no ids

Errors are HTTP 4xx with a one-line `detail`, which the page shows: 404 an unknown or
expired session (the page then opens its image again by itself), 408 an upload not received
within --upload-timeout, 413 too large, 415 / 422 bad input, 429 busy (with Retry-After;
the page waits and retries).

Concurrency and memory (the details in app_state.py): every model call runs in a worker
thread, so the event loop keeps serving during an encode; uploads are encoded one at a time
in arrival order, prompts take no lock, "segment everything" runs in its own thread, and
sessions live in an LRU bounded in count (--max-sessions) and bytes (--session-memory-mb).
A slow upload holds no thread: it is read by the event loop, up to --upload-timeout.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request,
# the pydantic bodies), which are local to create_app.
import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from evit_jax.cli import UserError, allow_negative_numbers, run
from evit_jax.sam.app_state import AppError, SamApp, check_limits, size_text

PROG = "evit-sam-app"
STATIC = Path(__file__).with_name("static")


# ------------------------------------------------------------------------ ASGI wiring
def create_app(sam: SamApp):
    """The FastAPI application over `sam` (serve with uvicorn)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from pydantic import BaseModel
    from starlette.requests import ClientDisconnect

    app = FastAPI(title="EfficientViT-SAM", docs_url=None, redoc_url=None, openapi_url=None)
    async def in_worker(fn, *args):
        """Prompts and downloads: on the app's `prompt_workers` threads; the others wait in
        its queue, holding no thread."""
        return await asyncio.wrap_future(sam.workers.submit(fn, *args))

    @app.exception_handler(AppError)
    async def _app_error(request: Request, e: AppError):
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(v) for v in first.get("loc", ()) if v != "body")
        return JSONResponse({"detail": f"bad request: {where}: {first.get('msg', '')}"},
                            status_code=422)

    class PromptIn(BaseModel):
        session: str
        points: list[list[float]] = []
        labels: list[int] = []
        box: list[float] | None = None
        multimask: bool = True

    class EverythingIn(BaseModel):
        session: str
        points_per_side: int | None = None

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.post("/api/upload")
    async def upload(request: Request):
        size = request.headers.get("content-length", "")
        if not size.isdigit():
            raise AppError(411, "send the upload with a Content-Length")
        if int(size) > sam.max_upload_bytes + (64 << 10):  # before reading any of it
            raise AppError(413, f"the upload ({size_text(int(size))}) is more than this app "
                                f"accepts ({size_text(sam.max_upload_bytes)})")
        try:  # read by the event loop: a slow sender holds no thread, only this coroutine
            form = await asyncio.wait_for(request.form(max_files=1, max_fields=2),
                                          sam.upload_timeout_s)
            up = form.get("file")
            if up is None or isinstance(up, str):
                raise AppError(422, "no file in the upload (a multipart field named 'file')")
            data = await up.read()
        except asyncio.TimeoutError:
            raise AppError(408, f"the upload did not arrive within {sam.upload_timeout_s:g} s; "
                                "try again on a faster connection") from None
        except ClientDisconnect:  # the sender went away mid-upload: nobody to answer
            return Response(status_code=400)
        name = os.path.basename(up.filename or "upload")
        sid = form.get("session")
        sam.admit_upload()  # 429 when too many wait
        try:
            encoded, notice, decode_s, encode_s = await asyncio.wrap_future(
                sam.encoder.submit(sam.process_upload, data, name))
        finally:
            sam.upload_done()
        s = sam.install(sid if isinstance(sid, str) else None, encoded)
        h, w = encoded.size
        return {"session": s.id, "width": w, "height": h, "name": name, "notice": notice,
                "decode_ms": round(1e3 * decode_s, 1), "encode_ms": round(1e3 * encode_s, 1)}

    @app.post("/api/prompt")
    async def prompt(body: PromptIn):
        s = sam.session(body.session)
        if len(body.labels) != len(body.points):
            raise AppError(422, f"{len(body.points)} points but {len(body.labels)} labels")
        return await in_worker(sam.prompt, s, body.points, body.labels, body.box,
                               body.multimask)

    @app.post("/api/everything", status_code=202)
    async def everything(body: EverythingIn):
        return sam.start_everything(sam.session(body.session), body.points_per_side).view()

    @app.get("/api/everything")
    async def everything_progress(session: str):
        s = sam.session(session)
        if s.job is None:
            raise AppError(404, "no segment-everything run in this session")
        return s.job.view()

    @app.get("/api/status")
    async def status():
        return sam.stats()

    @app.get("/api/masks.png")
    async def masks_png(session: str, index: int | None = None):
        data = await in_worker(sam.download_png, sam.session(session), index)
        name = "masks.png" if index is None else f"mask{index}.png"
        return Response(data, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/masks.json")
    async def masks_json(session: str, index: int | None = None):
        data = await in_worker(sam.download_json, sam.session(session), index)
        return Response(json.dumps(data), media_type="application/json", headers={
            "Content-Disposition": 'attachment; filename="masks.json"'})

    return app


# --------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="A browser demo of EfficientViT-SAM: "
                                "open an image, click or drag a box, see the mask.")
    p.add_argument("--model", required=True, help="zoo name, e.g. efficientvit-sam-l0")
    p.add_argument("--weights", required=True,
                   help="variables directory written by evit-convert, or the authors' .pt file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-sessions", type=int, default=64,
                   help="images (with embeddings, 4 MiB each) kept at once, least recently "
                        "used dropped (default 64)")
    p.add_argument("--session-memory-mb", type=float, default=1024,
                   help="the most memory all sessions together hold (embeddings, results), "
                        "least recently used dropped beyond it (default 1024)")
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest upload accepted")
    p.add_argument("--max-megapixels", type=float, default=16, help="largest image accepted")
    p.add_argument("--max-queued-uploads", type=int, default=32,
                   help="uploads waiting to be encoded; more get 429 (busy, retry)")
    p.add_argument("--upload-timeout", type=float, default=60,
                   help="seconds an upload may take to arrive (then 408)")
    p.add_argument("--prompt-workers", type=int, default=0,
                   help="prompts and downloads computed at once, the others wait their turn "
                        "(default: the CPU cores, 2..8)")
    p.add_argument("--points-per-side", type=int, default=16,
                   help="segment everything: clicks per side of the grid")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88,
                   help="segment everything: keep masks with a predicted IoU above this")
    p.add_argument("--stability-score-thresh", type=float, default=0.95,
                   help="segment everything: keep masks at least this stable")
    return allow_negative_numbers(p)


def load(args: argparse.Namespace) -> SamApp:
    """The model and weights named on the command line, as a SamApp."""
    import evit_jax

    if evit_jax.model_info(args.model).task != "sam":  # (an unknown name: its own error)
        raise UserError(f"{args.model} is not a SAM model; see evit_jax.list_models('*sam*')")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give 1..65535")
    check_limits(max_sessions=args.max_sessions, session_memory_mb=args.session_memory_mb,
                 max_queued_uploads=args.max_queued_uploads, upload_timeout=args.upload_timeout)
    if args.prompt_workers < 0:
        raise UserError(f"--prompt-workers must be at least 1 (0: the cores), got "
                        f"{args.prompt_workers}")
    model = evit_jax.create_model(args.model)
    variables = evit_jax.load_variables(args.weights, model=args.model)
    return SamApp(model, variables, max_sessions=args.max_sessions,
                  session_memory_mb=args.session_memory_mb,
                  max_upload_bytes=int(args.max_upload_mb * 2**20),
                  max_pixels=int(args.max_megapixels * 1e6),
                  max_queued_uploads=args.max_queued_uploads,
                  upload_timeout_s=args.upload_timeout, prompt_workers=args.prompt_workers,
                  points_per_side=args.points_per_side,
                  generator={"pred_iou_thresh": args.pred_iou_thresh,
                             "stability_score_thresh": args.stability_score_thresh})


APP_INSTALL = "pip install 'evit-jax[app]'"


def require_app_dependencies() -> None:
    """A one-line error naming the extra when a package of the app is missing: checked
    before the model loads and compiles (~20 s), not when the server starts."""
    import importlib.util

    def have(*modules: str) -> bool:  # any of the names (python-multipart renamed its module)
        return any(importlib.util.find_spec(m) is not None for m in modules)

    missing = [pkg for pkg, modules in (("fastapi", ("fastapi",)), ("uvicorn", ("uvicorn",)),
                                        ("python-multipart", ("python_multipart", "multipart")))
               if not have(*modules)]
    if missing:
        raise UserError(f"the app needs {', '.join(missing)}, not installed here: "
                        f"{APP_INSTALL}")


def _main(args: argparse.Namespace) -> int:
    require_app_dependencies()
    import uvicorn

    t0 = time.perf_counter()
    sam = load(args)
    print(f"{PROG}: loaded {args.model} in {time.perf_counter() - t0:.1f} s; compiling ...",
          flush=True)
    print(f"{PROG}: compiled the encoder, decoder and generator in {sam.warm():.1f} s",
          flush=True)
    # uvicorn says "Uvicorn running on http://HOST:PORT" once it listens; no access log.
    uvicorn.run(create_app(sam), host=args.host, port=args.port, log_level="info",
                access_log=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (`evit_jax.cli.run`: 0 ok, 1 user error, 2 bad usage)."""
    return run(PROG, build_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
