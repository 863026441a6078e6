"""Fixtures of the server tests: a tiny checkpoint, an engine factory and a shared live server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import (ThreadServer, make_engine_factory, real_engine_available,
                            thread_server)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A tiny random Llama checkpoint when the real engine is available, else None."""
    if not real_engine_available():
        return None
    from kiln.models.random_model import write_random_model
    out = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    write_random_model("tiny-llama", out)
    return out


@pytest.fixture(scope="session")
def make_engine(tiny_checkpoint: Path | None) -> Callable[..., Any]:
    """An engine factory (see server_helpers.make_engine_factory)."""
    return make_engine_factory(tiny_checkpoint)


@pytest.fixture(scope="session")
def server(make_engine: Callable[..., Any]) -> Iterator[ThreadServer]:
    """A shared server (context 128, 8 sequences, no prefix caching, so that repeating a prompt
    repeats the exact computation) for tests that need no special flags."""
    with thread_server(make_engine(max_model_len=128, enable_prefix_caching=False)) as srv:
        yield srv
