"""Image I/O: the PNG grid of samples."""

import pytest
import torch

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
