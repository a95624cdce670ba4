"""Image data, autoencoders, the latent cache and the image velocity networks (issue: latent flow matching)."""

import gzip
import struct
import time

import numpy as np
import pytest
import torch

from lfm_core import autoencoders, fashion_mnist, hub, images, latent_cache, metrics
from lfm_core.nets import DiTVelocity, UNetVelocity

# ------------------------------------------------------------------------------------------ data


def test_offline_loaders():
    faces = images.load("lfw_faces", size=32)
    assert faces.images.shape == (100, 1, 32, 32) and faces.labels is None
    assert float(faces.images.min()) >= -1 and float(faces.images.max()) <= 1
    digits = images.load("digits")
    assert digits.images.shape == (1797, 1, 8, 8) and digits.num_classes == 10
    assert set(digits.labels.tolist()) == set(range(10))
    small = images.load("digits", size=16, limit=10)
    assert small.images.shape == (10, 1, 16, 16) and len(small.labels) == 10
    train, held = faces.split(20, generator=torch.Generator().manual_seed(0))
    assert len(train) == 80 and len(held) == 20


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path)
    fm = images.load("fashion_mnist", size=32)
    assert fm.images.shape == (10, 1, 32, 32) and fm.labels.shape == (10,) and fm.num_classes == 10
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "elsewhere")
    assert images.load("fashion_mnist", root=tmp_path).images.shape == (10, 1, 28, 28)   # the folder as an argument
    with pytest.raises(ValueError, match="root"):
        images.load("digits", root=tmp_path)


def test_missing_and_unreachable_data_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path)
    monkeypatch.setenv(fashion_mnist.CACHE_ENV, str(tmp_path))   # no download either: its host unreachable
    with monkeypatch.context() as m:
        m.setattr(hub, "probe", lambda host, deadline=None: "unreachable in the tests")
        with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist.*'lfw_faces' or 'digits'"):
            images.load("fashion_mnist")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="cannot be reached.*'lfw_faces'"):
        images.load("celeba_hq", limit=4)
    from lfm_core.hub import HubUnavailable

    with pytest.raises(HubUnavailable, match="HF_HUB_OFFLINE"):
        images.load("celeba_hq", limit=4)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(name="mnist"), ValueError, "unknown image data set"),
    (dict(name="digits", size=0), ValueError, "size must be >= 1"),
    (dict(name="digits", limit=-2), ValueError, "limit must be >= 1"),
    (dict(name=3), TypeError, "name must be a str"),
])
def test_bad_data_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        images.load(kwargs.pop("name"), **kwargs)


# ---------------------------------------------------------------------------------- autoencoders
@pytest.fixture(scope="module")
def tiny_ae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(**autoencoders.offline_config(in_channels=1, channels=(16, 16, 16)))
    return autoencoders.LatentAutoencoder(model, 0.5, "tiny-test")


def test_encode_decode_shapes_and_scale(tiny_ae):
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    z = tiny_ae.encode(x, batch_size=2)
    assert z.shape == (3, 4, 4, 4) and tiny_ae.factor == 4
    with torch.no_grad():
        raw = tiny_ae.model.encode(x).latent_dist.mean
    torch.testing.assert_close(z, 0.5 * raw)
    assert tiny_ae.decode(z).shape == x.shape


@pytest.mark.parametrize("x, match", [
    (torch.rand(2, 3, 16, 16), r"shape \[N, 1, H, W\]"),
    (torch.rand(2, 1, 18, 18), "multiples of 4"),
    (torch.rand(2, 1, 16, 16) * 4, r"\[-1, 1\]"),
    (torch.full((2, 1, 16, 16), float("nan")), "non-finite"),
])
def test_bad_images(tiny_ae, x, match):
    with pytest.raises(ValueError, match=match):
        tiny_ae.encode(x)


def test_bad_latents(tiny_ae):
    with pytest.raises(ValueError, match="latents must have shape"):
        tiny_ae.decode(torch.zeros(2, 3, 4, 4))


def test_load_errors(tmp_path, monkeypatch, tiny_ae):
    with pytest.raises(ValueError, match="unknown autoencoder"):
        autoencoders.load("someone/vae")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="cannot be reached.*load\\('offline'\\)"):
        autoencoders.load("stabilityai/sd-vae-ft-mse")
    assert time.perf_counter() - start < 10
    tiny_ae.model.save_pretrained(tmp_path / "ae")
    with pytest.raises(ValueError, match="latent scale"):
        autoencoders.load(str(tmp_path / "ae"))
    loaded = autoencoders.load(str(tmp_path / "ae"), scale=0.5)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode(x), tiny_ae.encode(x))


def test_latent_cache_is_keyed_by_content(tmp_path, tiny_ae):
    data = images.load("digits", size=16, limit=12)
    z1, y1 = latent_cache.cached_latents(tiny_ae, data, tmp_path)
    entries = list(tmp_path.glob("latents-*.safetensors"))
    assert len(entries) == 1 and not list(tmp_path.glob(".tmp-*"))
    z2, y2 = latent_cache.cached_latents(tiny_ae, data, tmp_path, read_only=True)
    assert torch.equal(z1, z2) and torch.equal(y1, y2)
    torch.testing.assert_close(z1, tiny_ae.encode(data.images))
    # other images in the same folder (the old failure: a held-out split got the training split's latents)
    train, held = data.split(4, generator=torch.Generator().manual_seed(0))
    zt, _ = latent_cache.cached_latents(tiny_ae, train, tmp_path)
    zh, _ = latent_cache.cached_latents(tiny_ae, held, tmp_path)
    assert zh.shape[0] == 4 and torch.allclose(zh, tiny_ae.encode(held.images))
    assert torch.allclose(zt, tiny_ae.encode(train.images))
    # same images, other labels; same images, another autoencoder (same name); another scale
    relabelled = images.ImageData(data.images, (data.labels + 1) % 10, data.name, data.source, 10)
    _, yr = latent_cache.cached_latents(tiny_ae, relabelled, tmp_path)
    assert torch.equal(yr, relabelled.labels)
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    other = autoencoders.LatentAutoencoder(AutoencoderKL(**autoencoders.offline_config(1, channels=(16, 16, 16))),
                                           0.5, "tiny-test")
    z3, _ = latent_cache.cached_latents(other, data, tmp_path)
    assert not torch.equal(z1, z3) and torch.allclose(z3, other.encode(data.images))
    rescaled = autoencoders.LatentAutoencoder(tiny_ae.model, 1.0, "tiny-test")
    torch.testing.assert_close(latent_cache.cached_latents(rescaled, data, tmp_path)[0], 2 * z1)
    with pytest.raises(ValueError, match="no latents of these 12 images .* it holds: latents-"):
        latent_cache.cached_latents(other, relabelled, tmp_path, read_only=True)


def _only_entry(folder, tiny_ae, data):
    latent_cache.cached_latents(tiny_ae, data, folder)
    (entry,) = folder.glob("latents-*.safetensors")
    return entry


def test_latent_cache_never_uses_a_corrupt_or_replaced_entry(tmp_path, tiny_ae):
    data = images.load("digits", size=16, limit=12)
    good = tiny_ae.encode(data.images)
    entry = _only_entry(tmp_path / "a", tiny_ae, data)
    raw = bytearray(entry.read_bytes())
    raw[-7] ^= 0xFF  # flip one byte of the latents
    entry.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt .*checksum"):
        latent_cache.cached_latents(tiny_ae, data, tmp_path / "a", read_only=True)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        z, _ = latent_cache.cached_latents(tiny_ae, data, tmp_path / "a")
    torch.testing.assert_close(z, good)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="corrupt .*unreadable"):
        latent_cache.cached_latents(tiny_ae, data, tmp_path / "a", read_only=True)
    # an entry replaced by another valid one (another data set's file under this name)
    other = images.load("digits", size=16, limit=10)
    other_entry = _only_entry(tmp_path / "b", tiny_ae, other)
    entry.write_bytes(other_entry.read_bytes())
    with pytest.raises(ValueError, match="replaced"):
        latent_cache.cached_latents(tiny_ae, data, tmp_path / "a", read_only=True)
    with pytest.warns(RuntimeWarning, match="replaced"):
        z, _ = latent_cache.cached_latents(tiny_ae, data, tmp_path / "a")
    torch.testing.assert_close(z, good)


def test_latent_cache_bad_arguments(tmp_path, tiny_ae):
    data = images.load("digits", size=16, limit=4)
    with pytest.raises(TypeError, match="autoencoder"):
        latent_cache.cached_latents("offline", data, tmp_path)
    with pytest.raises(TypeError, match="data"):
        latent_cache.cached_latents(tiny_ae, data.images, tmp_path)
    with pytest.raises(ValueError, match="contradict"):
        latent_cache.cached_latents(tiny_ae, data, tmp_path, read_only=True, overwrite=True)
    with pytest.raises(ValueError, match="batch_size"):
        latent_cache.cached_latents(tiny_ae, data, tmp_path, batch_size=0)


def test_fit_autoencoder_reduces_the_loss():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(**autoencoders.offline_config(1, channels=(16, 16, 16)))
    x = images.load("lfw_faces", size=16).images
    res = autoencoders.fit_autoencoder(model, x, steps=40, batch_size=16, lr=3e-3, progress=False)
    assert np.mean(res.losses[-5:]) < 0.7 * np.mean(res.losses[:5])


def test_store_folders_of_autoencoders_load_verified_with_their_recorded_scale(tmp_path, tiny_ae):
    """What scripts/train_autoencoder.py writes and the package ships: a store folder whose record holds the scale."""
    from lfm_core import store

    folder = store.save(tmp_path / "ae", tiny_ae.model, {"name": "tiny", "scale": 0.5, "command": "made here"})
    loaded = autoencoders.load(str(folder))
    assert loaded.scale == 0.5 and loaded.name == "tiny" and loaded.meta["command"] == "made here"
    assert loaded.fingerprint() == tiny_ae.fingerprint()       # same config, weights and scale: same latent cache
    assert autoencoders.load(str(folder), scale=2.0).scale == 2.0
    store.save(tmp_path / "noscale", tiny_ae.model, {"name": "tiny"})
    with pytest.raises(ValueError, match="noscale/config.json records no latent scale"):
        autoencoders.load(str(tmp_path / "noscale"))
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-10])   # truncated
    with pytest.raises(store.StoreError, match="ae/model.safetensors does not match its checksum"):
        autoencoders.load(str(folder))
    for name in autoencoders.OFFLINE:                            # the shipped ones are store folders
        assert store.verify(autoencoders.OFFLINE[name])["_class_name"] == "AutoencoderKL"


def test_offline_autoencoder_reconstructs_held_out_faces():
    """The committed checkpoint: held-out faces (never seen in training) come back above 24 dB."""
    ae = autoencoders.load("offline")
    _, held = images.load("lfw_faces", size=32).split(20, generator=torch.Generator().manual_seed(0))
    assert metrics.psnr(held.images, ae.decode(ae.encode(held.images))) > 24.0
    z = ae.encode(images.load("lfw_faces", size=32).images)
    assert 0.7 < float(z.std()) < 1.3  # the scale makes the latents about unit variance


# ------------------------------------------------------------------------------------------ nets
@pytest.mark.parametrize("cls", [UNetVelocity, DiTVelocity])
def test_image_velocity_interface(cls):
    torch.manual_seed(0)
    m = cls(4, 8, preset="tiny", num_classes=3, cond_channels=2)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.rand(2), torch.randn(2, 2, 8, 8)
    out = m(x, t, labels=torch.tensor([0, 3]), cond=cond)
    assert out.shape == x.shape
    m.train()  # no built-in label dropout: training mode is deterministic
    torch.testing.assert_close(m(x, t, labels=torch.tensor([1, 2]), cond=cond),
                               m(x, t, labels=torch.tensor([1, 2]), cond=cond))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        m(x, t, labels=torch.tensor([0, 4]), cond=cond)
    with pytest.raises(TypeError, match="integer tensor"):
        m(x, t, labels=torch.tensor([0.0, 1.0]), cond=cond)
    with pytest.raises(ValueError, match="needs cond"):
        m(x, t, labels=None)
    with pytest.raises(ValueError, match="cond must have shape"):
        m(x, t, cond=torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 4, H, W\]"):
        m(torch.randn(2, 3, 8, 8), t, cond=cond)
    plain = cls(4, 8, preset="tiny")
    with pytest.raises(ValueError, match="without classes"):
        plain(x, t, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="without conditioning"):
        plain(x, t, cond=cond)
    with pytest.raises(ValueError, match="unknown"):
        cls(4, 8, preset="huge")


# --------------------------------------------------------------------------------------- metrics
def test_psnr_and_nearest_neighbour():
    a = torch.zeros(2, 1, 4, 4)
    b = a + 0.2  # MSE 0.04 with data range 2: 10 log10(4 / 0.04) = 20 dB
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(a, torch.zeros(2, 1, 4, 5))
    train = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d = metrics.nearest_neighbour_distance(torch.tensor([[0.0, 1.0], [3.0, 4.0]]), train)
    torch.testing.assert_close(d, torch.tensor([1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_nearest_neighbour_distance_is_exact_on_close_points_and_in_chunks(chunk):
    g = torch.Generator().manual_seed(0)
    train = torch.randn(300, 784, generator=g, dtype=torch.float64) * 50   # large norms: products lose digits
    samples = torch.cat([train[:20] + 1e-4 * torch.randn(20, 784, generator=g, dtype=torch.float64),
                         torch.randn(30, 784, generator=g, dtype=torch.float64) * 50])
    exact = torch.cdist(samples, train, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    d = metrics.nearest_neighbour_distance(samples, train, chunk=chunk)
    torch.testing.assert_close(d, exact, rtol=1e-9, atol=1e-9)
    assert float(d[:20].max()) < 1e-2   # the near-copies are found, at their tiny distance
    far = metrics.nearest_neighbour_distance(samples, train[:3], candidates=100)   # more candidates than points
    torch.testing.assert_close(far, torch.cdist(samples, train[:3]).min(dim=1).values, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [(dict(candidates=0), "candidates"), (dict(chunk=0), "chunk"),
                                           (dict(chunk=2.5), "chunk")])
def test_nearest_neighbour_distance_refuses_bad_sizes(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        metrics.nearest_neighbour_distance(torch.zeros(2, 3), torch.zeros(4, 3), **kwargs)


def test_fid_says_why_it_cannot_run_and_checks_inputs(monkeypatch):
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torchmetrics", "torch_fidelity") else real_find(name, *a))
    ok, why = metrics.fid_status()
    assert not ok and "torchmetrics and torch_fidelity not installed (pip install torch-fidelity" in why
    x = torch.zeros(4, 3, 8, 8)
    with pytest.raises(RuntimeError, match="FID cannot be computed here: torchmetrics"):
        metrics.fid(x, x)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        metrics.fid(x + 2, x)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        metrics.fid(torch.zeros(4, 2, 8, 8), x)
    with pytest.raises(ValueError, match="finite"):
        metrics.fid(x, x * float("nan"))


def test_fid_offline_without_cached_weights_fails_fast(monkeypatch, tmp_path):
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in
                        ("torchmetrics", "torch_fidelity") else real_find(name, *a))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    ok, why = metrics.fid_status()
    assert not ok and "Inception weights are not cached" in why and time.perf_counter() - start < 5


def test_offline_digits_autoencoder_reconstructs_held_out_digits():
    """The committed digits checkpoint: the 297 held-out digits (split seed 0) come back above 34 dB."""
    ae = autoencoders.load("offline-digits")
    _, held = images.load("digits", size=16).split(297, generator=torch.Generator().manual_seed(0))
    z = ae.encode(held.images)
    assert z.shape[1:] == (4, 4, 4)
    assert metrics.psnr(held.images, ae.decode(z)) > 34.0
    assert 0.7 < float(z.std()) < 1.3


def test_train_latent_script_trains_resumes_and_refuses_changed_settings(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_latent", Path(__file__).parents[1] / "scripts" /
                                                  "train_latent.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = ["--data", "digits", "--size", "16", "--autoencoder", "offline-digits", "--classes", "--limit", "64",
            "--batch", "8", "--warmup", "1", "--checkpoint-every", "2", "--sample-every", "2", "--out", str(tmp_path)]
    assert script.main([*args, "--steps", "2"]) == 0
    assert (tmp_path / "ckpt-00000002").is_dir() and (tmp_path / "samples" / "step-00000002.png").exists()
    assert script.main([*args, "--steps", "4"]) == 0  # resumes from step 2
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4
    with pytest.raises(SystemExit):
        script.main([*args, "--steps", "6", "--lr", "1e-3"])
    assert "--override" in capsys.readouterr().err
    assert script.main([*args, "--steps", "6", "--lr", "1e-3", "--override"]) == 0
    cfg = json.loads((tmp_path / "ckpt-00000006" / "config.json").read_text())["record"]
    assert cfg["training"]["lr"] == 1e-3 and cfg["history"][0]["step"] == 4


def test_local_autoencoder_folders_and_the_sd_vae_standin(tmp_path):
    from diffusers import AutoencoderKL

    folder = autoencoders.write_standin(tmp_path / "sd", seed=0)
    ae = autoencoders.load(str(folder))
    assert ae.scale == 0.18215 and ae.factor == 8 and ae.meta["standin"]
    assert sum(p.numel() for p in ae.model.parameters()) == pytest.approx(83.65e6, rel=1e-3)
    (folder / "lfm_autoencoder.json").unlink()  # a local copy of sd-vae-ft-mse: its configuration says what it is
    assert autoencoders.load(str(folder)).scale == 0.18215
    other = AutoencoderKL(**autoencoders.offline_config(3, channels=(16, 16)))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="latent scale and is not sd-vae-ft-mse's architecture: pass scale"):
        autoencoders.load(str(tmp_path / "other"))
    assert autoencoders.load(str(tmp_path / "other"), scale=0.3).scale == 0.3


def test_fid_runs_its_real_path_with_a_standin_feature_extractor():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(12, 3, 32, 32, generator=g) * 2 - 1, torch.rand(12, 3, 32, 32, generator=g) * 2 - 1
    feats = metrics.StandinFeatures(dim=16)
    same, other = metrics.fid(a, a, feature_extractor=feats), metrics.fid(a, b * 0.2, feature_extractor=feats)
    assert same == pytest.approx(0.0, abs=1e-4) and other > same
    with pytest.raises(ValueError, match="at least 2 images"):
        metrics.fid(a[:1], b, feature_extractor=feats)
    with pytest.raises(ValueError, match="one shape"):
        metrics.fid(a, b[:, :, :16, :16], feature_extractor=feats)
    with pytest.raises(TypeError, match="feature_extractor"):
        metrics.fid(a, b, feature_extractor=lambda x: x)


def test_standin_features_check_their_seed():
    with pytest.raises(ValueError, match="seed must be >= 0"):
        metrics.StandinFeatures(seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        metrics.StandinFeatures(seed=1.5)


@pytest.mark.parametrize("kw, name", [({"in_channels": 0}, "in_channels"), ({"latent_channels": -1}, "latent_channels"),
                                      ({"in_channels": 1.5}, "in_channels"), ({"channels": ()}, "channels"),
                                      ({"channels": (16, 24)}, "channels"), ({"channels": "16"}, "channels"),
                                      ({"channels": (16, True)}, "channels")])
def test_offline_config_refuses_what_no_autoencoder_can_be_built_from(kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        autoencoders.offline_config(**kw)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(sample="yes"), TypeError, "sample must be True or False"),
    (dict(sample=2), TypeError, "sample must be True or False"),
    (dict(sample=1.0), TypeError, "sample must be True or False"),
    (dict(generator="g"), TypeError, "generator must be a torch.Generator"),
    (dict(generator=42), TypeError, "generator must be a torch.Generator"),
])
def test_encode_refuses_bad_sample_and_generator(tiny_ae, kwargs, err, match):
    with pytest.raises(err, match=match):
        tiny_ae.encode(torch.zeros(2, 1, 16, 16), **kwargs)


def _tiny_kl():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**autoencoders.offline_config(1, channels=(16, 16)))


@pytest.mark.parametrize("kwargs, err, match", [
    *[(dict(batch_size=b), e, "batch_size must be") for b, e in (("3", TypeError), (2.5, TypeError), (True, TypeError),
                                                                 (2 + 0j, TypeError), (float("nan"), TypeError),
                                                                 (0, ValueError), (-5, ValueError))],
    *[(dict(kl_weight=k), e, "kl_weight must be") for k, e in ((-1.0, ValueError), (True, TypeError),
                                                               ("0.5", TypeError), (float("nan"), ValueError),
                                                               (float("inf"), ValueError), (0.5j, TypeError))],
    *[(dict(flip=f), TypeError, "flip must be True or False") for f in ("yes", 2, 1.0)],
    (dict(images=torch.zeros(2, 3, 8, 8)), ValueError, "images have 3 channels but the model takes 1"),
    (dict(images=torch.zeros(2, 8, 8)), ValueError, "images must have at least 4"),
    (dict(images=torch.full((2, 1, 8, 8), float("nan"))), ValueError, "images contains 128 non-finite"),
])
def test_fit_autoencoder_checks_its_arguments_before_training(kwargs, err, match):
    args = dict(images=torch.zeros(2, 1, 8, 8), steps=1, batch_size=2, progress=False) | kwargs
    with pytest.raises(err, match=match):
        autoencoders.fit_autoencoder(_tiny_kl(), **args)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(name_or_path=""), ValueError, "name_or_path is empty"),
    (dict(name_or_path="  "), ValueError, "name_or_path is empty"),
    (dict(device=3.5), TypeError, "device must be a torch.device"),
    (dict(device="gpu9"), ValueError, "device 'gpu9' is not a device name"),
    (dict(dtype=torch.complex64), TypeError, "dtype must be a floating-point torch.dtype"),
    (dict(dtype=torch.int64), TypeError, "dtype must be a floating-point torch.dtype"),
    (dict(scale=0.0), ValueError, "scale must be > 0"),
])
def test_load_checks_its_arguments_first(kwargs, err, match):
    with pytest.raises(err, match=match):
        autoencoders.load(**({"name_or_path": "offline-digits"} | kwargs))


def test_write_standin_refuses_the_empty_folder_a_file_and_a_bad_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="folder is an empty path"):
        autoencoders.write_standin("")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="folder .* is not a folder"):
        autoencoders.write_standin(tmp_path / "f")
    for seed, err in ((-1, ValueError), (2**70, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="seed must be"):
            autoencoders.write_standin(tmp_path / "sd", seed=seed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_latent_cache_refuses_an_empty_cache_dir_and_data_of_other_channels(tmp_path, monkeypatch, tiny_ae):
    monkeypatch.chdir(tmp_path)
    data = images.load("digits", size=16, limit=4)
    with pytest.raises(ValueError, match="cache_dir must name a folder, got an empty path"):
        latent_cache.cached_latents(tiny_ae, data, "")
    rgb = images.ImageData(torch.rand(2, 3, 16, 16) * 2 - 1, None, "x", "x")
    with pytest.raises(ValueError, match="data has 3-channel images but the autoencoder 'tiny-test' takes 1"):
        latent_cache.cached_latents(tiny_ae, rgb, tmp_path / "cache")
    assert list(tmp_path.iterdir()) == []
