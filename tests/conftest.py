import os

import pytest
import torch

# Unit tests run single-threaded and quick regardless of the caller's environment.
os.environ.setdefault("LFM_MODE", "quick")
os.environ["LFM_PROGRESS"] = "0"

# The CelebA-HQ folder CI points at (the real 56-image sample), kept for the tests that ask for it. The variables
# that steer the notebooks' data and weights are taken out of every test's environment, so a test that expects the
# hub path (or the default autoencoder) gets it whatever the caller exported.
SHARED_CELEBA_HQ_DIR = os.environ.pop("LFM_CELEBA_HQ_DIR", None)
for _name in ("LFM_CELEBAMASK_HQ_DIR", "LFM_SD_VAE"):
    os.environ.pop(_name, None)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def shared_celeba_hq():
    """The real CelebA-HQ sample folder when the caller's LFM_CELEBA_HQ_DIR pointed at one, else None."""
    from pathlib import Path

    if SHARED_CELEBA_HQ_DIR and Path(SHARED_CELEBA_HQ_DIR).is_dir():
        return Path(SHARED_CELEBA_HQ_DIR)
    return None
