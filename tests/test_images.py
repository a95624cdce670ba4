"""Image I/O: the PNG grid of samples, padding and cropping."""

import pytest
import torch

from lfm_core import images
from lfm_core.images import save_image_grid


def test_save_image_grid(tmp_path):
    from PIL import Image

    p = save_image_grid(torch.rand(5, 1, 8, 8) * 2 - 1, tmp_path / "g.png")
    assert Image.open(p).size == (3 * 10, 2 * 10)
    with pytest.raises(ValueError, match="1 or 3"):
        save_image_grid(torch.zeros(2, 2, 4, 4), tmp_path / "x.png")
    bad = torch.zeros(2, 3, 4, 4)
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"images contains 1 non-finite value"):
        save_image_grid(bad, tmp_path / "nan.png")
    with pytest.raises(ValueError, match="empty batch"):
        save_image_grid(torch.zeros(0, 3, 4, 4), tmp_path / "none.png")
    assert not (tmp_path / "nan.png").exists() and not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("path, err, match", [("", ValueError, "path must name a .png file, got ''"),
                                              ("grid.jpg", ValueError, "path must name a .png file"),
                                              ("grid", ValueError, "path must name a .png file"),
                                              (3, TypeError, "path must be a str or Path")])
def test_save_image_grid_refuses_a_path_that_is_not_a_png_file(tmp_path, monkeypatch, path, err, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(err, match=match):
        save_image_grid(torch.zeros(2, 1, 4, 4), path)
    assert list(tmp_path.iterdir()) == []


def test_save_image_grid_refuses_a_folder(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        save_image_grid(torch.zeros(2, 1, 4, 4), tmp_path / "d.png")


def test_image_data_get_checks_its_rows():
    from lfm_core.images import ImageData

    data = ImageData(torch.rand(8, 1, 4, 4) * 2 - 1, None, "x", "x")
    assert torch.equal(data.get([2, 0]), data.images[[2, 0]]) and data.get([]).shape == (0, 1, 4, 4)
    assert torch.equal(data.get(torch.tensor([7, 1])), data.images[[7, 1]])
    for bad in ([8], [-1]):
        with pytest.raises(ValueError, match=r"indices must be a list of rows in \[0, 8\)"):
            data.get(bad)
    for bad in (["a"], [0.5], torch.tensor([0.5])):
        with pytest.raises(TypeError, match="indices must hold integer row numbers"):
            data.get(bad)


def test_load_pads_with_the_background_and_crop_takes_it_back():
    plain = images.load("digits", size=8, limit=5)
    padded = images.load("digits", size=8, limit=5, pad=2)
    assert padded.images.shape == (5, 1, 12, 12)
    assert torch.equal(padded.images[..., :2, :], torch.full((5, 1, 2, 12), -1.0))
    assert torch.equal(images.crop(padded.images, 2), plain.images)
    assert torch.equal(images.crop(plain.images, 0), plain.images)
    assert torch.equal(padded.labels, plain.labels)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(pad=-1), ValueError, "pad"), (dict(pad=1.5), TypeError, "pad"), (dict(pad=True), TypeError, "pad")])
def test_load_refuses_a_bad_pad(kwargs, err, match):
    with pytest.raises(err, match=match):
        images.load("digits", size=8, limit=2, **kwargs)


def test_load_refuses_pad_for_celeba_hq(tmp_path):
    with pytest.raises(ValueError, match="pad applies to the offline sets"):
        images.load("celeba_hq", root=tmp_path, pad=2)


@pytest.mark.parametrize("x, border, err, match", [
    (torch.zeros(2, 1, 8, 8), -1, ValueError, "border"), (torch.zeros(2, 1, 8, 8), 1.0, TypeError, "border"),
    (torch.zeros(2, 1, 8, 8), 4, ValueError, "leaves nothing"), (torch.zeros(1, 8, 8), 1, ValueError, "images"),
    ("x", 1, TypeError, "images")])
def test_crop_refuses_bad_arguments(x, border, err, match):
    with pytest.raises(err, match=match):
        images.crop(x, border)


def test_fashion_mnist_classes_name_the_ten_labels():
    assert len(images.FASHION_MNIST_CLASSES) == 10 == len(set(images.FASHION_MNIST_CLASSES))
    assert images.FASHION_MNIST_CLASSES[0] == "T-shirt/top" and images.FASHION_MNIST_CLASSES[9] == "Ankle boot"
