"""Where the published checkpoints are on the Hugging Face Hub, and fetching them (`fetch`);
`evit_jax.pretrained(name)` (`evit_jax.io`) fetches, converts and caches.

Where each zoo name's checkpoint lives (`checkpoint_location`):

  classification  han-cai/efficientvit-cls      efficientvit_b1_r224.pt, ...  (the zoo entry's
  segmentation    han-cai/efficientvit-seg      efficientvit_seg_b1_cityscapes.pt  `checkpoint`)
  SAM             mit-han-lab/efficientvit-sam  efficientvit_sam_l0.pt, ...
  timm names      timm/efficientvit_b1.r224_in1k  model.safetensors  (tag default: r224_in1k)

The file is fetched with `huggingface_hub.hf_hub_download` (its cache, `revision=` pinning,
`HF_HUB_OFFLINE=1`, tokens; without a network the cache is used as with `HF_HUB_OFFLINE=1`,
and a missing file is one line at once, not retries), read by the torch-free restricted
reader, converted, and the
converted variables are kept in `$EVIT_JAX_CACHE/pretrained/<name>-<blob>` (default
`~/.cache/evit_jax`, under `$XDG_CACHE_HOME` when set), keyed by the downloaded file's content,
so the next call reads them back without converting.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from evit_jax.errors import UserError

REPOS = {"cls": "han-cai/efficientvit-cls", "seg": "han-cai/efficientvit-seg",
         "sam": "mit-han-lab/efficientvit-sam"}
TIMM_FILE = "model.safetensors"
TIMM_DEFAULT_TAG = "r224_in1k"  # timm's default pretrained tag of every efficientvit_* model


def checkpoint_location(name: str) -> tuple[str, str]:
    """(Hub repository, file name) of the published checkpoint of zoo model `name`."""
    from evit_jax.zoo import MODELS, model_info

    spec = model_info(name)
    if spec.key_style == "timm":
        tag = name.partition(".")[2] or TIMM_DEFAULT_TAG
        return f"timm/{spec.name}.{tag}", TIMM_FILE
    if not spec.checkpoint:
        with_ckpt = sorted(n for n, s in MODELS.items() if s.checkpoint and s.task == spec.task
                           and s.backbone == spec.backbone)
        raise UserError(f"{spec.name} has no published checkpoint (an architecture-only name); "
                        f"pick one that has: {', '.join(with_ckpt) or 'none for this backbone'}")
    return REPOS[spec.task], spec.checkpoint


def cache_root() -> Path:
    """Where converted pretrained variables are kept: $EVIT_JAX_CACHE, else
    $XDG_CACHE_HOME/evit_jax, else ~/.cache/evit_jax."""
    if os.environ.get("EVIT_JAX_CACHE"):
        return Path(os.environ["EVIT_JAX_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "evit_jax"


def fetch(name: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None
          ) -> Path:
    """The local path of `name`'s checkpoint file, downloaded into the Hub cache if needed.

    Without a network (the Hub, or the proxy the environment names, does not accept a
    connection within `PROBE_TIMEOUT_S`) a cached copy is used as with `HF_HUB_OFFLINE=1`,
    and a file that is not cached fails at once with one line, instead of after
    huggingface_hub's five retries (about 25 s of warnings).

    Args:
      name: zoo name (timm names may carry their pretrained tag, `efficientvit_b1.r288_in1k`).
      revision: a branch, tag or commit of the repository (default "main"); pin a commit for
        reproducible runs.
      cache_dir: the Hub cache (default: huggingface_hub's, `HF_HUB_CACHE` / `HF_HOME`).
    Raises:
      UserError: no published checkpoint, or it cannot be fetched (offline and not cached,
        unknown revision, no network), naming the repository and file.
    """
    repo, filename = checkpoint_location(name)
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:  # a declared dependency; only a broken install lacks it
        raise UserError(f"downloading weights needs huggingface_hub ({e}): "
                        "pip install huggingface_hub") from None
    where = f"{filename} of huggingface.co/{repo} (revision {revision or 'main'})"
    offline = constants.HF_HUB_OFFLINE or _truthy(os.environ.get("HF_HUB_OFFLINE"))
    no_network = None if offline else unreachable(constants.ENDPOINT)
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=bool(offline or no_network)))
    except LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE=1 is set" if offline else f"there is no network ({no_network})"
               if no_network else "it cannot be downloaded")
        raise UserError(f"{where} is not in the Hugging Face cache and {why}: fetch it once "
                        "online, or convert a local copy with evit-convert --src FILE") from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"cannot fetch {where}: {' '.join(str(e).split())}") from None


PROBE_TIMEOUT_S = 4.0  # a TCP handshake with the Hub takes well under a second when online


def unreachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a TCP connection to `endpoint`'s host (or to the proxy the environment names
    for it: `https_proxy`, `all_proxy`; `no_proxy` honoured) opens within `timeout` seconds;
    else why not, in a few words. Name resolution counts towards the timeout."""
    import socket
    import threading
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    url = urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxies = getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not proxy_bypass(host):
        purl = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = purl.hostname or "", purl.port or (1080 if "socks" in purl.scheme else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{host}:{port}: {e.strerror or e}")

    probe = threading.Thread(target=connect, daemon=True)  # getaddrinfo has no timeout
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"{host}:{port}: no answer in {timeout:g} s"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def content_key(path: Path) -> str:
    """A short content id of a downloaded file: the Hub cache names blobs by their hash (the
    snapshot file is a link to it); without links, hash the file."""
    real = Path(os.path.realpath(path))
    if real != path.absolute() and real.parent.name == "blobs":
        return real.name[:16]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]
