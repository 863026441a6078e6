"""Fixtures for model tests."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run the tiny models on one thread: on a busy 2-core machine, more threads only contend
    (measured 8x slower decoding with the default thread count under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
