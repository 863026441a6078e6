"""SiLU-mul folded into the MLP's down projection (KILN_SILU_IN_DOWN=1) on CUDA: at the 8B
shapes, under programmatic dependent launch and in CUDA graphs, the bits of silu_and_mul followed
by the tensor-core GEMV (one tuning key, so one launch configuration); an engine decodes the same
greedy tokens and log-probs with and without it, nothing compiled after start-up."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from kiln.models.llama import GatedMLP  # noqa: E402
from gpu_helpers import eager_then_graph, generate_per_flag, tokens_and_logprobs  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 4, 16])
@pytest.mark.parametrize("shape", [(4096, 14336), (256, 512)])
def test_silu_in_down_bits_under_pdl_and_graphs(shape, rows, dtype, monkeypatch):
    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.setenv("KILN_PDL", "1")
    hidden, inter = shape
    gen = torch.Generator(device="cuda").manual_seed(rows)
    mlp = GatedMLP(hidden, inter, False, dtype, "cuda")
    for p in mlp.parameters():
        p.data.copy_(torch.randn(p.shape, generator=gen, device="cuda") * 0.02)
    x = torch.randn(rows, hidden, device="cuda").to(dtype)
    monkeypatch.setenv("KILN_SILU_IN_DOWN", "0")
    want = mlp(x)
    monkeypatch.setenv("KILN_SILU_IN_DOWN", "1")
    assert mlp._silu_in_down(x)

    def check(out):
        assert torch.equal(out, want)

    eager_then_graph(lambda: mlp(x), check, 10, 30)


def test_engine_greedy_tokens_with_and_without_silu_in_down(tmp_path, monkeypatch):
    from kiln import SamplingParams
    from kiln.models.random_model import write_random_model

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    write_random_model("tiny-llama-d128", tmp_path / "m", seed=4, dtype="bfloat16")
    prompts = [{"prompt_token_ids": list(range(4 + i, 45 + 3 * i))} for i in range(5)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=1)
    runs = generate_per_flag(tmp_path / "m", "KILN_SILU_IN_DOWN", prompts, params, monkeypatch,
                             max_num_seqs=8)
    assert tokens_and_logprobs(runs["1"]) == tokens_and_logprobs(runs["0"])
