"""CelebA-HQ: the three sources (StarGAN v2 folder, the mirror's parquet files, the hub), streaming into the latent
cache, and every bad input a clear error. Uses the real 56-image sample when LFM_CELEBA_HQ_DIR points at it (CI
sets it when ../shared/data/celeba_hq_sample exists), else a small generated folder in the same layout."""

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lfm_core import autoencoders, celeba, hub, images, latent_cache


def _jpeg(rgb: np.ndarray, mode="RGB", fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def make_stargan(root: Path, counts=None, side=96, seed=0) -> Path:
    """A CelebA-HQ-like folder: smooth random RGB images in the StarGAN v2 layout."""
    rng = np.random.default_rng(seed)
    counts = counts or {("train", "female"): 3, ("train", "male"): 2, ("val", "female"): 1, ("val", "male"): 1}
    for (split, cls), n in counts.items():
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(small).resize((side, side), Image.BILINEAR))
            (folder / f"{split}{cls}{i:03d}.jpg").write_bytes(_jpeg(img))
    return root


@pytest.fixture(scope="module")
def celeba_dir(tmp_path_factory, shared_celeba_hq):
    if shared_celeba_hq is not None:
        return shared_celeba_hq
    return make_stargan(tmp_path_factory.mktemp("celeba"))


def to_parquet(folder: Path, out: Path) -> Path:
    """The folder's images as the hub mirror stores them: parquet with image {bytes, path} and label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("val", "validation")):
        rows = {"image": [], "label": []}
        for label, cls in enumerate(("female", "male")):
            for f in sorted((folder / split / cls).glob("*.jpg")):
                rows["image"].append({"bytes": f.read_bytes(), "path": f.name})
                rows["label"].append(label)
        pq.write_table(pa.table(rows), out / "data" / f"{name}-00000-of-00001.parquet", row_group_size=3)
    return out


def test_stargan_folder_streams_and_loads(celeba_dir):
    src = images.stream("celeba_hq", size=64, root=celeba_dir)
    labels = src.labels.tolist()
    assert len(src) == len(labels) and labels == sorted(labels) and set(labels) == {0, 1}  # female first, then male
    data = src.load()
    assert data.images.shape == (len(src), 3, 64, 64) and data.num_classes == 2
    assert -1 <= float(data.images.min()) and float(data.images.max()) <= 1 and float(data.images.std()) > 0.05
    chunks = list(src.chunks(3))
    assert [len(c) for c in chunks][:1] == [3] and torch.equal(torch.cat(chunks), data.images)
    assert src.content_key() == images.stream("celeba_hq", size=64, root=celeba_dir).content_key()
    assert src.content_key() != images.stream("celeba_hq", size=32, root=celeba_dir).content_key()
    assert src.content_key() == celeba.celeba_hq_files(size=64, root=celeba_dir).content_key()  # what stream reads
    val = images.load("celeba_hq", size=32, split="val", root=celeba_dir)
    assert len(val) >= 2 and set(val.labels.tolist()) == {0, 1}
    head = src.head(2)
    assert len(head) == 2 and torch.equal(head.load().images, data.images[:2])


def test_spread_and_subset_keep_both_classes_and_name_bad_rows(celeba_dir):
    src = images.stream("celeba_hq", size=32, root=celeba_dir)
    data = src.load()
    n_female = int((src.labels == 0).sum())
    assert set(src.head(n_female).labels.tolist()) == {0}   # the folder lists the female images first
    four = src.spread(4)
    rows = (torch.arange(4) * len(src)) // 4
    assert set(four.labels.tolist()) == {0, 1} and torch.equal(four.load().images, data.images[rows])
    assert torch.equal(four.labels, data.labels[rows])
    assert src.spread(None) is src and src.spread(len(src) + 5) is src
    assert four.content_key() == src.subset(rows).content_key() != src.subset(rows.flip(0)).content_key()
    rows = [len(src) - 1, 1]
    some = src.subset(torch.tensor(rows))
    assert torch.equal(some.load().images, data.images[rows]) and some.labels.tolist() == data.labels[rows].tolist()
    for bad in ([], [len(src)], [-1]):
        with pytest.raises(ValueError, match="indices must be a non-empty list of rows"):
            src.subset(bad)
    with pytest.raises(ValueError, match="n must be >= 1"):
        src.spread(0)


def test_the_environment_variable_and_the_parent_folder(celeba_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LFM_CELEBA_HQ_DIR", str(celeba_dir))
    assert len(images.stream("celeba_hq", size=32)) == len(images.stream("celeba_hq", size=32, root=celeba_dir))
    parent = tmp_path / "download"
    (parent / "celeba_hq").mkdir(parents=True)
    for split in ("train", "val"):
        (parent / "celeba_hq" / split).symlink_to(celeba_dir / split)
    assert len(images.stream("celeba_hq", size=32, root=parent)) == len(images.stream("celeba_hq", size=32))


def test_parquet_files_give_the_same_images(celeba_dir, tmp_path):
    pq_dir = to_parquet(celeba_dir, tmp_path / "mirror")
    from_folder = images.load("celeba_hq", size=32, root=celeba_dir)
    from_parquet = images.load("celeba_hq", size=32, root=pq_dir)
    assert torch.equal(from_folder.images, from_parquet.images)
    assert torch.equal(from_folder.labels, from_parquet.labels)
    val = images.load("celeba_hq", size=32, split="val", root=pq_dir)
    assert torch.equal(val.images, images.load("celeba_hq", size=32, split="val", root=celeba_dir).images)


def test_the_hub_path_runs_here_except_the_download(celeba_dir, tmp_path, monkeypatch):
    """Everything but the transfer: the cache lookup, the probe, the download call (answered by a local copy),
    parquet reading; then the same files found in the local cache with no probe and no hub library call."""
    import huggingface_hub

    pq_dir = to_parquet(celeba_dir, tmp_path / "mirror")
    calls = []

    def fake_snapshot(repo_id, repo_type=None, allow_patterns=None, local_files_only=False):
        calls.append(("download", repo_id, repo_type, tuple(allow_patterns), local_files_only))
        return str(pq_dir)

    monkeypatch.delenv("LFM_CELEBA_HQ_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))   # nothing cached
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(hub, "probe", lambda host=hub.HF_HOST, deadline=None: calls.append(("probe", host)))
    data = images.load("celeba_hq", size=32, limit=3)
    assert len(data) == 3 and "Hugging Face hub mattymchen/celeba-hq" in data.source
    assert calls == [("probe", "huggingface.co"),
                     ("download", "mattymchen/celeba-hq", "dataset", ("*train*.parquet",), False)]
    monkeypatch.setattr(hub, "probe", lambda host=hub.HF_HOST, deadline=None: "blocked")
    start = time.perf_counter()
    with pytest.raises(hub.HubUnavailable, match="celeba_hq.*blocked.*root="):
        images.stream("celeba_hq", size=32)
    assert time.perf_counter() - start < 1
    # downloaded before: the snapshot in the cache is used offline, without the hub library
    cached = to_parquet(celeba_dir, tmp_path / "hf-cache" / "datasets--mattymchen--celeba-hq" / "snapshots" / "c0ffee")
    calls.clear()
    again = images.load("celeba_hq", size=32, limit=3)
    assert calls == [] and torch.equal(again.images, data.images) and (cached / "data").is_dir()


def test_streaming_into_the_latent_cache(celeba_dir, tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    ae = autoencoders.LatentAutoencoder(AutoencoderKL(**autoencoders.offline_config(3, channels=(16, 16))), 0.5,
                                        "rgb-test")
    src = images.stream("celeba_hq", size=32, root=celeba_dir)
    z, y = latent_cache.cached_latents(ae, src, tmp_path, batch_size=2)
    torch.testing.assert_close(z, ae.encode(src.load().images), rtol=1e-4, atol=1e-5)
    assert torch.equal(y, src.labels)
    again, _ = latent_cache.cached_latents(ae, images.stream("celeba_hq", size=32, root=celeba_dir), tmp_path,
                                           read_only=True)
    assert torch.equal(again, z)
    with pytest.raises(ValueError, match="no latents"):  # other images (another size): not this entry
        latent_cache.cached_latents(ae, images.stream("celeba_hq", size=64, root=celeba_dir), tmp_path,
                                    read_only=True)


def _folder_with(tmp_path, name, data: bytes):
    root = make_stargan(tmp_path / "bad", counts={("train", "female"): 1, ("train", "male"): 1,
                                                   ("val", "female"): 1, ("val", "male"): 1})
    (root / "train" / "male" / name).write_bytes(data)
    return root


@pytest.mark.parametrize("name, data, match", [
    ("gray.jpg", _jpeg(np.full((96, 96, 3), 128, np.uint8), mode="L"), "gray.jpg: image mode 'L', expected RGB"),
    ("rgba.png", _jpeg(np.full((96, 96, 3), 128, np.uint8), mode="RGBA", fmt="PNG"), "mode 'RGBA'"),
    ("wide.jpg", _jpeg(np.full((64, 96, 3), 128, np.uint8)), r"96 x 64 pixels is not square"),
    ("small.jpg", _jpeg(np.full((16, 16, 3), 128, np.uint8)), "16 pixels wide, smaller than size=32"),
    ("junk.jpg", b"not an image", "not an image file"),
])
def test_bad_images_are_named(tmp_path, name, data, match):
    src = images.stream("celeba_hq", size=32, root=_folder_with(tmp_path, name, data))
    with pytest.raises(ValueError, match=match):
        src.load()


def test_folders_in_no_known_layout_and_other_bad_arguments(tmp_path, celeba_dir):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"no known layout.*StarGAN v2 layout.*parquet.*found \['a.jpg'\]"):
        images.stream("celeba_hq", root=tmp_path / "photos")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        images.stream("celeba_hq", root=tmp_path / "missing")
    with pytest.raises(ValueError, match="split"):
        images.stream("celeba_hq", root=celeba_dir, split="test")
    with pytest.raises(ValueError, match="split"):
        celeba.celeba_hq_files(root=celeba_dir, split="test")
    with pytest.raises(ValueError, match="size"):
        images.stream("celeba_hq", root=celeba_dir, size=0)
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / "pq" / "train-0.parquet")
    with pytest.raises(ValueError, match="expected the columns 'image' and 'label'"):
        images.stream("celeba_hq", root=tmp_path / "pq")


def test_celebamask_hq_layout(tmp_path):
    root = tmp_path / "CelebAMask-HQ"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in (0, 1, 2001):
        (root / "CelebA-HQ-img" / f"{i}.jpg").write_bytes(_jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        ann = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        ann.mkdir(parents=True, exist_ok=True)
        skin = np.zeros((32, 32), np.uint8)
        skin[4:28, 4:28] = 255
        hair = np.zeros((32, 32), np.uint8)
        hair[:8] = 255  # painted over the skin where they overlap
        Image.fromarray(skin).save(ann / f"{i:05d}_skin.png")
        Image.fromarray(hair).save(ann / f"{i:05d}_hair.png")
    data, maps = celeba.load_celebamask_hq(root, size=16)
    assert data.images.shape == (3, 3, 16, 16) and maps.shape == (3, 16, 16)
    skin, hair = celeba.CELEBAMASK_HQ_PARTS.index("skin") + 1, celeba.CELEBAMASK_HQ_PARTS.index("hair") + 1
    assert set(maps.unique().tolist()) == {0, skin, hair}
    assert int(maps[0, 0, 8]) == hair and int(maps[0, 8, 8]) == skin and int(maps[0, 15, 0]) == 0
    assert len(celeba.load_celebamask_hq(root, size=16, limit=1, start=1)[0]) == 1
    with pytest.raises(ValueError, match="published layout"):
        celeba.load_celebamask_hq(tmp_path, size=16)
    with pytest.raises(FileNotFoundError, match="LFM_CELEBAMASK_HQ_DIR"):
        celeba.load_celebamask_hq(None)


def test_get_checks_its_rows_like_subset(celeba_dir):
    src = images.stream("celeba_hq", size=32, root=celeba_dir)
    assert torch.equal(src.get([1, 0]), src.subset([1, 0]).load().images)
    for bad in ([], [len(src)]):
        with pytest.raises(ValueError, match="indices must be a non-empty list of rows"):
            src.get(bad)


def test_get_and_subset_refuse_rows_that_are_not_integers(celeba_dir):
    src = images.stream("celeba_hq", size=32, root=celeba_dir)
    for bad in (["a"], [0.5], [True], torch.tensor([0.5])):
        with pytest.raises(TypeError, match="indices must hold integer row numbers"):
            src.get(bad)
        with pytest.raises(TypeError, match="indices must hold integer row numbers"):
            src.subset(bad)
    with pytest.raises(TypeError, match="indices must be a sequence or tensor of row numbers"):
        src.subset("a")


def test_decode_image_checks_size_and_data_first():
    from lfm_core.image_files import decode_image

    jpg = _jpeg(np.zeros((16, 16, 3), dtype=np.uint8))
    assert decode_image(jpg, 8).shape == (3, 8, 8)
    for size, err in ((0, ValueError), ("3", TypeError), (2 + 0j, TypeError), (True, TypeError)):
        with pytest.raises(err, match="size must be"):
            decode_image(jpg, size)
    for data in ("abc", None, 3):
        with pytest.raises(TypeError, match=r"data \(x.jpg\) must be the encoded bytes"):
            decode_image(data, 8, name="x.jpg")


def test_resize_checks_its_images():
    from lfm_core.image_files import resize

    x = torch.rand(2, 1, 8, 8)
    assert resize(x, 8) is x and resize(x, 4).shape == (2, 1, 4, 4)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    for bad, err, match in (("abc", TypeError, "images must be a torch.Tensor"),
                            (3.0, TypeError, "images must be a torch.Tensor"),
                            (x.to(torch.complex64), TypeError, "images must be a floating-point tensor"),
                            (x > 0.5, TypeError, "images must be a floating-point tensor"),
                            (torch.empty(0, 1, 8, 8), ValueError, "images is an empty batch"),
                            (nan, ValueError, "images contains 1 non-finite"),
                            (torch.rand(1, 8, 8), ValueError, "images must have at least 4 dimension"),
                            (torch.rand(1, 1, 1, 8, 8), ValueError, r"images must have shape \[N, C, H, W\]")):
        with pytest.raises(err, match=match):
            resize(bad, 4)
