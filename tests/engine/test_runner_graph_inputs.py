"""The decode-graph input path packs the same inputs as the eager path (checked without a GPU).

A DecodeGraphs whose replay is an eager run of the captured forward (the staged rows spread by
step_inputs' reference, or the per-buffer copies with KILN_GRAPH_STAGED_INPUTS=0), on CPU
buffers, padded to the real buckets: the tokens must equal the eager path's, so a packing
mistake in the graph path shows up on the CPU.
"""

import pytest
import torch

from kiln import SamplingParams
from kiln.engine.llm_engine import LLMEngine
from kiln.layers.forward_context import AttentionMetadata
from kiln.runner.cuda_graphs import DecodeGraphs


class EagerGraphs(DecodeGraphs):
    """DecodeGraphs replaying nothing: each replay runs the forward it would have captured."""

    def __init__(self, model, kv_caches, max_batch, max_model_len, block_size):
        super().__init__(model, kv_caches, max_batch, max_model_len, block_size,
                         torch.device("cpu"))
        self.calls = 0
        self.padded = 0
        self.table_copies = 0

    def _meta(self, b):
        # The CPU attention takes host lengths: those copied in (a graph fixes max_model_len).
        lens = self.seq_lens[:b].tolist()
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:b], query_start_loc=self.query_start_loc[:b + 1],
            seq_lens=self.seq_lens[:b], block_tables=self.block_tables[:b],
            query_lens_cpu=[1] * b, seq_lens_cpu=lens, max_query_len=1, max_seq_len=max(lens))

    def _replay(self, bucket):
        self.calls += 1
        self.padded += int((self.slot_mapping[:bucket] == -1).sum())
        self._forward(bucket)

    def _send_tables(self, block_tables):
        before = self.block_tables.clone()
        super()._send_tables(block_tables)
        self.table_copies += int(not torch.equal(before, self.block_tables))


def _generate(tiny_model_dir, use_graphs, async_scheduling):
    engine = LLMEngine.from_args(tiny_model_dir, dtype="float32", device="cpu", block_size=8,
                                 async_scheduling=async_scheduling)
    runner = engine.runner
    graphs = None
    if use_graphs:
        graphs = EagerGraphs(engine.model, runner.kv_caches, 64, engine.max_model_len, 8)
        runner.graphs = graphs
    prompts = [[5 + i, 9, 13 + 2 * i, 40] * (i + 1) for i in range(5)]
    for i, p in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": p},
                           SamplingParams(temperature=0.0, max_tokens=6 + i, ignore_eos=True))
    # One sampled request: its ids come from the sampler, not the argmax (same seed both ways).
    engine.add_request("s", {"prompt_token_ids": [7, 8, 9, 10, 11]},
                       SamplingParams(temperature=0.8, seed=3, max_tokens=9, ignore_eos=True))
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    return done, graphs


@pytest.mark.parametrize("staged", ["1", "0"])
def test_graph_input_packing_matches_eager(tiny_model_dir, monkeypatch, staged):
    monkeypatch.setenv("KILN_GRAPH_STAGED_INPUTS", staged)
    eager, _ = _generate(tiny_model_dir, use_graphs=False, async_scheduling=False)
    for async_scheduling in (False, True):
        got, graphs = _generate(tiny_model_dir, use_graphs=True, async_scheduling=async_scheduling)
        assert graphs.staged_inputs == (staged == "1")
        assert graphs.calls > 5 and graphs.padded > 0
        assert got == eager
        if staged == "1":
            # block tables go over only when a row's blocks change, not every step
            assert 0 < graphs.table_copies < graphs.calls
