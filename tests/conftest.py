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


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for one test module: loopback only, no token, 2 CPUs."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",  # loopback only
    )
    yield
    ray.shutdown()
