"""The decoder layer's fused ring path (KILN_RING_GEMV=fused: the norms and SiLU-mul computed
by the GEMVs that read them) wired as the unfused layer: on the CPU, with the ring GEMVs
replaced by their torch references (the kernels are CUDA-only; tests/gpu/test_ring_gemv_gpu.py
checks them against the same references), an engine at batch 1 generates what it generates
without it."""

import pytest
import torch

from kiln import LLM, SamplingParams
from kiln.kernels import ring_gemv as rg
from kiln.models.llama import DecoderLayer


def _generate(model_dir: str):
    llm = LLM(model_dir, dtype="bfloat16", device="cpu", max_num_seqs=1)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3)
    outs = llm.generate([{"prompt_token_ids": [3, 9, 27, 81, 5]}, {"prompt_token_ids": [7]}],
                        params)
    return [(o.outputs[0].token_ids, [sorted(d) for d in o.outputs[0].logprobs]) for o in outs]


@pytest.mark.parametrize("residual_bug", [False, True])
def test_fused_layer_generates_what_the_layer_generates(tiny_model_dir, monkeypatch, residual_bug):
    want = _generate(tiny_model_dir)
    calls = {"norm": 0, "silu": 0}

    def norm(x2, norm_weight, eps, w, bias=None, residual=None):
        calls["norm"] += 1
        y, summed = rg.ring_gemv_norm_ref(x2, norm_weight, eps, w, bias, residual)
        if residual_bug and summed is not None:
            summed = residual  # the sum forgotten: what a wrong wiring would do
        return y, summed

    def silu(gate_up, w, bias=None):
        calls["silu"] += 1
        return rg.ring_gemv_silu_ref(gate_up, w, bias)

    monkeypatch.setattr(DecoderLayer, "_ring_fused",
                        lambda self, hidden, rows: rows is None and hidden.shape[0] == 1)
    monkeypatch.setattr(rg, "ring_gemv_norm", norm)
    monkeypatch.setattr(rg, "ring_gemv_silu", silu)
    got = _generate(tiny_model_dir)
    assert calls["norm"] > 0 and calls["silu"] * 2 == calls["norm"]
    if residual_bug:
        assert got != want
    else:
        assert [t for t, _ in got] == [t for t, _ in want]


def test_fused_layer_is_off_by_default_and_on_the_cpu(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("KILN_RING_GEMV", raising=False)
    assert not rg.ring_fused_enabled()
    monkeypatch.setenv("KILN_RING_GEMV", "fused")
    assert rg.ring_fused_enabled() and rg.ring_gemv_enabled() and rg.ring_gemv_enabled(head=True)
    llm = LLM(tiny_model_dir, dtype="bfloat16", device="cpu", max_num_seqs=1)
    layer = llm.engine.model.layers[0]
    assert not layer._ring_fused(torch.zeros(1, layer.input_layernorm.weight.shape[0],
                                             dtype=torch.bfloat16), None)
