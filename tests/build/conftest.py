"""Fixtures for build tests."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread: on the busy 2-core machines more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same global RNG state, so random inputs cannot make it flaky."""
    torch.manual_seed(0)
