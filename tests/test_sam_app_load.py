"""`evit-sam-app` under load, on loopback: 16 users at once (upload, 20 clicks, a box, the
downloads) while "segment everything" runs, a slow upload, a stalled one and two that hang
up halfway (`evit_jax.sam.loadtest`), against the real server in a subprocess
(`tests/sam_app_server.py`: EfficientViT-SAM-L0 with random weights; the app's default
session and queue limits).

Default run: the encoder fed 128x128 with a 16x16 embedding grid, 320x240 images, prompts
of up to 3 clicks, so it compiles little and runs in well under a minute. `-m slow`: the
model as it ships (512x512, 64x64 grid), 640x480 images, prompts growing to 20 clicks, then
more sessions than the memory budget holds, to show the server's memory level off at the
LRU's bound. Both are bounded in time (the load tool's deadline, the server killed after).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytest.importorskip("fastapi", reason="the app's extra is not installed: pip install -e '.[app]'")
pytest.importorskip("httpx", reason="the load test needs httpx: pip install -e '.[app-test]'")

from evit_jax.sam.loadtest import load_test, rss_mib  # noqa: E402

NAME = "efficientvit-sam-l0"
FIGURES = os.environ.get("EVIT_LOAD_REPORT")  # a folder: the reports are written there too


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """The app in a subprocess on 127.0.0.1, killed on exit (its log kept for asserts)."""

    def __init__(self, tmp: Path, *flags: str, startup_s: float = 600):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.sam_app_server", "--model", NAME, "--port",
             str(self.port), *flags], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        t0 = time.perf_counter()
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            assert time.perf_counter() - t0 < startup_s, "the server did not start"
            try:
                self.status()
                break
            except OSError:
                time.sleep(0.5)
        self.startup_s = time.perf_counter() - t0

    def status(self) -> dict:
        with urllib.request.urlopen(self.url + "/api/status", timeout=10) as r:
            return json.load(r)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cpu_s = _cpu_seconds(self.proc.pid) if self.proc.poll() is None else None
        self.proc.kill()
        self.proc.wait(30)
        self.log.close()


def _check(report: dict, server: Server, users: int) -> None:
    """What every load run must show (the issue's acceptance)."""
    assert report["failed"] == 0, report["notes"]
    assert report["users_done"] == users and report["everything"]["state"] == "done", report
    assert report["by_kind"]["click"] == {"200": users * report["clicks_per_user"]}
    assert report["by_kind"]["box"] == {"200": users}
    # The page and the polls were answered while uploads waited for the encoder.
    assert report["status_answers_while_encoding"] >= 3, report
    assert report["by_kind"]["page"].keys() == {"200"} and report["polls_ms"]["n"] >= 20
    # The slow upload arrived and was encoded; the stalled one was ended by the server
    # (408) after its --upload-timeout while others' uploads and clicks went on; the two
    # that hung up took nothing down with them.
    assert report["slow_upload"][0] == 200, report["slow_upload"]
    assert report["stalled_upload"][0] == 408, report["stalled_upload"]
    assert report["answered_before_the_stall_ended"] >= 5, report
    assert all(d[0] is None for d in report["dropped_uploads"]), report["dropped_uploads"]
    log = server.log_path.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def _save(name: str, report: dict) -> None:
    print(json.dumps(report, indent=1))
    if FIGURES:
        Path(FIGURES, name).write_text(json.dumps(report, indent=1))


def test_sixteen_users_at_once(tmp_path):
    """The CI-sized run: default session limits (what failed: 8 sessions for 16 users)."""
    with Server(tmp_path, "--encoder-size", "128", "--grid", "16", "--points-per-side", "4",
                "--points-per-batch", "1", "--upload-timeout", "4",
                "--warm-clicks", "1,3") as server:
        before = rss_mib(server.proc.pid)
        report = load_test(server.url, users=16, clicks=20, max_points=3, size=(320, 240),
                           everything=4, slow_seconds=2.0, drops=2,
                           server_pid=server.proc.pid, deadline_s=150, timeout_s=60)
        status = server.status()
    report.update(server_startup_s=round(server.startup_s, 1),
                  server_cpu_s=server.cpu_s, load_average=os.getloadavg())
    _save("load_ci.json", report)
    _check(report, server, 16)
    # 16 users + the generator's + the slow upload's: every session kept (default 64).
    assert status["sessions"] == 18 and status["evicted"] == 0, status
    # Memory: what the sessions hold (their embeddings and results, accounted by the app)
    # plus in-flight work; 96 MiB covers the latter here (measured: ~35 MiB).
    rss = report["rss_mib"]
    assert rss["peak"] - before <= status["session_mb"] + 96, (rss, status)


@pytest.mark.slow  # ~14 min at load average 15 on 2 cores: the full-size model, 76 users
def test_sixteen_users_full_model_and_the_memory_bound(tmp_path):
    """The model as it ships (512x512, 64x64 grid) with prompts growing to 20 clicks; then
    60 more users than fit in --session-memory-mb 160 (about 29 sessions of 5.5 MiB): the
    server's RSS levels off at the LRU's bound instead of growing with the sessions."""
    budget = 160
    with Server(tmp_path, "--session-memory-mb", str(budget), "--upload-timeout", "10",
                "--prompt-workers", "2",
                "--warm-clicks", "1,3,7,15,30", "--warm-size", "640x480",
                startup_s=900) as server:
        before = rss_mib(server.proc.pid)
        report = load_test(server.url, users=16, clicks=20, max_points=20, size=(640, 480),
                           everything=16, slow_seconds=3.0, drops=2,
                           server_pid=server.proc.pid, deadline_s=600, timeout_s=300)
        after_users = server.status()
        churn = load_test(server.url, users=60, clicks=1, max_points=1, size=(640, 480),
                          everything=0, slow_seconds=0, stall=False, drops=0,
                          server_pid=server.proc.pid, deadline_s=900, timeout_s=600)
        status = server.status()
    report.update(server_startup_s=round(server.startup_s, 1), server_cpu_s=server.cpu_s,
                  load_average=os.getloadavg(), rss_before_mib=before,
                  churn={k: churn[k] for k in ("wall_s", "failed", "users_done", "rss_mib",
                                               "server_status", "click_ms")})
    _save("load_full.json", report)
    _check(report, server, 16)
    assert after_users["sessions"] == 18 and after_users["evicted"] == 0, after_users
    assert churn["failed"] == 0 and churn["users_done"] == 60, churn["notes"]
    per_session = after_users["session_mb"] / after_users["sessions"]
    assert status["session_mb"] <= budget and status["evicted"] >= 60 + 18 - budget / per_session
    # The bound (docs/deploy.md): RSS after warm-up + the session budget + the work in
    # flight: one encode (XLA's memory analysis of L0's encoder at 512: 89 MiB of buffers,
    # + the decoded image), 2 prompt workers (27 MiB of decoder buffers and 5 MiB of
    # full-size masks each at 640x480), a segment-everything batch (at most 256 MiB), the
    # queued uploads (~1 MiB here): 420 MiB.
    in_flight = 89 + 4 + 2 * 32 + 256 + 7
    for phase in (report["rss_mib"], churn["rss_mib"]):
        assert phase["peak"] <= before + budget + in_flight, (before, phase)
    assert churn["rss_mib"]["after"] <= before + budget, (before, churn["rss_mib"])
