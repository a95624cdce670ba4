"""The hub helper: every way of not reaching the network ends within the deadline, with a message that helps."""

import socket
import threading
import time

import pytest

from lfm_core import autoencoders, hub, images


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    hub.forget()
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield
    hub.forget()


class SilentServer:
    """Accepts TCP connections and never answers (a captive proxy); or answers a CONNECT and then goes silent."""

    def __init__(self, answer_connect: bool = False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.answer, self.conns, self.stop = answer_connect, [], False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            if self.answer:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

    def close(self):
        self.stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


def test_offline_flag_answers_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert hub.probe() == "HF_HUB_OFFLINE is set"
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("answer_connect", [False, True], ids=["silent proxy", "silent after CONNECT"])
def test_a_host_that_never_answers_costs_the_deadline_only(monkeypatch, answer_connect):
    """The old probe hung past 240 s behind a proxy that accepts connections and never answers."""
    server = SilentServer(answer_connect)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.port}")
    try:
        start = time.perf_counter()
        reason = hub.probe(deadline=1.0)
        elapsed = time.perf_counter() - start
    finally:
        server.close()
    assert reason is not None and ("1.0 s" in reason or "timed out" in reason), reason
    assert 0.8 < elapsed < 2.0, elapsed


def test_slow_name_lookup_is_cut_off_at_the_deadline(monkeypatch):
    """The old probe's timeout did not cover DNS: a slow resolver cost 40 s."""
    def slow(*args, **kwargs):
        time.sleep(30)
        raise OSError("too late")

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    start = time.perf_counter()
    reason = hub.probe("huggingface.co", deadline=1.0)
    assert time.perf_counter() - start < 1.5
    assert "name lookup of huggingface.co took longer than 1.0 s" in reason


def test_refused_connection_and_remembered_failure():
    start = time.perf_counter()
    reason = hub.probe("127.0.0.1", deadline=2.0)  # nothing listens on port 443 here
    assert reason is not None and time.perf_counter() - start < 2.5
    start = time.perf_counter()
    assert hub.probe("127.0.0.1", deadline=2.0) == reason  # remembered: no second wait
    assert time.perf_counter() - start < 0.05


def test_require_names_what_why_and_the_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubUnavailable, match=r"The thing needs huggingface.co.*HF_HUB_OFFLINE.*'lfw_faces'"):
        hub.require("The thing")
    with pytest.raises(RuntimeError, match="local diffusers folder"):  # HubUnavailable is a RuntimeError
        hub.require("The thing")


def test_every_hub_path_goes_through_the_helper(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(hub, "probe", lambda host=hub.HF_HOST, deadline=None: calls.append(host) or "blocked")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached locally
    with pytest.raises(hub.HubUnavailable, match="celeba_hq"):
        images.load("celeba_hq", limit=2)
    with pytest.raises(hub.HubUnavailable, match="sd-vae-ft-mse"):
        autoencoders.load("stabilityai/sd-vae-ft-mse")
    from lfm_core import metrics

    monkeypatch.setattr(metrics, "_fid_weights_cached", lambda: False)
    ok, why = metrics.fid_status()
    assert not ok
    if "not installed" not in why:
        assert "github.com" in calls
    assert calls.count("huggingface.co") == 2


@pytest.mark.parametrize("value", ["soon", 0, -1.0, float("inf"), True])
def test_bad_deadlines(monkeypatch, value):
    with pytest.raises(ValueError, match="deadline"):
        hub.probe(deadline=value)
    monkeypatch.setattr(hub, "DEFAULT_DEADLINE", value)   # the default every download's probe uses
    with pytest.raises(ValueError, match="deadline"):
        hub.probe()
    with pytest.raises(TypeError, match="host"):
        hub.probe("")


@pytest.mark.parametrize("network", ["silent proxy", "hanging DNS"])
@pytest.mark.parametrize("call", ["sd-vae-ft-mse", "taesd", "celeba_hq"])
def test_every_hub_path_fails_within_the_deadline_on_a_broken_network(monkeypatch, tmp_path, network, call):
    """No hub library call comes before the probe: nothing cached means the probe alone decides, within its
    deadline (the library's own lookups took 12.6 s behind a silent proxy and 39 s with a hanging DNS)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))   # nothing cached
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("LFM_CELEBA_HQ_DIR", raising=False)
    monkeypatch.setattr(hub, "DEFAULT_DEADLINE", 1.0)
    server = None
    if network == "silent proxy":
        server = SilentServer()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.port}")
    else:
        def hanging(*args, **kwargs):
            time.sleep(30)
            raise OSError("too late")
        monkeypatch.setattr(socket, "getaddrinfo", hanging)
    load = {"sd-vae-ft-mse": lambda: autoencoders.load("stabilityai/sd-vae-ft-mse"),
            "taesd": lambda: autoencoders.load("madebyollin/taesd"),
            "celeba_hq": lambda: images.load("celeba_hq", limit=2)}[call]
    start = time.perf_counter()
    try:
        with pytest.raises(hub.HubUnavailable, match="Offline alternatives"):
            load()
    finally:
        if server is not None:
            server.close()
    assert time.perf_counter() - start < 2.0


def test_cached_snapshots_load_without_asking_the_network(monkeypatch, tmp_path):
    """A download in the local cache is found by the file system alone and loaded with no probe at all."""
    from diffusers import AutoencoderKL

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo = cache / "models--stabilityai--sd-vae-ft-mse"
    old, new = repo / "snapshots" / "0ld", repo / "snapshots" / "abc123"
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    AutoencoderKL(**autoencoders.offline_config(3, channels=(16, 16))).save_pretrained(new)
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")           # an incomplete older snapshot: no weights, never chosen
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hub, "probe", lambda *a, **k: pytest.fail("a cached model must not probe the network"))
    assert hub.cached_snapshot("stabilityai/sd-vae-ft-mse") == new
    assert hub.cached_snapshot("stabilityai/sd-vae-ft-mse", patterns=("*.parquet",)) is None
    assert hub.cached_snapshot("madebyollin/taesd") is None
    ae = autoencoders.load("stabilityai/sd-vae-ft-mse")
    assert ae.scale == 0.18215 and ae.model.config.latent_channels == 4
    for bad, kw in (("no-slash", {}), ("a/b/c", {}), ("/b", {}), ("a/b", {"repo_type": "space"}),
                    ("a/b", {"patterns": "config.json"}), ("a/b", {"patterns": ()})):
        with pytest.raises(ValueError, match="repo_id|repo_type|patterns"):
            hub.cached_snapshot(bad, **kw)


@pytest.mark.parametrize("patterns", [3, [3], ("config.json", ""), {"config.json": 1}])
def test_cached_snapshot_refuses_patterns_that_are_not_globs(patterns):
    with pytest.raises(ValueError, match="patterns must be a non-empty sequence of file-name globs"):
        hub.cached_snapshot("a/b", patterns=patterns)


@pytest.mark.parametrize("host", ["http://x/", "huggingface.co:443", "huggingface.co/path", "a b", "-x"])
def test_probe_refuses_a_url_or_anything_but_a_host_name(host):
    with pytest.raises(ValueError, match="host must be a host name"):
        hub.probe(host, deadline=0.1)
    with pytest.raises(ValueError, match="host must be a host name"):
        hub.require("x", host=host, deadline=0.1)


@pytest.mark.parametrize("what", [3, None, ""])
def test_require_refuses_a_what_that_is_not_a_description(what):
    with pytest.raises(TypeError, match="what must be a non-empty str"):
        hub.require(what, host="localhost", deadline=0.1)
