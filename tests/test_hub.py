"""`evit_jax.pretrained(name)` and `evit-convert --model NAME --dst DIR` without --src, offline:
the test lays out a Hugging Face cache (blobs, snapshots, refs) holding a checkpoint it writes,
and runs with HF_HUB_OFFLINE=1 (huggingface_hub reads its environment at import, hence the
subprocess)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evit_jax.cli import UserError
from evit_jax.hub import checkpoint_location
from tests.helpers import ROOT, needs_shared, synth_case

REV = "0123456789abcdef0123456789abcdef01234567"

SCRIPT = r"""
import json, os, sys, time
import numpy as np
import evit_jax
from evit_jax.cli import UserError
from evit_jax.convert import keymap
from evit_jax.convert.readers import load_state_dict
from evit_jax.convert.cli import main as convert_main

out = {}
ref = keymap.convert_state_dict("efficientvit_b0", load_state_dict(sys.argv[1]))
v = evit_jax.pretrained("efficientvit_b0")
flat = lambda t: {k: np.asarray(x) for k, x in
                  __import__("flax").traverse_util.flatten_dict(t, sep="/").items()}
out["same_as_direct"] = all(np.array_equal(flat(v)[k], a) for k, a in flat(ref).items()) \
    and flat(v).keys() == flat(ref).keys()
def no_conversion(*a, **k):
    raise AssertionError("converted again")
keymap.convert_state_dict = no_conversion  # the next calls must read the converted cache
v2 = evit_jax.pretrained("efficientvit_b0.r224_in1k", revision=sys.argv[2])
out["cached"] = all(np.array_equal(flat(v2)[k], a) for k, a in flat(ref).items())
out["cache_entries"] = sorted(os.listdir(os.path.join(os.environ["EVIT_JAX_CACHE"],
                                                      "pretrained")))
for name, rev in (("efficientvit-b1-r224", None), ("efficientvit_b0", "f" * 40)):
    try:
        evit_jax.pretrained(name, revision=rev)
    except UserError as e:
        out.setdefault("errors", []).append(str(e))
out["convert_status"] = convert_main(["--model", "efficientvit_b0", "--dst", sys.argv[3]])
print("RESULT " + json.dumps(out))
"""


def _hub_cache(root: Path, repo: str, filename: str, data: bytes) -> Path:
    """The layout huggingface_hub keeps: blobs/<sha256>, snapshots/<commit>/<file> -> blob,
    refs/main = commit."""
    d = root / f"models--{repo.replace('/', '--')}"
    blob = d / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snap = d / "snapshots" / REV / filename
    snap.parent.mkdir(parents=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text(REV)
    return snap


def test_checkpoint_locations():
    assert checkpoint_location("efficientvit-b1-r224") == (
        "han-cai/efficientvit-cls", "efficientvit_b1_r224.pt")
    assert checkpoint_location("efficientvit-seg-b1-cityscapes") == (
        "han-cai/efficientvit-seg", "efficientvit_seg_b1_cityscapes.pt")
    assert checkpoint_location("efficientvit-sam-l0") == (
        "mit-han-lab/efficientvit-sam", "efficientvit_sam_l0.pt")
    assert checkpoint_location("efficientvit_b1") == (
        "timm/efficientvit_b1.r224_in1k", "model.safetensors")
    assert checkpoint_location("efficientvit_l2.r384_in1k")[0] == "timm/efficientvit_l2.r384_in1k"
    with pytest.raises(UserError, match="no published checkpoint.*efficientvit-b1-r224"):
        checkpoint_location("efficientvit-b1")


@needs_shared
def test_pretrained_offline_from_a_hub_cache(tmp_path):
    from safetensors.numpy import save

    sd, _ = synth_case("efficientvit_b0")
    data = save({k: np.ascontiguousarray(v) for k, v in sd.items()})
    hub = tmp_path / "hub"
    snap = _hub_cache(hub, "timm/efficientvit_b0.r224_in1k", "model.safetensors", data)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1",
               EVIT_JAX_CACHE=str(tmp_path / "evit"), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(snap), REV, str(tmp_path / "dst")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert out["same_as_direct"] and out["cached"]
    assert out["cache_entries"] == [f"efficientvit_b0.r224_in1k-"
                                    f"{hashlib.sha256(data).hexdigest()[:16]}"]
    missing, bad_rev = out["errors"]
    assert "efficientvit_b1_r224.pt of huggingface.co/han-cai/efficientvit-cls" in missing
    assert "HF_HUB_OFFLINE=1" in missing and "\n" not in missing
    assert "revision " + "f" * 40 in bad_rev
    assert out["convert_status"] == 0
    cfg = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert cfg["model"] == "efficientvit_b0" and cfg["metadata"]["source_file"] == \
        "model.safetensors"
    assert cfg["metadata"]["source_sha256"] == hashlib.sha256(data).hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    """Every connection and name lookup of this process fails, as on a machine without a
    network (but quicker than a real one: the test bounds our side, not the kernel's)."""
    import errno
    import socket

    calls = []

    def unreachable(*args, **kwargs):
        calls.append(args[:1])
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    def no_dns(*args, **kwargs):
        calls.append(args[:1])
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(socket.socket, "connect_ex", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for var in ("HF_HUB_OFFLINE", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_pretrained_without_network_fails_fast_with_one_line(no_network, tmp_path, caplog,
                                                             capfd):
    """Offline without HF_HUB_OFFLINE: one line within seconds, no retry warnings (was six
    warnings and ~25 s); a cached file is still served."""
    import logging
    import time

    import evit_jax

    caplog.set_level(logging.DEBUG)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as info:
        evit_jax.pretrained("efficientvit-b1-r224", cache_dir=tmp_path / "empty")
    seconds = time.perf_counter() - t0
    msg = str(info.value)
    assert seconds < 5, seconds
    assert msg.startswith("efficientvit_b1_r224.pt of huggingface.co/han-cai/efficientvit-cls "
                          "(revision main) is not in the Hugging Face cache and there is no "
                          "network (huggingface.co:443: ") and "\n" not in msg
    assert "evit-convert --src FILE" in msg and no_network  # the probe did try
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    out, err = capfd.readouterr()
    assert out == err == ""
    # The command line says the same, as one line.
    from evit_jax.convert.cli import main as convert_main
    assert convert_main(["--model", "efficientvit-b1-r224", "--dst", str(tmp_path / "d")]) == 1
    assert capfd.readouterr().err.count("\n") == 1
    # A file already in the Hub cache is used without the network (as with HF_HUB_OFFLINE).
    from evit_jax.hub import fetch
    repo, filename = checkpoint_location("efficientvit-b1-r224")
    snap = _hub_cache(tmp_path / "hub", repo, filename, b"weights")
    assert fetch("efficientvit-b1-r224", cache_dir=tmp_path / "hub").resolve() == snap.resolve()


def test_probe_names_the_proxy(monkeypatch):
    """Behind a proxy the probe asks the proxy, not the Hub (which only the proxy reaches)."""
    import socket

    from evit_jax.hub import unreachable

    seen = []

    def fake(address, timeout=None, *a, **k):
        seen.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", fake)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert unreachable("https://huggingface.co") == "proxy.example:3128: Connection refused"
    assert seen == [("proxy.example", 3128)]
    monkeypatch.setenv("no_proxy", "huggingface.co")
    assert unreachable("https://huggingface.co") == "huggingface.co:443: Connection refused"
