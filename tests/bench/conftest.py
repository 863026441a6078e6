"""Fixtures of the bench tests: a live kiln server (real engine on a tiny checkpoint when possible)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The live-server helpers live with the server tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from server_helpers import (ThreadServer, make_engine_factory, real_engine_available,  # noqa: E402
                            thread_server)


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """A live server for `kiln bench serve` to load."""
    ckpt = None
    if real_engine_available():
        from kiln.models.random_model import write_random_model
        ckpt = write_random_model("tiny-llama", tmp_path_factory.mktemp("bench") / "tiny-llama")
    with thread_server(make_engine_factory(ckpt)(max_model_len=64)) as srv:
        yield srv
