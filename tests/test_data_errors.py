"""Every data error names the file (and a parquet file's row) and what is wrong with it; folders and labels that
would be taken silently are refused before any work."""

import gzip
import json
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from test_celeba import make_stargan, to_parquet

from lfm_core import autoencoders, celeba, images


@pytest.fixture
def folder(tmp_path):
    return make_stargan(tmp_path / "celeba", counts={("train", "female"): 2, ("train", "male"): 2,
                                                     ("val", "female"): 1, ("val", "male"): 1}, side=40)


def _png_claiming(side: int) -> bytes:
    """A PNG whose header claims ``side x side`` RGB pixels (its data are far too short)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_a_truncated_jpeg_among_many_is_named(folder):
    victim = sorted((folder / "train" / "male").glob("*.jpg"))[1]
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
    with pytest.raises(ValueError, match=rf"{victim}: .*[Tt]runcated"):
        images.load("celeba_hq", size=16, root=folder)


def test_a_png_claiming_a_huge_size_is_named(folder):
    bomb = folder / "train" / "female" / "zz_bomb.png"
    bomb.write_bytes(_png_claiming(30000))
    with pytest.raises(ValueError, match=rf"{bomb}: not a usable image \(DecompressionBombError"):
        images.load("celeba_hq", size=16, root=folder)


def test_damaged_parquet_files_name_the_file_and_row(folder, tmp_path):
    mirror = to_parquet(folder, tmp_path / "mirror")
    train = mirror / "data" / "train-00000-of-00001.parquet"
    good = train.read_bytes()
    train.write_bytes(good[: len(good) // 2])                         # cut: the footer is gone
    with pytest.raises(ValueError, match=rf"{train}: not a readable parquet file"):
        images.stream("celeba_hq", size=16, root=mirror)
    train.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{train}: not a readable parquet file"):
        images.stream("celeba_hq", size=16, root=mirror)
    # the image column's first data page damaged, the footer and the labels intact: found when the rows are read
    damaged = bytearray(good)
    for i in range(40, 200):
        damaged[i] ^= 0x5A
    train.write_bytes(bytes(damaged))
    src = images.stream("celeba_hq", size=16, root=mirror)
    with pytest.raises(ValueError, match=rf"{train}, rows of row group 0 \(row 0 among them\): cannot be read"):
        src.load()


@pytest.mark.parametrize("column, row", [([0, None, 1], 1), ([0, 2, 1], 1), ([0, -1, 1], 1),
                                         (["female", "male", "male"], 0), ([False, True, True], 0),
                                         ([0.0, 1.0, 1.0], 0)])
def test_parquet_labels_that_are_not_0_or_1_are_refused_with_their_row(tmp_path, column, row):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    pic = make_stargan(tmp_path / "pics", counts={("train", "female"): 1}, side=40) / "train" / "female"
    data = next(pic.glob("*.jpg")).read_bytes()
    path = tmp_path / "data" / "train-0.parquet"
    pq.write_table(pa.table({"image": [{"bytes": data, "path": "a.jpg"}] * 3, "label": column}), path)
    expected = f"{path}, row {row}: label must be 0 (female) or 1 (male), got {column[row]!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        images.stream("celeba_hq", size=16, root=tmp_path)


def test_empty_root_and_bad_environment_folders_are_named(monkeypatch, tmp_path):
    for call in (lambda: images.stream("celeba_hq", root=""), lambda: images.load("fashion_mnist", root=" "),
                 lambda: celeba.load_celebamask_hq(root="")):
        with pytest.raises(ValueError, match="root must name a folder, got an empty path"):
            call()
    with pytest.raises(TypeError, match="root must be a folder path"):
        images.stream("celeba_hq", root=3)
    monkeypatch.setenv("LFM_CELEBA_HQ_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"\$LFM_CELEBA_HQ_DIR \(CelebA-HQ folder\) .*missing does not exist"):
        images.stream("celeba_hq")
    monkeypatch.setenv("LFM_CELEBA_HQ_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"\$LFM_CELEBA_HQ_DIR \(CelebA-HQ folder\) .* is in no known layout"):
        images.stream("celeba_hq")
    monkeypatch.setenv("LFM_CELEBAMASK_HQ_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"\$LFM_CELEBAMASK_HQ_DIR \(CelebAMask-HQ folder\)"):
        celeba.load_celebamask_hq()
    for repo in ("../x", "a/b/c", "a", "-/-", 3):
        with pytest.raises(ValueError, match="repo must be a hub repository id 'owner/name'"):
            images.stream("celeba_hq", repo=repo)


def test_arguments_an_offline_set_would_ignore_are_refused(tmp_path):
    for kw, name in (({"split": "val"}, "split"), ({"split": "train"}, "split"), ({"repo": "a/b"}, "repo")):
        for call in (images.load, images.stream):
            with pytest.raises(ValueError, match=rf"{name} applies to 'celeba_hq' only; 'digits'"):
                call("digits", **kw)
    with pytest.raises(ValueError, match="split must be one of train, val"):
        images.load("digits", split="test")
    with pytest.raises(FileNotFoundError, match=f"Fashion-MNIST was not found in {tmp_path}"):
        images.stream("fashion_mnist", root=tmp_path)        # stream passes root on to load
    assert len(images.stream("digits", limit=3)) == 3


def test_damaged_idx_files_are_named(tmp_path):
    imgs, labels = np.zeros((4, 28, 28), np.uint8), np.arange(4, dtype=np.uint8)

    def write(stem, array, cut=0):
        head = bytes([0, 0, 8, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
        data = (head + array.tobytes())[: len(head) + array.size - cut]
        (tmp_path / stem).write_bytes(data)

    for prefix in ("train", "t10k"):
        write(f"{prefix}-images-idx3-ubyte", imgs)
        write(f"{prefix}-labels-idx1-ubyte", labels)
    assert len(images.load("fashion_mnist", root=tmp_path)) == 8
    write("t10k-images-idx3-ubyte", imgs, cut=100)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: 3036 bytes of data where its header"):
        images.load("fashion_mnist", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: not an IDX file"):
        images.load("fashion_mnist", root=tmp_path)
    write("t10k-images-idx3-ubyte", imgs)
    write("t10k-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    with pytest.raises(ValueError, match=r"expected N images of 28 x 28 and their N labels"):
        images.load("fashion_mnist", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01")[:-6])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: not a readable IDX file"):
        images.load("fashion_mnist", root=tmp_path)


def test_a_damaged_diffusers_folder_is_named(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = tmp_path / "vae"
    AutoencoderKL(**autoencoders.offline_config(3, channels=(16, 16))).save_pretrained(folder)
    (folder / autoencoders.META_FILE).write_text(json.dumps({"scale": 0.5}))
    assert autoencoders.load(str(folder)).scale == 0.5
    weights = folder / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    for damaged in (good[: len(good) // 2], b""):
        weights.write_bytes(damaged)
        with pytest.raises(ValueError, match=rf"{folder}: diffusers could not load the AutoencoderKL in it"):
            autoencoders.load(str(folder))
    weights.write_bytes(good)
    config = folder / "config.json"
    config.write_text(config.read_text()[:40])
    with pytest.raises(ValueError, match=rf"{config}: not valid JSON"):
        autoencoders.load(str(folder))
    config.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{config}: expected a JSON object"):
        autoencoders.load(str(folder))


def test_celebamask_parts_that_are_damaged_are_named(tmp_path):
    from PIL import Image

    root = tmp_path / "mask"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    (root / "CelebAMask-HQ-mask-anno" / "0").mkdir(parents=True)
    Image.new("RGB", (32, 32), (120, 80, 60)).save(root / "CelebA-HQ-img" / "0.jpg")
    Image.new("L", (32, 32), 255).save(root / "CelebAMask-HQ-mask-anno" / "0" / "00000_skin.png")
    data, maps = celeba.load_celebamask_hq(root, size=16)
    assert maps.shape == (1, 16, 16) and int(maps.max()) == 1
    Image.new("L", (16, 16), 255).save(root / "CelebAMask-HQ-mask-anno" / "0" / "00000_nose.png")
    with pytest.raises(ValueError, match=r"00000_nose.png: 16 x 16 pixels, unlike image 0's other part masks"):
        celeba.load_celebamask_hq(root, size=16)
    (root / "CelebAMask-HQ-mask-anno" / "0" / "00000_nose.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ValueError, match=r"00000_nose.png: not a readable part mask"):
        celeba.load_celebamask_hq(root, size=16)
    with pytest.raises(ValueError, match="start must be an int >= 0"):
        celeba.load_celebamask_hq(root, size=16, start=-1)
