"""One door to the network: every download of the project (Hugging Face hub, FID weights) asks here first.

:func:`probe` decides within a **total deadline** (its ``deadline`` argument, by default
:data:`DEFAULT_DEADLINE`: 5 s, which a program on a slow link may raise for every download at once with
``hub.DEFAULT_DEADLINE = 15``) whether a host answers HTTPS: the name lookup, the TCP connection, the TLS
handshake and the first line of an HTTP reply all count against the same clock, so a slow DNS server or a
captive proxy that accepts connections and never answers cost at most the deadline instead of minutes. A proxy in
``HTTPS_PROXY`` is used the way download libraries use it (an HTTP ``CONNECT`` tunnel).
``HF_HUB_OFFLINE=1`` makes every probe of the hub fail at once.

:func:`require` turns a failed probe into :class:`HubUnavailable`, an error that says what needed
the network, why it could not be reached, and the offline alternatives. Failed probes are
remembered for a minute, so a notebook that asks several times waits once.

:func:`cached_snapshot` finds what an earlier download left in the local Hugging Face cache with the file system
alone, so a caller loads it from there without handing the hub library a repository name (which may reach the
network even when asked not to) and asks the network only for what is not cached: the probe comes before any hub
library call.

Copy with: nothing else (standard library only).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["HF_HOST", "DEFAULT_DEADLINE", "OFFLINE_ALTERNATIVES", "HubUnavailable", "probe", "require", "forget",
           "check_repo_id", "cache_dir", "cached_snapshot"]

HF_HOST = "huggingface.co"
DEFAULT_DEADLINE = 5.0
OFFLINE_ALTERNATIVES = (
    "Offline alternatives: the data sets 'lfw_faces', 'digits' and 'fashion_mnist' (lfm_core.images.load), a local "
    "CelebA-HQ folder (lfm_core.images.load('celeba_hq', root=...)), the project's autoencoders "
    "(lfm_core.autoencoders.load('offline') or 'offline-digits') and any local diffusers folder "
    "(lfm_core.autoencoders.load('/path/to/folder'))."
)
_FAILED: dict = {}  # host -> (time of failure, reason)
_REMEMBER_S = 60.0


class HubUnavailable(RuntimeError):
    """A download was asked for and the host cannot be reached (offline, blocked, or too slow)."""


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _resolve(host: str, port: int, timeout: float):
    """getaddrinfo in a helper thread, abandoned after ``timeout`` (the C call itself cannot be interrupted)."""
    box = {}

    def work():
        try:
            box["out"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["err"] = exc

    th = threading.Thread(target=work, name=f"dns-{host}", daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise TimeoutError(f"the name lookup of {host} took longer than {timeout:.1f} s")
    if "err" in box:
        raise box["err"]
    return box["out"]


def _proxy_for(host: str):
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    if any(h.strip() and (host == h.strip().lstrip(".") or host.endswith("." + h.strip().lstrip(".")))
           for h in no_proxy.split(",")) or no_proxy.strip() == "*":
        return None
    url = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if not url:
        return None
    parsed = urlparse(url if "://" in url else "http://" + url)
    return parsed.hostname, parsed.port or 3128


def _read_until(sock, marker: bytes, remaining) -> bytes:
    """Bytes from ``sock`` up to and including ``marker`` (or the connection's end), within the deadline."""
    data = b""
    while marker not in data and len(data) < 65536:
        sock.settimeout(max(remaining(), 1e-3))
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _https_answers(host: str, deadline: float) -> None:
    start = time.monotonic()

    def remaining():
        left = deadline - (time.monotonic() - start)
        if left <= 0:
            raise TimeoutError(f"no answer from {host} within {deadline:.1f} s")
        return left

    proxy = _proxy_for(host)
    target_host, target_port = proxy if proxy else (host, 443)
    infos = _resolve(target_host, target_port, remaining())
    family, kind, proto, _, addr = infos[0]
    raw = socket.socket(family, kind, proto)
    try:
        raw.settimeout(remaining())
        raw.connect(addr)
        if proxy:
            raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
            status = _read_until(raw, b"\r\n\r\n", remaining).split(b"\r\n", 1)[0]
            if b" 200" not in status:
                raise ConnectionError(f"the proxy {target_host}:{target_port} refused the tunnel ({status[:80]!r})")
        raw.settimeout(remaining())
        tls = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
        tls.settimeout(remaining())
        tls.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        line = _read_until(tls, b"\n", remaining).split(b"\n", 1)[0].strip()
        if not line.startswith(b"HTTP/"):
            raise ConnectionError(f"{host} did not answer HTTP ({line[:80]!r})")
        tls.close()
    finally:
        raw.close()


def probe(host: str = HF_HOST, deadline: float | None = None) -> str | None:
    """``None`` when ``host`` answers HTTPS within ``deadline`` seconds (default :data:`DEFAULT_DEADLINE`), else the
    reason it does not (a str)."""
    if not isinstance(host, str) or not host:
        raise TypeError(f"host must be a non-empty str, got {host!r}")
    if not _HOST.fullmatch(host):
        raise ValueError(f"host must be a host name such as {HF_HOST!r} (no scheme, port or path), got {host!r}")
    deadline = DEFAULT_DEADLINE if deadline is None else deadline
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline < float("inf"):
        raise ValueError(f"deadline must be a number of seconds > 0, got {deadline!r}")
    if host == HF_HOST and _hf_offline():
        return "HF_HUB_OFFLINE is set"
    failed = _FAILED.get(host)
    if failed is not None and time.monotonic() - failed[0] < _REMEMBER_S:
        return failed[1]
    try:
        _https_answers(host, float(deadline))
    except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        _FAILED[host] = (time.monotonic(), reason)
        return reason
    _FAILED.pop(host, None)
    return None


def forget() -> None:
    """Forget remembered failures (the next probe asks the network again)."""
    _FAILED.clear()


def require(what: str, *, host: str = HF_HOST, deadline: float | None = None,
            alternatives: str = OFFLINE_ALTERNATIVES) -> None:
    """Return if ``host`` answers within the deadline; else raise :class:`HubUnavailable` naming ``what`` and why."""
    if not isinstance(what, str) or not what.strip():
        raise TypeError(f"what must be a non-empty str (what needs the network), got {what!r}")
    reason = probe(host, deadline)
    if reason is not None:
        raise HubUnavailable(f"{what} needs {host}, which cannot be reached from here ({reason}). {alternatives}")


_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_repo_id(value, name: str = "repo_id") -> str:
    """``value`` when it is a hub repository id ``owner/name`` (letters, digits, ``_.-``), else a ``ValueError``
    naming ``name``."""
    if not isinstance(value, str) or not _REPO_ID.fullmatch(value) or ".." in value:
        raise ValueError(f"{name} must be a hub repository id 'owner/name', got {value!r}")
    return value


def cache_dir() -> Path:
    """The Hugging Face hub cache, where ``huggingface_hub`` keeps downloads: ``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def cached_snapshot(repo_id: str, *, repo_type: str = "model", patterns=("config.json",)) -> Path | None:
    """The folder of a cached download of ``repo_id`` holding a file matching each of ``patterns`` (file-name
    globs, searched in every subfolder), else ``None``. The snapshot that ``refs/main`` names comes first, then
    the others, newest first. Reads the file system only: never the network."""
    check_repo_id(repo_id, "repo_id")
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)) or not patterns \
            or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"patterns must be a non-empty sequence of file-name globs, got {patterns!r}")
    folder = cache_dir() / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return None
    ordered = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    ref = folder / "refs" / "main"
    if ref.is_file():
        main = snapshots / ref.read_text().strip()
        ordered = [main, *(p for p in ordered if p != main)] if main.is_dir() else ordered
    for snap in ordered:
        if all(any(snap.rglob(pattern)) for pattern in patterns):
            return snap
    return None
