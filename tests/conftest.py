import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _no_global_rng_dependence():
    """Every test starts from a scrambled global RNG: code must not rely on it."""
    torch.manual_seed(12345)
    yield
