"""Fixtures for quantization tests."""

import pytest


@pytest.fixture(autouse=True)
def one_thread_and_seeded(one_torch_thread, seeded):
    """Every test: one torch thread and the same global RNG state (tests/conftest.py)."""
