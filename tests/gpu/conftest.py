"""Fixtures shared by the GPU tests: the Triton path forced on, seeded CUDA generators, the
decode-attention reduce switch (NaN-poisoned allocations come from tests/conftest.py)."""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def triton_path(monkeypatch):
    """Never let a KILN_KERNELS=reference in the environment turn these into self-comparisons."""
    monkeypatch.delenv("KILN_KERNELS", raising=False)


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
