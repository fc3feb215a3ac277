"""`evit-sam-app`: the API (FastAPI's TestClient) and the page in a real headless Chromium.

The weights: the SAM fixture's random ones (`synth_case`), with two changes to the prompt
decoder so that a click on a bright disc gives a mask of the disc, as a trained model
would:
- the upscaler's two transposed convolutions share one kernel between their four
  sub-pixels (a nearest-neighbour upsampling followed by a 1x1 conv), so every output pixel
  reads its image token the same way (random per-sub-pixel kernels scramble the image
  tokens into a checkerboard that no mask readout can separate);
- each mask token's hypernetwork ends in zero weights and a bias fitted (logistic
  regression, 32 numbers) to read "disc" out of the upscaled features of this image.
The mask then does not depend on where the click is, so the click's position is checked
on its own: the server must receive the clicked pixel (the page maps CSS pixels back to
image pixels) and must give exactly what `SamPredictor` gives for that prompt.
"""

import base64
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import evit_jax
from evit_jax.models.sam.mask_decoder import unshuffled_to_image
from evit_jax.sam import amg_utils as U
from evit_jax.sam import prompts as P
from evit_jax.sam.predictor import SamPredictor
from tests.helpers import synth_case

pytest.importorskip("fastapi", reason="the app's extra is not installed: pip install -e '.[app]'")
from fastapi.testclient import TestClient  # noqa: E402

from evit_jax.sam.app import create_app, main  # noqa: E402
from evit_jax.sam.app_state import SamApp  # noqa: E402

NAME = "efficientvit-sam-l0"
H, W = 120, 160
CX, CY, R = 52.0, 70.0, 28.0  # off-centre: swapped x / y would land outside the disc
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def disc_image(f: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc on a dark background, `f` times the size: uint8 `[fH, fW, 3]` and the
    disc's mask `[fH, fW]`."""
    yy, xx = np.mgrid[:f * H, :f * W] / f
    disc = (xx + 0.5 / f - CX) ** 2 + (yy + 0.5 / f - CY) ** 2 < R * R
    img = np.full((f * H, f * W, 3), (25, 30, 40), np.uint8)
    img[disc] = (235, 235, 225)
    return img, disc


def png_bytes(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", **kw)
    return buf.getvalue()


def disc_weights(model, image: np.ndarray, disc: np.ndarray) -> dict:
    """The fixture's random variables with the decoder changes of the module docstring."""
    sd, _ = synth_case(NAME)
    v = evit_jax.convert_state_dict(NAME, sd)
    md = v["params"]["mask_decoder"]
    for name in ("output_upscaling_0", "output_upscaling_3"):
        k = np.asarray(md[name]["kernel"])  # [2, 2, out, in]: one kernel per sub-pixel
        md[name]["kernel"] = jnp.asarray(np.broadcast_to(k[:1, :1], k.shape).copy())
    p = SamPredictor(model, v)
    p.set_image(image)
    # The upscaled features `[256, 256, 32]` (low-res frame) for one click in the disc.
    c = p.transform.apply_coords(np.array([[[CX, CY]]]), p.original_size)
    tc, tl = P.pad_tokens(*P.prompt_tokens(c, np.ones((1, 1), np.int32), None, 1), 2, 1)
    capture = jax.jit(lambda *a: p.decoder.apply(*a, None, None, capture_intermediates=True,
                                                 mutable=["intermediates"])[1])  # eager: 3x
    state = capture(p.decoder_variables, p.features, tc, tl)
    up = unshuffled_to_image(  # [1, 256, 256, 32]; the decoder keeps it unshuffled
        state["intermediates"]["mask_decoder"]["output_upscaling_3"]["__call__"][0])
    x = jax.nn.gelu(up[0, ::2, ::2], approximate=False).reshape(-1, up.shape[-1])
    # Targets at those low-res pixels' centres, in original pixels; the padding is ignored.
    o = (8 * np.arange(128) + 4) * max(H, W) / 1024
    valid = (o[:, None] < H) & (o[None, :] < W)
    inside = (o[None, :] - CX) ** 2 + (o[:, None] - CY) ** 2 < R * R
    y, wgt = jnp.asarray(inside.ravel(), jnp.float32), jnp.asarray(valid.ravel(), jnp.float32)

    def loss(b):
        bce = optax.sigmoid_binary_cross_entropy(x @ b, y)
        return (bce * wgt).sum() / wgt.sum()

    opt = optax.adam(0.05)

    @jax.jit
    def fit(b):  # 300 Adam steps in one compiled loop
        def step(_, carry):
            b, st = carry
            u, st = opt.update(jax.grad(loss)(b), st)
            return optax.apply_updates(b, u), st
        return jax.lax.fori_loop(0, 300, step, (b, opt.init(b)))[0]

    b = fit(jnp.zeros(x.shape[-1]))
    for t in range(4):
        last = md[f"output_hypernetworks_mlps_{t}"]["layers_2"]
        last["kernel"] = jnp.zeros_like(last["kernel"])
        last["bias"] = b
    return v


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    model = evit_jax.create_model(NAME)
    image, disc = disc_image()
    d = tmp_path_factory.mktemp("sam_app") / "weights"
    evit_jax.save_variables(disc_weights(model, image, disc), d, model=NAME)
    return d


@pytest.fixture(scope="module")
def sam(weights) -> SamApp:
    app = SamApp(evit_jax.create_model(NAME), evit_jax.load_variables(weights, model=NAME),
                 max_sessions=2, generator={"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                                            "points_per_batch": 1})
    # The shape the tests click with: one click (or a box), multimask; the generator is run
    # one click per batch, the same shape.
    app.warm(prompts=((1, True),), everything=False)
    return app


@pytest.fixture(scope="module")
def client(sam):
    with TestClient(create_app(sam)) as c:
        yield c


@pytest.fixture(scope="module")
def disc_session(client) -> str:
    """A session holding the disc image (one encode for the tests that only prompt)."""
    r = upload(client, png_bytes(disc_image()[0]))
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["width"], d["height"], d["notice"]) == (W, H, "") and d["encode_ms"] > 0
    return d["session"]


def upload(client, data: bytes, name: str = "disc.png", session: str | None = None):
    return client.post("/api/upload", files={"file": (name, data, "image/png")},
                       data={"session": session} if session else None)


def mask_from_png(b64: str) -> np.ndarray:
    """The page's overlay PNG (palette: 0 transparent) -> boolean mask."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))) > 0


# ------------------------------------------------------------------------------- API
def test_prompt_matches_predictor_and_covers_the_disc(client, sam, disc_session):
    image, disc = disc_image()
    d = {"session": disc_session}
    click = [[CX + 5.5, CY - 7.25]]
    r = client.post("/api/prompt", json={"session": d["session"], "points": click,
                                         "labels": [1], "multimask": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["masks"]) == 3 and out["points"] == click
    # Exactly the predictor's answer for the same prompt (coordinates passed unchanged).
    p = sam.session(disc_session).current.predictor
    ref, iou, _ = p.predict(np.array(click), np.array([1]), multimask_output=True)
    np.testing.assert_allclose([m["score"] for m in out["masks"]], iou, rtol=1e-6)
    for m, want in zip(out["masks"], ref):
        assert (mask_from_png(m["png"]) == want).all() and m["area"] == int(want.sum())
    best = ref[out["best"]]
    assert out["best"] == int(np.argmax(iou))
    assert best[int(click[0][1]), int(click[0][0])]  # covers the click
    assert (best & disc).sum() / (best | disc).sum() > 0.8  # and is the disc

    # Downloads of the chosen candidate: a 0/255 PNG and COCO RLE, both the same mask.
    q = {"session": d["session"], "index": out["best"]}
    png = client.get("/api/masks.png", params=q)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert (np.asarray(Image.open(io.BytesIO(png.content))) == best * 255).all()
    js = client.get("/api/masks.json", params=q).json()
    (ann,) = js["annotations"]
    assert (U.coco_rle_to_mask(ann["segmentation"]) == best).all()
    assert ann["area"] == int(best.sum()) and js["images"][0]["width"] == W
    ys, xs = np.nonzero(best)
    assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]

    # A box: the same masks as the predictor's.
    body = {"session": d["session"], "box": [20.0, 38.0, 84.0, 102.0]}
    out = client.post("/api/prompt", json=body).json()
    ref, _, _ = p.predict(box=np.array(body["box"]))
    assert [(mask_from_png(m["png"]) == r).all() for m, r in zip(out["masks"], ref)] == [True] * 3


def test_segment_everything_reports_progress_and_downloads(client, sam, disc_session):
    _, disc = disc_image()
    sid = disc_session
    r = client.post("/api/everything", json={"session": sid, "points_per_side": 3})
    assert r.status_code == 202 and r.json()["total"] == 9
    seen, t0 = [], time.time()
    while (d := client.get("/api/everything", params={"session": sid}).json())["state"] in (
            "queued", "running"):
        seen.append(d["done"])
        assert time.time() - t0 < 120
        time.sleep(0.1)
    assert d["state"] == "done" and d["done"] == 9, d
    assert seen == sorted(seen)
    js = client.get("/api/masks.json", params={"session": sid}).json()
    assert js["source"] == "everything" and len(js["annotations"]) == d["masks"] > 0
    labels = np.asarray(Image.open(io.BytesIO(
        client.get("/api/masks.png", params={"session": sid}).content)))
    assert labels.shape == (H, W) and labels.max() == d["masks"]
    # Every click of the grid sees the same disc mask: they all dedup to the disc.
    m = U.coco_rle_to_mask(js["annotations"][0]["segmentation"])
    assert (m & disc).sum() / (m | disc).sum() > 0.8


def test_prompts_and_the_page_are_served_while_an_upload_waits_to_encode(client, sam,
                                                                         disc_session):
    """An upload waits for the encoder (one at a time, in arrival order); the event loop,
    the status and other sessions' prompts go on meanwhile."""
    image, _ = disc_image()
    done = {}
    gate = threading.Event()
    sam.encoder.submit(gate.wait)  # as if another user's encode were running
    try:
        th = threading.Thread(target=lambda: done.update(r=upload(client, png_bytes(image))))
        th.start()
        time.sleep(0.5)
        assert th.is_alive()  # the upload waits for the encoder
        assert client.get("/").status_code == 200
        assert client.get("/api/status").json()["uploads_queued"] == 1
        r = client.post("/api/prompt", json={"session": disc_session, "points": [[CX, CY]],
                                             "labels": [1]})
        assert r.status_code == 200 and len(r.json()["masks"]) == 3
        assert th.is_alive()
    finally:
        gate.set()
    th.join(120)
    assert done["r"].status_code == 200, done["r"].text
    assert client.get("/api/status").json()["uploads_queued"] == 0


def test_segment_everything_is_cancelled_between_batches(client, sam, disc_session):
    s = sam.session(disc_session)
    result = s.result
    job = sam.start_everything(s, 3)
    job.cancel.set()  # what a new upload to the session does
    t0 = time.time()
    while (d := client.get("/api/everything", params={"session": disc_session}).json())[
            "state"] in ("queued", "running"):
        assert time.time() - t0 < 60
        time.sleep(0.05)
    assert d["state"] == "cancelled" and d["done"] < 9 and s.result is result


def _sixteen_bit() -> bytes:
    a = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 3)
    im = Image.fromarray(a)  # mode I;16
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _bomb(side: int) -> bytes:
    """A grey PNG that says it is side x side pixels, in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def test_bad_uploads_get_one_line_messages(client, sam):
    image, _ = disc_image()
    good = png_bytes(image)
    cases = [
        (b"not an image at all", 415, "not an image file"),
        (good[:200], 422, "cannot decode the image"),
        (b"", 422, "the file is empty"),
    ]
    for data, status, text in cases:
        r = upload(client, data, "bad.png")
        assert r.status_code == status and text in r.json()["detail"], r.text
        assert "\n" not in r.json()["detail"] and "/tmp" not in r.json()["detail"]
    buf = io.BytesIO()
    Image.fromarray(np.ones((8, 8), np.float32)).save(buf, format="TIFF")
    r = upload(client, buf.getvalue(), "float.tif")
    assert r.status_code == 422 and "floating-point pixels" in r.json()["detail"]
    # 16-bit grey is scaled to 8 bits (evit-segment's reader) and said so in the page (the
    # upload's `notice`; called directly: the encode after it is tested above).
    image16, notice = sam.decode_upload(_sixteen_bit(), "deep.png")
    assert image16.shape == (H, W, 3) and image16.dtype == np.uint8 and image16.max() > 200
    assert "16-bit" in notice
    # Decompression bombs, refused from their headers before any decoding: 25 Mpx by the
    # app's limit (16 Mpx), 900 Mpx by the reader's (PIL's) bomb guard.
    r = upload(client, _bomb(5000), "big.png")
    assert r.status_code == 413 and "big.png: 5000x5000 pixels is more" in r.json()["detail"]
    r = upload(client, _bomb(30000), "bomb.png")
    assert r.status_code == 413 and "bomb.png: too many pixels to decode safely" in \
        r.json()["detail"], r.text
    old = sam.max_pixels, sam.max_upload_bytes
    try:
        sam.max_pixels = 100
        r = upload(client, good)
        assert r.status_code == 413 and "160x120 pixels" in r.json()["detail"]
        sam.max_pixels, sam.max_upload_bytes = old[0], 100
        r = upload(client, good)
        assert r.status_code == 413 and "more than this app accepts (100 bytes)" in \
            r.json()["detail"]
    finally:
        sam.max_pixels, sam.max_upload_bytes = old


def test_bad_prompts_and_sessions(client, sam, disc_session):
    sid = disc_session
    bad = [
        ({"points": [[500.0, 10.0]], "labels": [1]}, 422, "outside the 160x120"),
        ({"points": [[5.0, 5.0]], "labels": []}, 422, "1 points but 0 labels"),
        ({"points": [[5.0, 5.0]], "labels": [7]}, 422, "point_labels must be 1"),
        ({"box": [50.0, 50.0, 10.0, 10.0]}, 422, "x0 <= x1"),
        ({}, 422, "at least one click or a box"),
        ({"points": "x"}, 422, "bad request: points"),
        ({"points": [[1.0]], "labels": [1]}, 422, "[x, y] pairs"),
    ]
    for body, status, text in bad:
        r = client.post("/api/prompt", json={"session": sid, **body})
        assert r.status_code == status and text in r.json()["detail"], (body, r.text)
    r = client.post("/api/prompt", json={"session": "nope", "points": [[1, 1]], "labels": [1]})
    assert r.status_code == 404 and "unknown or expired session" in r.json()["detail"]
    r = client.post("/api/prompt", json={"session": sam.new_session().id,
                                         "points": [[1, 1]], "labels": [1]})
    assert r.status_code == 409 and "open one first" in r.json()["detail"]


def _encoded(sam, nbytes: int = 1 << 20):
    """A stand-in upload of `nbytes` (the LRU only reads names, sizes and bytes)."""
    from evit_jax.sam.app_state import Encoded
    return Encoded("x.png", (H, W), sam.session(_any_live(sam)).current.predictor, nbytes)


def _any_live(sam) -> str:
    return next(sid for sid, s in sam.sessions.items() if s.current is not None)


def test_sessions_are_a_bounded_lru(sam, disc_session):
    keep, limits = dict(sam.sessions), (sam.max_sessions, sam.session_memory_bytes)
    try:
        enc = _encoded(sam)
        sam.sessions.clear()
        a = sam.install(None, enc).id
        b = sam.install(None, enc).id
        assert list(sam.sessions) == [a, b]
        assert sam.session(a).id == a and list(sam.sessions) == [b, a]  # a: most recent
        c = sam.install("expired", enc).id  # max_sessions = 2: b, the least recent, goes
        assert c not in (a, b, "expired") and list(sam.sessions) == [a, c]
        assert sam.install(a, enc).id == a  # an upload into a live session keeps its id
        assert sam.stats()["evicted"] >= 1
        # Bytes bound too: with room for 2.5 sessions of 1 MiB and 8 slots, 2 stay.
        sam.max_sessions, sam.session_memory_bytes = 8, int(2.5 * 2**20)
        ids = [sam.install(None, enc).id for _ in range(4)]
        assert list(sam.sessions) == ids[2:]
        assert sam.stats()["session_mb"] == 2.0 and sam.stats()["sessions"] == 2
        # A session whose segment-everything run is queued or running is not dropped.
        from evit_jax.sam.app_state import Job
        sam.sessions[ids[2]].job = Job(total=4)
        new = [sam.install(None, enc).id for _ in range(2)]
        assert list(sam.sessions) == [ids[2], new[1]]
        sam.sessions[ids[2]].job.state = "done"
        sam.install(None, enc)
        assert ids[2] not in sam.sessions
    finally:
        sam.max_sessions, sam.session_memory_bytes = limits
        sam.sessions.clear()
        sam.sessions.update(keep)


def test_session_ids_are_unguessable_and_private(client, sam, disc_session):
    """128-bit random ids; a near miss is as unknown as any string; one session's masks
    are never served under another's id; no endpoint lists ids or puts one in a message."""
    import re

    ids = [sam.new_session().id for _ in range(200)]
    assert len(set(ids)) == 200 and all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)
    diffs = [sum(x != y for x, y in zip(a, b)) for a, b in zip(ids, ids[1:])]
    assert min(diffs) > 8  # not a counter or a clock: consecutive ids share few characters
    a = disc_session
    flip = a[:-1] + ("A" if a[-1] != "A" else "B")
    for near in (flip, a[:-1], a + "x", a.upper() if a.upper() != a else a.lower(), " " + a):
        for method, url, kw in (("GET", "/api/masks.json", {"params": {"session": near}}),
                                ("GET", "/api/everything", {"params": {"session": near}}),
                                ("POST", "/api/prompt", {"json": {"session": near,
                                                                  "points": [[5, 5]],
                                                                  "labels": [1]}})):
            r = client.request(method, url, **kw)
            assert r.status_code == 404 and r.json()["detail"] == (
                "unknown or expired session: open the image again"), (near, url, r.text)
    # Another user's session: its own (empty) state, never a's masks.
    b = sam.new_session().id
    r = client.get("/api/masks.json", params={"session": b})
    assert r.status_code == 404 and "no masks yet" in r.json()["detail"]
    for url in ("/api/sessions", "/docs", "/openapi.json", "/redoc"):
        assert client.get(url).status_code == 404
    status = client.get("/api/status").text
    assert a not in status and b not in status and '"sessions":' in status
    for sid in ids + [b]:
        sam.sessions.pop(sid, None)


def test_in_flight_memory_is_bounded_by_image_size():
    """Segment everything sizes its batch so a batch's decoder rows and full-size masks stay
    within 256 MiB (segment-anything's 64 took 1.3 GB in the decoder alone for L0, and
    12 GB of masks at 16 Mpx); the overlay of N masks decodes one RLE at a time, to the same
    PNG as from the arrays."""
    from types import SimpleNamespace

    from evit_jax.sam.app_state import compact_rle, mask_png

    def batch(h, w, grid=64, **generator):
        app = SimpleNamespace(generator=generator, model=SimpleNamespace(low_res_size=4 * grid))
        return SamApp.generator_args(app, (h, w))["points_per_batch"]

    assert [batch(*hw) for hw in [(256, 256), (480, 640), (1080, 1920), (4000, 4000)]] == [
        8, 8, 2, 1]
    assert batch(256, 256, grid=16) == 64 and batch(480, 640, grid=16) == 16  # small grids
    assert batch(4000, 4000, points_per_batch=32) == 32  # set: kept
    _, disc = disc_image()
    masks = [disc, ~disc, np.zeros_like(disc)]
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    assert mask_png([compact_rle(U.mask_to_rle(m)) for m in masks], colors) == \
        mask_png(np.stack(masks), colors)


def test_cli_errors_before_loading(tmp_path, capsys):
    assert main(["--model", "efficientvit-b0", "--weights", str(tmp_path)]) == 1
    assert "not a SAM model" in capsys.readouterr().err
    assert main(["--model", NAME, "--weights", str(tmp_path), "--port", "0"]) == 1
    assert "--port 0" in capsys.readouterr().err


@pytest.mark.parametrize("gone", ["fastapi", "multipart"])
def test_cli_names_a_missing_app_dependency_before_loading(gone, tmp_path, capsys, monkeypatch):
    """uvicorn without fastapi (or python-multipart): one line naming the extra, before the
    model loads and compiles (it was a traceback after ~20 s of compiling)."""
    from evit_jax.sam import app as app_module

    monkeypatch.setitem(sys.modules, gone, None)  # `import fastapi` fails
    if gone == "multipart":
        monkeypatch.setitem(sys.modules, "python_multipart", None)
    monkeypatch.setattr(app_module, "load", lambda args: pytest.fail("loaded the model"))
    t0 = time.perf_counter()
    assert main(["--model", NAME, "--weights", str(tmp_path)]) == 1
    want = "fastapi" if gone == "fastapi" else "python-multipart"
    assert capsys.readouterr().err == (f"evit-sam-app: error: the app needs {want}, not "
                                       "installed here: pip install 'evit-jax[app]'\n")
    assert time.perf_counter() - t0 < 1


@pytest.mark.slow  # ~2 min: the start-up compiles every warm shape
def test_cli_serves_the_page_and_a_prompt(weights, tmp_path):
    """`evit-sam-app` end to end: load, compile, listen; upload and click over HTTP."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "evit_jax.sam.app", "--model", NAME,
                             "--weights", str(weights), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # uvicorn says where it listens once it does
            lines.append(line)
            if f"running on http://127.0.0.1:{port}" in line:
                break
        assert any("compiled the encoder, decoder and generator" in x for x in lines), lines
        base = f"http://127.0.0.1:{port}"
        assert "EfficientViT-SAM" in httpx.get(base + "/").text
        image, disc = disc_image()
        r = httpx.post(base + "/api/upload", files={"file": ("d.png", png_bytes(image))},
                       timeout=120)
        assert r.status_code == 200, r.text
        out = httpx.post(base + "/api/prompt", json={
            "session": r.json()["session"], "points": [[CX, CY]], "labels": [1]},
            timeout=120).json()
        best = mask_from_png(out["masks"][out["best"]]["png"])
        assert best[int(CY), int(CX)] and (best & disc).sum() / (best | disc).sum() > 0.8
    finally:
        proc.terminate()
        proc.wait(30)


# --------------------------------------------------------------------------- browser
def _browser() -> tuple[str, str]:
    """Debian's chromium + chromium-driver, installed here when missing (as root with apt)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.geteuid() == 0 and shutil.which("apt-get") and not os.environ.get("EVIT_NO_APT"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium",
                   "chromium-driver"]
            for step in ([cmd], [["apt-get", "update", "-q"], cmd]):  # update only if needed
                if all(subprocess.run(c, env=env, capture_output=True, timeout=900).returncode
                       == 0 for c in step):
                    break
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"no headless browser: {CHROMIUM} / {CHROMEDRIVER} are missing and could "
                    "not be installed (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e "
                                           "'.[app-test]'")
    return CHROMIUM, CHROMEDRIVER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(sam):
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(sam), host="127.0.0.1", port=port,
                                        log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        assert th.is_alive() and time.time() - t0 < 30, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(10)


def test_page_in_headless_chromium(server, sam, tmp_path):
    """Open the page, upload the drawn disc, click inside it; the mask covers the click,
    is drawn over the image, and a screenshot is written ($EVIT_APP_SCREENSHOT for docs)."""
    chromium, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    f = 8  # 1280x960 pixels, shown CSS-scaled (~0.7): the page must map clicks back
    image, disc = disc_image(f)
    path = tmp_path / "disc.png"
    Image.fromarray(image).save(path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1000,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.get(server + "/")
        wait = WebDriverWait(drv, 60)
        drv.find_element(By.ID, "file").send_keys(str(path))
        canvas = drv.find_element(By.ID, "canvas")
        wait.until(lambda d: canvas.get_attribute("data-ready") == "1"
                   or d.find_element(By.ID, "error").text)
        assert not drv.find_element(By.ID, "error").text
        left, top, width, height = drv.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height];", canvas)
        scale = width / (f * W)
        assert height / (f * H) == pytest.approx(scale, rel=0.02) and scale < 0.9
        # Click 10 (small-image) pixels right of the disc's centre, in viewport pixels.
        cx, cy = f * (CX + 10), f * CY
        ab = ActionBuilder(drv)
        ab.pointer_action.move_to_location(round(left + cx * scale), round(top + cy * scale))
        ab.pointer_action.click()
        ab.perform()
        wait.until(lambda d: canvas.get_attribute("data-answers") == "1"
                   or d.find_element(By.ID, "error").text)
        assert not drv.find_element(By.ID, "error").text
        state = drv.execute_script("return [S.session, S.points, S.labels, S.result.best,"
                                   " S.result.masks.length];")
        sid, points, labels, best, n = state
        assert labels == [1] and n == 3
        assert np.allclose(points[0], [cx, cy], atol=1.5 / scale), points  # pixel mapping
        cx, cy = points[0]
        href = drv.find_element(By.ID, "dl-json").get_attribute("href")  # the page's link
        assert href.endswith(f"/api/masks.json?session={sid}&index={best}"), href
        js = httpx.get(href).json()
        m = U.coco_rle_to_mask(js["annotations"][0]["segmentation"])
        assert m[int(cy), int(cx)] and (m & disc).sum() / (m | disc).sum() > 0.8
        # Drawn: inside the disc the canvas is tinted blue, outside it is the image.
        px = drv.execute_script("const c = arguments[0].getContext('2d');"
                                "return [Array.from(c.getImageData(arguments[1], arguments[2],"
                                " 1, 1).data), Array.from(c.getImageData(arguments[3],"
                                " arguments[4], 1, 1).data)];",
                                canvas, int(cx) - 60, int(cy), f * 150, f * 10)
        inside, outside = px
        assert inside[2] > inside[0] + 40, inside  # blue over the white disc
        assert outside[:3] == list(image[f * 10, f * 150]), outside
        shot = os.environ.get("EVIT_APP_SCREENSHOT") or str(tmp_path / "sam_app.png")
        assert drv.save_screenshot(shot) and Image.open(shot).size[0] > 0
        # Clear, then drag a box around the disc: a box prompt, no clicks. The server has
        # dropped the session meanwhile (as its LRU does when busy): the page opens the
        # image again by itself and answers the box, no error shown.
        drv.find_element(By.ID, "clear").click()
        sam.sessions.pop(sid)
        x0, y0, x1, y1 = (f * v for v in (CX - R - 4, CY - R - 4, CX + R + 4, CY + R + 4))
        ab = ActionBuilder(drv)
        ab.pointer_action.move_to_location(round(left + x0 * scale), round(top + y0 * scale))
        ab.pointer_action.pointer_down()
        ab.pointer_action.move_to_location(round(left + x1 * scale), round(top + y1 * scale))
        ab.pointer_action.pointer_up()
        ab.perform()
        wait.until(lambda d: canvas.get_attribute("data-answers") == "2"
                   or d.find_element(By.ID, "error").text)
        assert not drv.find_element(By.ID, "error").text
        points, box, sid2 = drv.execute_script("return [S.points, S.box, S.session];")
        assert points == [] and np.allclose(box, [x0, y0, x1, y1], atol=1.5 / scale), box
        assert sid2 in sam.sessions and sid2 != sid
        # A bad upload: the server's one-line message in the page's error bar.
        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        drv.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda d: d.find_element(By.ID, "error").text)
        assert drv.find_element(By.ID, "error").text == (
            "notes.png: not an image file PIL can read (give a PNG, JPEG, ...)")
    finally:
        drv.quit()
