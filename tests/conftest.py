from pathlib import Path

import pytest
import torch

from ppp.data import DATASETS, load_victims

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread_and_a_seeded_global_rng():
    """Every test starts from the same global RNG state, whichever tests ran before it (a test that
    draws from it unseeded must not pass or fail by test order)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mnist_victims():
    """Real MNIST victims (the authors' set, committed under data/victims)."""
    return load_victims(REPO / "data" / "victims" / "mnist_128_cvb.npz", "mnist", 32)


@pytest.fixture(scope="session")
def cifar_victims():
    return load_victims(REPO / "data" / "victims" / "cifar10_128_cvb.npz", "cifar10", 32)


def mnist_stats():
    return DATASETS["mnist"]["mean"], DATASETS["mnist"]["std"]
