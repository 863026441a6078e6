"""The prefill graphs' pieces (kiln.runner.prefill_graphs) compute what the model's forward does.

On the CPU the pieces run without being captured (PrefillGraphs(capture=False)): the same split
around the attention, static buffers, padded rows and eager last layer as the captured replay.
The captured graphs themselves are checked on a GPU (tests/gpu/test_prefill_graphs_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

from kiln.errors import KilnError
from kiln.layers.forward_context import build_step_inputs
from kiln.models.loader import load_model
from kiln.models.random_model import write_random_model
from kiln.runner.memory import allocate_kv_caches
from kiln.runner.prefill_graphs import DEFAULT_PREFILL_SIZES, PrefillGraphs, prefill_buckets

BLOCK = 4


def test_buckets():
    assert prefill_buckets(2048) == list(DEFAULT_PREFILL_SIZES)
    assert prefill_buckets(100) == [16, 32, 48, 64, 96, 112]
    assert prefill_buckets(64) == [16, 32, 48, 64]
    assert prefill_buckets(2048, [100, 16, 16, 4096]) == [16, 100]
    with pytest.raises(KilnError, match="within max_num_batched_tokens 64"):
        prefill_buckets(64, [128])


def _step(model, caches, seqs, ids, rows, pieces=None):
    """One step's hidden rows: seqs as build_step_inputs takes them, ids flat."""
    meta, positions, (ids_t, rows_t) = build_step_inputs(seqs, BLOCK, "cpu",
                                                         extra=(ids, rows))
    selected = rows_t if rows_t.shape[0] < ids_t.shape[0] else None
    if pieces is not None:
        return pieces.forward(ids_t, positions, meta, selected)
    return model(ids_t, positions, caches, meta, selected)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen3", "tiny-mistral"])
def test_pieces_match_the_forward(preset, tmp_path):
    model = load_model(write_random_model(preset, tmp_path, seed=3, dtype="float32"))
    args = model.args
    eager = allocate_kv_caches(args, 64, BLOCK, torch.float32, "cpu")
    pieced = allocate_kv_caches(args, 64, BLOCK, torch.float32, "cpu")
    pieces = PrefillGraphs(model, pieced, 48, BLOCK, torch.device("cpu"), capture=False)
    assert pieces.buckets == [16, 32, 48]
    g = torch.Generator().manual_seed(0)
    prompt_a = torch.randint(3, args.vocab_size, (21,), generator=g).tolist()
    prompt_b = torch.randint(3, args.vocab_size, (9,), generator=g).tolist()
    # (seqs, flat ids, sampled rows): a fresh prompt (padded 21 -> 32); its decode beside a new
    # prompt (a mixed step); a chunk over a cached prefix beside two decodes, every row sampled.
    steps = [
        ([(0, 21, [0, 1, 2, 3, 4, 5])], prompt_a, [20]),
        ([(21, 1, [0, 1, 2, 3, 4, 5]), (0, 9, [6, 7, 8])], [7] + prompt_b, [0, 9]),
        ([(22, 1, [0, 1, 2, 3, 4, 5]), (9, 12, [6, 7, 8, 9, 10, 11]), (0, 3, [12])],
         [8] + prompt_a[:12] + prompt_b[:3], list(range(16))),
    ]
    for seqs, ids, rows in steps:
        want = _step(model, eager, seqs, ids, rows)
        got = _step(model, pieced, seqs, ids, rows, pieces)
        assert got.shape == want.shape == (len(rows), args.hidden_size)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(eager, pieced):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # padding wrote no slot
    # A step past the largest bucket is left to the eager forward.
    assert _step(model, pieced, [(0, 49, list(range(13)))], list(range(3, 52)), [48],
                 pieces) is None


def test_config_sizes():
    from kiln.config import EngineConfig, ModelConfig

    def sizes(value):
        return EngineConfig(ModelConfig(model="m"), prefill_graph_sizes=value).prefill_graph_sizes
    assert sizes(None) is None
    assert sizes((0,)) == ()  # none captured
    assert sizes([64, 16, 64]) == (16, 64)
    for bad in ([0, 16], [-16], [1.5]):
        with pytest.raises(KilnError, match="prefill_graph_sizes"):
            sizes(bad)


def test_flag_reaches_the_engine_kwargs():
    import argparse

    from kiln import cli
    from kiln.server import launch

    p = argparse.ArgumentParser()
    cli.add_engine_args(p)
    assert cli.engine_kwargs(p.parse_args(["--prefill-graph-sizes", "0"]))["prefill_graph_sizes"] == [0]
    assert cli.engine_kwargs(p.parse_args([]))["prefill_graph_sizes"] is None
    serve = launch.add_serve_args(argparse.ArgumentParser())
    args = serve.parse_args(["--prefill-graph-sizes", "16", "64"])
    assert launch.engine_kwargs(args)["prefill_graph_sizes"] == [16, 64]
