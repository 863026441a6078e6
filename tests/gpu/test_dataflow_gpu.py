"""Row-granular dependencies (kiln.kernels.dataflow, KILN_DATAFLOW=1) on CUDA: the gated MLP's
gate_up -> down with ready flags, under programmatic dependent launch and in CUDA graphs, gives
the bits of the separate launches at the 8B shapes, with no poll loop giving up; an engine
decodes the same greedy tokens with and without it, nothing compiled after start-up."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from kiln.kernels import dataflow, pdl_scope  # noqa: E402
from kiln.models.llama import GatedMLP  # noqa: E402


def _mlp(hidden, inter, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    mlp = GatedMLP(hidden, inter, False, dtype, "cuda")
    for p in mlp.parameters():
        p.data.copy_(torch.randn(p.shape, generator=gen, device="cuda") * 0.02)
    return mlp


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 4, 16])
@pytest.mark.parametrize("shape", [(4096, 14336), (256, 512)])
def test_flowing_mlp_bits_under_pdl_and_graphs(shape, rows, dtype, monkeypatch):
    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.setenv("KILN_PDL", "1")
    hidden, inter = shape
    mlp = _mlp(hidden, inter, dtype, seed=rows)
    x = torch.randn(rows, hidden, device="cuda").to(dtype)
    want = mlp(x)
    flags = dataflow.RowFlags(1, 2 * inter, "cuda")
    assert mlp._flows(x)
    for _ in range(20):  # eager, under PDL: the consumer launches while gate_up runs
        flags.begin()
        assert torch.equal(mlp(x, flags.slot(0)), want)
    graph = torch.cuda.CUDAGraph()
    with pdl_scope(True), torch.cuda.graph(graph):
        flags.begin()
        out = mlp(x, flags.slot(0))
    for _ in range(50):
        graph.replay()
        assert torch.equal(out, want)
    torch.cuda.synchronize()
    assert int(flags.errors) == 0
    assert int(flags.epoch) == 20 + 1 + 50


def test_engine_greedy_tokens_with_and_without_dataflow(tmp_path, monkeypatch):
    from kiln import LLM, SamplingParams
    from kiln.models.random_model import write_random_model

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    write_random_model("tiny-llama-d128", tmp_path / "m", seed=3, dtype="bfloat16")
    prompts = [{"prompt_token_ids": list(range(3 + i, 40 + 3 * i))} for i in range(5)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=1)
    runs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_DATAFLOW", flag)
        llm = LLM(str(tmp_path / "m"), device="cuda", gpu_memory_utilization=0.2, max_num_seqs=8)
        outs = llm.generate(prompts, params)
        runs[flag] = [o.outputs[0].token_ids for o in outs]
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        flags = getattr(llm.engine.model, "_flags", None)
        if flag == "1":  # the decode steps ran the flowing MLP, no poll loop gave up
            assert flags is not None and int(flags.errors) == 0 and int(flags.epoch) > 24
        del llm
        torch.cuda.empty_cache()
    assert runs["1"] == runs["0"]
