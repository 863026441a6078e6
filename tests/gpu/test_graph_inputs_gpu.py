"""Decode-graph inputs staged in one copy and spread by the graph's first kernel
(KILN_GRAPH_STAGED_INPUTS, kiln.kernels.step_inputs) on CUDA: the kernel against its reference,
and an engine's tokens (greedy rows, whose argmax writes into the graphs' last_tokens, and
sampled rows) equal to those with the per-buffer copies, the greedy ones to eager steps too,
with nothing compiled after start-up."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("b,n", [(1, 1), (64, 37), (1024, 1000)])
def test_scatter_kernel_matches_reference(b, n):
    from kiln.kernels.step_inputs import PAD_ROW, scatter_step_inputs, scatter_step_inputs_ref

    g = torch.Generator(device="cuda").manual_seed(b)
    staged = torch.tensor(PAD_ROW, dtype=torch.int64, device="cuda").repeat(b, 1)
    staged[:n, :4] = torch.randint(0, 1 << 20, (n, 4), device="cuda", generator=g)
    last = torch.randint(0, 128256, (n,), device="cuda", generator=g)
    staged[:n, 4] = torch.where(torch.rand(n, device="cuda", generator=g) < 0.5,
                                torch.randperm(n, device="cuda", generator=g), -1)

    def buffers():
        return [torch.full((b,), -5, dtype=dt, device="cuda")
                for dt in (torch.int64, torch.int64, torch.int64, torch.int32)]

    got, ref = buffers(), buffers()
    scatter_step_inputs(staged, last, *got)
    scatter_step_inputs_ref(staged, last, *ref)
    for x, y in zip(got, ref):
        assert torch.equal(x, y)


def test_engine_tokens_with_staged_inputs(tmp_path, monkeypatch):
    from kiln import LLM, SamplingParams
    from kiln.models.random_model import write_random_model
    from kiln.runner.cuda_graphs import DecodeGraphs

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    write_random_model("tiny-llama", tmp_path, seed=4, dtype="float32")
    prompts = [{"prompt_token_ids": list(range(5, 5 + 3 * i + 1))} for i in range(11)]
    greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    sampled = SamplingParams(temperature=0.9, seed=7, max_tokens=25, ignore_eos=True)
    params = [greedy if i % 3 else sampled for i in range(len(prompts))]
    replays = []
    real_replay = DecodeGraphs._replay

    def counting(self, bucket):
        replays.append(bucket)
        return real_replay(self, bucket)

    monkeypatch.setattr(DecodeGraphs, "_replay", counting)
    runs = {}
    for name, staged, eager in (("eager", "1", True), ("copies", "0", False),
                                ("staged", "1", False)):
        monkeypatch.setenv("KILN_GRAPH_STAGED_INPUTS", staged)
        replays.clear()
        llm = LLM(str(tmp_path), dtype="float32", device="cuda", enforce_eager=eager,
                  num_kv_blocks=512, max_num_seqs=16)  # fixed: see test_decode_rope_gpu
        outs = llm.generate(prompts, params)
        runs[name] = [o.outputs[0].token_ids for o in outs]
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        if not eager:
            assert llm.engine.runner.graphs.staged_inputs == (staged == "1")
            assert len(replays) > 20
        del llm
        torch.cuda.empty_cache()
    assert runs["staged"] == runs["copies"]
    # greedy rows against eager steps too (float32, as test_batched_decode_with_graphs_equals_eager)
    for i, p in enumerate(params):
        if p is greedy:
            assert runs["staged"][i] == runs["eager"][i], i
