"""Fixtures more than one test folder asks for by name (none of them autouse here)."""

import math

import pytest
import torch


@pytest.fixture
def poison_allocations(monkeypatch):
    """Make torch.empty / empty_like return NaN-filled float tensors, so unwritten outputs show."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(math.nan)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One thread: on the busy 2-core machines more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def seeded():
    """Every test starts from the same global RNG state, so random inputs cannot make it flaky."""
    torch.manual_seed(0)
