"""The decode-graph input path packs the same inputs as the eager path (checked without a GPU).

A stand-in for DecodeGraphs copies the packed host inputs into its buffers the way the real one
does, fills in-flight tokens, then runs the model eagerly on the buffers: the logits must equal
the eager path's, so a packing mistake in the graph path shows up on the CPU.
"""

import torch

from kiln import SamplingParams
from kiln.engine.llm_engine import LLMEngine
from kiln.layers.forward_context import AttentionMetadata


class EagerGraphs:
    """DecodeGraphs' interface, replaying nothing: the model runs on the copied-in buffers."""

    def __init__(self, model, kv_caches, max_batch, max_model_len, block_size):
        self.model, self.kv_caches = model, kv_caches
        self.max_model_len = max_model_len
        self.max_blocks = -(-max_model_len // block_size)
        n = max_batch
        self.input_ids = torch.zeros(n, dtype=torch.int64)
        self.positions = torch.zeros(n, dtype=torch.int64)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64)
        self.seq_lens = torch.ones(n, dtype=torch.int32)
        self.block_tables = torch.zeros(n, self.max_blocks, dtype=torch.int32)
        self.calls = 0

    def bucket_for(self, n):
        return n

    def run(self, bucket, ints, block_tables, fill=None):
        from kiln.runner.cuda_graphs import DecodeGraphs

        self.calls += 1
        # The real copy-in, run on CPU buffers; then an eager forward stands in for the replay.
        DecodeGraphs._copy_inputs(self, ints, block_tables, fill, bucket)
        n = ints.shape[1]
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:n], query_start_loc=torch.arange(n + 1, dtype=torch.int32),
            seq_lens=self.seq_lens[:n], block_tables=self.block_tables[:n],
            query_lens_cpu=[1] * n, seq_lens_cpu=self.seq_lens[:n].tolist(), max_query_len=1,
            max_seq_len=int(self.seq_lens[:n].max()))
        hidden = self.model(self.input_ids[:n], self.positions[:n], self.kv_caches, meta)
        return self.model.compute_logits(hidden)


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
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
    return done, graphs


def test_graph_input_packing_matches_eager(tiny_model_dir):
    eager, _ = _generate(tiny_model_dir, use_graphs=False, async_scheduling=False)
    for async_scheduling in (False, True):
        got, graphs = _generate(tiny_model_dir, use_graphs=True, async_scheduling=async_scheduling)
        assert graphs.calls > 5
        assert got == eager
