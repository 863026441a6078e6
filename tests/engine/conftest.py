"""Fixtures for engine tests: one tiny random checkpoint (with tokenizer) per session."""

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from kiln.models.random_model import write_random_model

    out = tmp_path_factory.mktemp("tiny-llama")
    write_random_model("tiny-llama", out, seed=0, dtype="float32")
    return str(out)
