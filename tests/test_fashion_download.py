"""Fashion-MNIST where Debian's package is missing: downloaded once into a cache, through lfm_core.hub.

No test touches the network: ``urllib.request.urlopen`` serves local bytes (tiny IDX files written here, or the
Debian package's own files) and ``hub.probe`` answers as told.
"""

import gzip
import hashlib
import io
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from lfm_core import fashion_mnist, hub, images

NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


def _idx_gz(array) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    head = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return gzip.compress(head + array.tobytes(), mtime=0)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class _Reply(io.BytesIO):
    """What urlopen returns: a readable context manager with headers."""

    def __init__(self, data: bytes, with_length: bool = True, fail_after: int | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))} if with_length else {}
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(n if self.fail_after is None else min(n, self.fail_after))


class Server:
    """Serves ``files`` (name -> bytes) under fashion_mnist.URL and records every request."""

    def __init__(self, files, **reply):
        self.files, self.reply, self.urls = dict(files), reply, []

    def __call__(self, url, timeout=None):
        assert timeout is not None and timeout > 0   # a stalled read never hangs the caller
        self.urls.append(url)
        name = url.removeprefix(fashion_mnist.URL)
        if name not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return _Reply(self.files[name], **self.reply)


@pytest.fixture
def synthetic(monkeypatch):
    """Tiny Fashion-MNIST files (6 training, 4 test images) and the table of their MD5s and shapes."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28)),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, (6,)),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, (4,))}
    files = {name: _idx_gz(a) for name, a in arrays.items()}
    monkeypatch.setattr(fashion_mnist, "FILES", {n: (_md5(files[n]), arrays[n].shape) for n in NAMES})
    return files


@pytest.fixture
def probed(monkeypatch):
    """A host that answers: the hosts hub.probe was asked about."""
    asked = []
    monkeypatch.setattr(hub, "probe", lambda host, deadline=None: asked.append(host))
    return asked


@pytest.fixture
def cache(tmp_path, monkeypatch, probed):
    """An empty cache folder (not created yet), no Debian package, and a host that answers."""
    folder = tmp_path / "cache" / "fashion-mnist"
    monkeypatch.setenv(fashion_mnist.CACHE_ENV, str(folder))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-package")
    return folder


def _serve(monkeypatch, server):
    monkeypatch.setattr(urllib.request, "urlopen", server)
    return server


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was asked")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(hub, "probe", refuse)


def test_download_into_an_empty_cache_then_read_the_cache(cache, probed, synthetic, monkeypatch, capsys):
    monkeypatch.setenv("LFM_PROGRESS", "1")
    server = _serve(monkeypatch, Server(synthetic))
    data = images.load("fashion_mnist")
    assert probed == ["raw.githubusercontent.com"]
    assert server.urls == [fashion_mnist.URL + n for n in NAMES]
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES)        # nothing temporary left
    assert all((cache / n).read_bytes() == synthetic[n] for n in NAMES)
    assert len(data) == 10 and data.images.shape == (10, 1, 28, 28) and data.num_classes == 10
    assert data.source == f"Fashion-MNIST IDX files in {cache} (downloaded from {fashion_mnist.URL})"
    assert "Fashion-MNIST train-images-idx3-ubyte.gz" in capsys.readouterr().err   # the progress bar

    _no_network(monkeypatch)                                                # the second load reads the cache
    again = images.load("fashion_mnist", size=32)
    assert again.images.shape == (10, 1, 32, 32)
    assert torch.equal(images.load("fashion_mnist").images, data.images)
    assert torch.equal(again.labels, data.labels)


def test_a_reply_without_a_length_downloads_too(cache, synthetic, monkeypatch):
    _serve(monkeypatch, Server(synthetic, with_length=False))
    assert len(images.load("fashion_mnist")) == 10


def test_an_unreachable_host_fails_before_any_download_naming_the_alternatives(cache, synthetic, monkeypatch):
    server = _serve(monkeypatch, Server(synthetic))
    monkeypatch.setattr(hub, "probe", lambda host, deadline=None: f"TimeoutError: no answer from {host} within 5.0 s")
    with pytest.raises(fashion_mnist.Unavailable) as err:
        images.load("fashion_mnist")
    assert isinstance(err.value, hub.HubUnavailable) and isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    for part in ("raw.githubusercontent.com, which cannot be reached", "no answer from", "Offline alternatives",
                 "sudo apt install dataset-fashion-mnist", f"into {cache} or pass their folder as root=",
                 "'lfw_faces' or 'digits'"):
        assert part in msg, part
    assert server.urls == [] and not cache.exists()


def test_the_real_probe_of_an_unreachable_host_fails_within_the_deadline(tmp_path, monkeypatch):
    """hub.probe itself, against a reserved name that never resolves (offline, the lookup fails at once)."""
    monkeypatch.setenv(fashion_mnist.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(fashion_mnist, "URL", "https://fashion-mnist.invalid/data/fashion/")
    monkeypatch.setattr(hub, "DEFAULT_DEADLINE", 2.0)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded without a probe"))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"fashion-mnist\.invalid, which cannot be reached.*'digits'"):
        images.load("fashion_mnist")
    assert time.perf_counter() - start < 2.0 + 1.0
    hub.forget()


def test_a_truncated_download_is_refused_and_leaves_no_file(cache, synthetic, monkeypatch):
    cut = dict(synthetic, **{"t10k-images-idx3-ubyte.gz": synthetic["t10k-images-idx3-ubyte.gz"][:-50]})
    _serve(monkeypatch, Server(cut))
    url = fashion_mnist.URL + "t10k-images-idx3-ubyte.gz"
    with pytest.raises(ValueError, match=rf"the download of {url} has MD5 \w+, not the \w+ its authors publish"):
        images.load("fashion_mnist")
    assert sorted(p.name for p in cache.iterdir()) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    server = _serve(monkeypatch, Server(synthetic))                         # the next load fetches what is missing
    assert len(images.load("fashion_mnist")) == 10
    assert server.urls == [fashion_mnist.URL + n for n in NAMES[2:]]


@pytest.mark.parametrize("name, served, match", [
    ("t10k-images-idx3-ubyte.gz", _idx_gz(np.zeros((5, 28, 28))),
     r"shape \(5, 28, 28\) where Fashion-MNIST has shape \(4, 28, 28\)$"),
    ("t10k-labels-idx1-ubyte.gz", _idx_gz([1, 2, 3, 12]),
     r"shape \(4,\), labels up to 12, where Fashion-MNIST has shape \(4,\) and labels 0-9$"),
    ("train-labels-idx1-ubyte.gz", gzip.compress(b"<html>rate limited</html>"), "not an IDX file"),
    ("train-images-idx3-ubyte.gz", b"<html>rate limited</html>", "not a readable IDX file"),
])
def test_a_download_that_is_not_the_right_idx_array_is_refused(cache, synthetic, monkeypatch, name, served, match):
    table = dict(fashion_mnist.FILES)
    table[name] = (_md5(served), table[name][1])    # its MD5 as listed: the parse alone refuses it
    monkeypatch.setattr(fashion_mnist, "FILES", table)
    _serve(monkeypatch, Server(dict(synthetic, **{name: served})))
    with pytest.raises(ValueError, match=match) as err:
        images.load("fashion_mnist")
    assert str(err.value).startswith(("the download of " + fashion_mnist.URL + name,
                                      fashion_mnist.URL + name + ": "))
    assert ".tmp" not in str(err.value) and name not in {p.name for p in cache.iterdir()}
    assert not any(p.name.startswith(".tmp") for p in cache.iterdir())


@pytest.mark.parametrize("server", [Server({}), Server({n: b"x" * 3_000_000 for n in NAMES}, fail_after=1 << 20)])
def test_a_download_that_breaks_off_is_unavailable_and_leaves_no_file(cache, synthetic, monkeypatch, server):
    _serve(monkeypatch, server)
    url = fashion_mnist.URL + NAMES[0]
    with pytest.raises(fashion_mnist.Unavailable, match=rf"the download of {url} failed \((HTTPError: HTTP "
                                                             r"Error 404|ConnectionResetError).*'digits'"):
        images.load("fashion_mnist")
    assert list(cache.iterdir()) == []


def test_root_is_read_there_only_and_never_downloads(cache, synthetic, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"Fashion-MNIST was not found in {empty}") as err:
        images.load("fashion_mnist", root=empty)
    assert not isinstance(err.value, hub.HubUnavailable)
    for name, data in synthetic.items():
        (empty / name).write_bytes(data)
    data = images.load("fashion_mnist", root=empty)
    assert len(data) == 10 and data.source == f"Fashion-MNIST IDX files in {empty}"
    assert not cache.exists()


def test_the_debian_folder_comes_before_the_cache(cache, synthetic, tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    for name, data in synthetic.items():
        (debian / name).write_bytes(data)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    _no_network(monkeypatch)
    data = images.load("fashion_mnist")
    assert len(data) == 10
    assert data.source == f"Fashion-MNIST IDX files in {debian} (Debian package dataset-fashion-mnist)"
    assert not cache.exists()


def test_the_cache_folder_and_its_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(fashion_mnist.CACHE_ENV, str(tmp_path / "mine"))
    assert fashion_mnist.cache_dir() == tmp_path / "mine"
    monkeypatch.setenv(fashion_mnist.CACHE_ENV, " ")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fashion_mnist.cache_dir() == tmp_path / "xdg" / "lfm_core" / "fashion-mnist"
    monkeypatch.delenv(fashion_mnist.CACHE_ENV)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fashion_mnist.cache_dir() == Path.home() / ".cache" / "lfm_core" / "fashion-mnist"


def test_a_cache_that_cannot_be_a_folder_is_named_before_any_download(cache, synthetic, monkeypatch):
    server = _serve(monkeypatch, Server(synthetic))
    cache.parent.mkdir(parents=True)
    cache.write_text("a file where the cache folder goes")
    with pytest.raises(ValueError, match=f"the Fashion-MNIST cache {cache} is not a folder"):
        images.load("fashion_mnist")
    assert server.urls == []


def test_the_authors_checksums_refuse_other_bytes(cache, monkeypatch):
    """The real table: Debian's files hold the same images, recompressed, so their MD5s are not the authors'."""
    debian = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    served = debian.read_bytes() if debian.is_file() else _idx_gz(np.zeros((60_000, 28, 28)))
    _serve(monkeypatch, Server({NAMES[0]: served}))
    with pytest.raises(ValueError, match="not the 8d4fb7e6c68d591d4c3dfef9ec88bf0d its authors publish"):
        images.load("fashion_mnist")
    assert list(cache.iterdir()) == []


def test_the_debian_files_served_as_the_download_load_as_the_package_does(cache, monkeypatch):
    debian = Path("/usr/share/datasets/fashion-mnist")
    if not all((debian / n).is_file() for n in NAMES):
        pytest.skip("Debian's dataset-fashion-mnist package is not installed")
    files = {n: (debian / n).read_bytes() for n in NAMES}
    monkeypatch.setattr(fashion_mnist, "FILES",
                        {n: (_md5(files[n]), shape) for n, (_, shape) in fashion_mnist.FILES.items()})
    _serve(monkeypatch, Server(files))
    data = images.load("fashion_mnist")
    assert len(data) == 70_000 and data.labels.unique().tolist() == list(range(10))
    assert all((cache / n).read_bytes() == files[n] for n in NAMES)
