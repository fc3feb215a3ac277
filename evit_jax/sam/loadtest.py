"""Load test of a running `evit-sam-app`: many users at once, as the page drives the API.

  python -m evit_jax.sam.loadtest --url http://127.0.0.1:8000 --users 16 --clicks 20 \
      [--max-points 20] [--server-pid PID] [--deadline 300] [--json out.json]

Every user (a thread with its own connection) uploads its own image (drawn shapes, --size),
clicks --clicks times (each click one prompt with the clicks so far, as the page sends
them, started afresh after --max-points), draws a box, and downloads the chosen mask as
PNG and as COCO JSON. Meanwhile one more user runs "segment everything" (--everything
clicks per side) and polls its progress every 0.2 s; a watcher fetches the page and
/api/status every 0.1 s; a slow client drips an upload (--slow-seconds), one stalls halfway
(the server's --upload-timeout ends it: 408) and --drops clients hang up mid-upload.
Those three report (status, seconds, when it ended, s from the start).

A request fails when it gets anything but a 2xx or a designed refusal (408 for the
stalled upload, 413, 422, 429: busy uploads are retried after Retry-After, as the page
does) or no answer. The report: requests and failures by kind, p50 / p99 of the click
round trip and of upload-to-first-mask, the latency of the page and status polls (and how
many were answered while encodes were queued), and with --server-pid the server's RSS
(VmRSS, sampled every 0.1 s: before, peak, after). Needs httpx
(`pip install 'evit-jax[app-test]'`). Point it only at a server you run.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from evit_jax.cli import UserError, run, write_atomic

PROG = "python -m evit_jax.sam.loadtest"
REFUSALS = (413, 422, 429)  # designed refusals of a request that was well formed


@dataclass
class Log:
    """Every answer of a run, thread-safe: (kind, status or None, seconds)."""

    start: float = field(default_factory=time.perf_counter)
    rows: list[tuple[str, int | None, float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, status: int | None, seconds: float) -> None:
        """One answer: its kind, status (None: no answer), seconds, and when it came (s
        from the start)."""
        with self.lock:
            self.rows.append((kind, status, seconds, time.perf_counter() - self.start))

    def note(self, text: str) -> None:
        with self.lock:
            if len(self.notes) < 20:
                self.notes.append(text)


def scene(seed: int, size: tuple[int, int]) -> bytes:
    """A PNG of a few filled discs and rectangles on a grey ramp, `size` = (W, H)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(40, 90, w, dtype=np.uint8)[None, :, None].repeat(h, 0).repeat(3, 2)
    im = Image.fromarray(ramp)
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        x1, y1 = x0 + rng.integers(15, w // 3), y0 + rng.integers(15, h // 3)
        colour = tuple(int(c) for c in rng.integers(120, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=colour)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class User:
    """One simulated page: `run` uploads, clicks, draws a box and downloads."""

    def __init__(self, base: str, log: Log, seed: int, size: tuple[int, int], clicks: int,
                 max_points: int, deadline: float, timeout: float):
        import httpx

        self.http = httpx.Client(base_url=base, timeout=timeout)
        self.log, self.seed, self.size, self.deadline = log, seed, size, deadline
        self.clicks, self.max_points = clicks, max_points
        self.rng = np.random.default_rng(seed)
        self.click_times: list[float] = []
        self.first_mask: float | None = None
        self.session: str | None = None
        self.done = False

    def call(self, kind: str, method: str, url: str, **kw: Any) -> Any:
        """One request, logged; retried after Retry-After on 429 (as the page does)."""
        for _ in range(10):
            if time.perf_counter() > self.deadline:
                raise TimeoutError(f"{kind}: past the deadline")
            t0 = time.perf_counter()
            try:
                r = self.http.request(method, url, **kw)
            except Exception as e:  # noqa: BLE001 (no answer: a failure, logged)
                self.log.add(kind, None, time.perf_counter() - t0)
                self.log.note(f"{kind}: {type(e).__name__}: {e}")
                raise
            self.log.add(kind, r.status_code, time.perf_counter() - t0)
            if r.status_code != 429:
                break
            time.sleep(float(r.headers.get("Retry-After", "1")))
        if r.status_code >= 300:
            self.log.note(f"{kind}: {r.status_code} {r.text[:200]}")
            raise RuntimeError(f"{kind}: {r.status_code}")
        return r

    def upload(self) -> float:
        t0 = time.perf_counter()
        r = self.call("upload", "POST", "/api/upload",
                      files={"file": (f"user{self.seed}.png", scene(self.seed, self.size),
                                      "image/png")})
        self.session = r.json()["session"]
        return t0

    def prompt(self, points: list, labels: list, box: list | None) -> dict:
        t0 = time.perf_counter()
        r = self.call("click" if box is None else "box", "POST", "/api/prompt", json={
            "session": self.session, "points": points, "labels": labels, "box": box,
            "multimask": True})
        if box is None:
            self.click_times.append(time.perf_counter() - t0)
        return r.json()

    def run(self) -> None:
        try:
            t_upload = self.upload()
            w, h = self.size
            points: list[list[float]] = []
            labels: list[int] = []
            for _ in range(self.clicks):
                if len(points) == self.max_points:  # the user clears and starts again
                    points, labels = [], []
                points.append([float(self.rng.uniform(0, w)), float(self.rng.uniform(0, h))])
                labels.append(int(self.rng.random() < 0.8))
                self.prompt(points, labels, None)
                if self.first_mask is None:
                    self.first_mask = time.perf_counter() - t_upload
            x0, y0 = self.rng.uniform(0, w / 2), self.rng.uniform(0, h / 2)
            box = [x0, y0, x0 + self.rng.uniform(8, w / 2), y0 + self.rng.uniform(8, h / 2)]
            best = self.prompt([], [], box)["best"]
            q = {"session": self.session, "index": best}
            self.call("download", "GET", "/api/masks.png", params=q)
            self.call("download", "GET", "/api/masks.json", params=q)
            self.done = True
        except Exception as e:  # noqa: BLE001 (counted in the report)
            self.log.note(f"user {self.seed} stopped: {e}")
        finally:
            self.http.close()


def everything_user(user: User, points_per_side: int, out: dict) -> None:
    """Upload, start "segment everything", poll its progress until done, download."""
    try:
        user.upload()
        user.call("everything", "POST", "/api/everything",
                  json={"session": user.session, "points_per_side": points_per_side})
        t0 = time.perf_counter()
        while True:
            d = user.call("progress", "GET", "/api/everything",
                          params={"session": user.session}).json()
            if d["state"] not in ("queued", "running"):
                break
            time.sleep(0.2)
        out.update(state=d["state"], masks=d.get("masks"), seconds=time.perf_counter() - t0)
        user.call("download", "GET", "/api/masks.json", params={"session": user.session})
        user.done = d["state"] == "done"
    except Exception as e:  # noqa: BLE001
        user.log.note(f"segment everything stopped: {e}")
    finally:
        user.http.close()


def watcher(base: str, log: Log, stop: threading.Event, out: dict, timeout: float) -> None:
    """The page and /api/status every 0.1 s; counts status answers with encodes queued."""
    import httpx

    busy = 0
    with httpx.Client(base_url=base, timeout=timeout) as http:
        while not stop.is_set():
            for kind, url in (("page", "/"), ("status", "/api/status")):
                t0 = time.perf_counter()
                try:
                    r = http.get(url)
                except Exception as e:  # noqa: BLE001
                    log.add(kind, None, time.perf_counter() - t0)
                    log.note(f"{kind}: {type(e).__name__}: {e}")
                    continue
                log.add(kind, r.status_code, time.perf_counter() - t0)
                if kind == "status" and r.status_code == 200:
                    busy += r.json()["uploads_queued"] > 0
                    out["last_status"] = r.json()
            stop.wait(0.1)
    out["status_while_encoding"] = busy


def raw_upload(base: str, data: bytes, seconds: float, cut_after: float | None,
               hold: float = 0.0, wait: float = 300.0) -> tuple[int | None, float]:
    """A multipart upload over a bare socket, its body dripped over `seconds`; with
    `cut_after` (a fraction) only that much is sent, then the socket is held `hold` seconds
    (waiting for the server's answer) and closed; a whole upload waits up to `wait` seconds
    for its answer (it queues for the encoder like any). Returns (status or None, seconds)."""
    u = urlsplit(base)
    boundary = "evitloadtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"slow.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /api/upload HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    send = body if cut_after is None else body[:int(len(body) * cut_after)]
    chunks = max(1, int(seconds / 0.05))
    step = max(1, -(-len(send) // chunks))
    t0 = time.perf_counter()
    with socket.create_connection((u.hostname, u.port), timeout=seconds + max(hold, wait)) as s:
        s.sendall(head)
        for i in range(0, len(send), step):
            s.sendall(send[i:i + step])
            time.sleep(seconds / chunks)
        if cut_after is not None and hold <= 0:
            return None, time.perf_counter() - t0  # hang up mid-upload
        try:
            reply = s.recv(4096)
        except OSError:
            return None, time.perf_counter() - t0
    line = reply.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) > 1 else None), time.perf_counter() - t0


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(1e3 * float(np.percentile(values, q)), 1) if len(values) else None


def load_test(url: str, users: int = 16, clicks: int = 20, max_points: int = 20,
              size: tuple[int, int] = (640, 480), everything: int = 8,
              slow_seconds: float = 3.0, stall: bool = True, drops: int = 2,
              server_pid: int | None = None, deadline_s: float = 300.0,
              timeout_s: float = 120.0) -> dict[str, Any]:
    """Run the load (module docstring) against `url`; returns the report."""
    base = url.rstrip("/")
    log = Log()
    deadline = time.perf_counter() + deadline_s
    mem: dict[str, Any] = {"samples": []}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            v = rss_mib(server_pid)
            if v is not None:
                mem["samples"].append(v)
            stop.wait(0.1)

    mem["before"] = rss_mib(server_pid) if server_pid else None
    crowd = [User(base, log, seed, size, clicks, max_points, deadline, timeout_s)
             for seed in range(users)]
    gen_user = User(base, log, 1000, size, 0, 1, deadline, timeout_s)
    gen_out: dict[str, Any] = {}
    watch_out: dict[str, Any] = {}
    raw: dict[str, tuple[int | None, float]] = {}
    image = scene(2000, size)
    threads = [threading.Thread(target=u.run, name=f"user{u.seed}") for u in crowd]
    threads.append(threading.Thread(target=everything_user, args=(gen_user, everything,
                                                                  gen_out)))
    side = [threading.Thread(target=watcher, args=(base, log, stop, watch_out, timeout_s))]
    if server_pid:
        side.append(threading.Thread(target=sample))
    def raw_client(key: str, *args: Any, **kw: Any) -> None:
        try:
            status, seconds = raw_upload(base, image, *args, **kw)
        except OSError as e:
            status, seconds = None, float("nan")
            log.note(f"{key}: {type(e).__name__}: {e}")
        raw[key] = (status, round(seconds, 2), round(time.perf_counter() - log.start, 2))

    if slow_seconds > 0:
        threads.append(threading.Thread(target=raw_client, args=("slow", slow_seconds, None),
                                        kwargs={"wait": deadline_s}))
    if stall:
        threads.append(threading.Thread(target=raw_client, args=("stall", 0.5, 0.5),
                                        kwargs={"hold": deadline_s}))
    for i in range(drops):
        threads.append(threading.Thread(target=raw_client, args=(f"drop{i}", 0.3, 0.5)))
    t0 = time.perf_counter()
    for th in side + threads:
        th.daemon = True
        th.start()
    for th in threads:
        th.join(max(0.0, deadline - time.perf_counter()))
    wall = time.perf_counter() - t0
    stop.set()
    for th in side:
        th.join(5)
    mem["after"] = rss_mib(server_pid) if server_pid else None

    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failed = 0
    for kind, status, _, _ in log.rows:
        by_kind[kind][str(status)] += 1
        failed += status is None or (status >= 300 and status not in REFUSALS)
    clicks_s = [t for u in crowd for t in u.click_times]
    first = [u.first_mask for u in crowd if u.first_mask is not None]
    polls = [s for k, st, s, _ in log.rows if k in ("page", "status", "progress") and st == 200]
    report = {
        "users": users, "clicks_per_user": clicks, "max_points": max_points,
        "image": f"{size[0]}x{size[1]}", "wall_s": round(wall, 1),
        "users_done": sum(u.done for u in crowd), "everything": gen_out,
        "requests": len(log.rows), "failed": failed,
        "refused": sum(st in REFUSALS for _, st, _, _ in log.rows),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "click_ms": {"n": len(clicks_s), "p50": _pct(clicks_s, 50), "p99": _pct(clicks_s, 99)},
        "upload_to_first_mask_ms": {"n": len(first), "p50": _pct(first, 50),
                                    "p99": _pct(first, 99)},
        "polls_ms": {"n": len(polls), "p50": _pct(polls, 50), "p99": _pct(polls, 99),
                     "max": _pct(polls, 100)},
        "status_answers_while_encoding": watch_out.get("status_while_encoding", 0),
        "server_status": watch_out.get("last_status"),
        "slow_upload": raw.get("slow"), "stalled_upload": raw.get("stall"),
        "dropped_uploads": [raw.get(f"drop{i}") for i in range(drops)],
        "answered_before_the_stall_ended": (
            sum(k in ("upload", "click") and st == 200 and end < raw["stall"][2]
                for k, st, _, end in log.rows) if raw.get("stall") else None),
        "notes": log.notes,
    }
    if server_pid:
        report["rss_mib"] = {"before": mem["before"], "after": mem["after"],
                             "peak": max(mem["samples"], default=None)}
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Load test of a running evit-sam-app "
                                "(point it only at a server you run).")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--clicks", type=int, default=20, help="clicks per user (one prompt each)")
    p.add_argument("--max-points", type=int, default=20,
                   help="clicks in one prompt before the user starts again (<= 30)")
    p.add_argument("--size", default="640x480", help="WxH of each user's image")
    p.add_argument("--everything", type=int, default=8,
                   help="segment everything: clicks per side (0: none)")
    p.add_argument("--slow-seconds", type=float, default=3.0,
                   help="the slow client's upload time (0: none)")
    p.add_argument("--drops", type=int, default=2, help="clients that hang up mid-upload")
    p.add_argument("--no-stall", action="store_true",
                   help="no client that stops halfway through its upload")
    p.add_argument("--server-pid", type=int, help="sample this process's RSS (/proc)")
    p.add_argument("--deadline", type=float, default=300, help="seconds for the whole run")
    p.add_argument("--json", help="also write the report here")
    return p


def _main(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise UserError("the load test needs httpx: pip install 'evit-jax[app-test]'") from None
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {args.size!r}: give WxH, e.g. 640x480") from None
    report = load_test(args.url, args.users, args.clicks, args.max_points, (w, h),
                       args.everything, args.slow_seconds, not args.no_stall, args.drops,
                       args.server_pid, args.deadline)
    text = json.dumps(report, indent=1)
    if args.json:
        write_atomic(args.json, text)
    print(text)
    return 1 if report["failed"] or report["users_done"] < args.users else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(PROG, build_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
