import os

import pytest
import torch

# Unit tests run single-threaded and quick regardless of the caller's environment.
os.environ.setdefault("LFM_QUICK", "1")
os.environ["LFM_PROGRESS"] = "0"


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
