"""Fixtures shared by the GPU tests: the Triton path forced on, NaN-poisoned allocations, seeds."""

import math
import os

import pytest
import torch


@pytest.fixture(autouse=True)
def triton_path(monkeypatch):
    """Never let a KILN_KERNELS=reference in the environment turn these into self-comparisons."""
    monkeypatch.delenv("KILN_KERNELS", raising=False)


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


@pytest.fixture
def gen():
    """A CUDA generator with a fresh random seed (printed for replay)."""
    # KILN_TEST_SEED=<seed> replays a failure.
    seed = int(os.environ.get("KILN_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"seed={seed}")
    return torch.Generator(device="cuda").manual_seed(seed)


@pytest.fixture(params=["0", "1"], ids=["reduce", "fused"])
def fused_reduce(request, monkeypatch):
    """Split decode attention merged by the reduce kernel, or in the partition kernel."""
    monkeypatch.setenv("KILN_ATTN_FUSED_REDUCE", request.param)
    yield request.param
    from kiln.kernels import qmm_common

    locks = qmm_common.split_locks(torch.device("cuda"))
    assert not bool(locks.any()), "an arrival counter was left armed"
