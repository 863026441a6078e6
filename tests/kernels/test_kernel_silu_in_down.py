"""SiLU-mul folded into the MLP's down projection (KILN_SILU_IN_DOWN, tc_gemv's silu) under the
interpreter: the bits of silu_and_mul followed by the tensor-core GEMV, no silu_and_mul launch,
the same greedy tokens and log-probs from an engine, and clear refusals."""

import pytest
import torch

from kernel_cases import greedy_tokens
from kiln.kernels import activation, mma_gemv
from kiln.models.llama import GatedMLP


pytestmark = pytest.mark.usefixtures("linears_as_on_cuda")  # tests/kernels/conftest.py


def _mlp(hidden, inter, bias, seed):
    gen = torch.Generator().manual_seed(seed)
    mlp = GatedMLP(hidden, inter, bias, torch.float16, "cpu")
    for p in mlp.parameters():
        p.data.copy_((torch.randn(p.shape, generator=gen) * 0.2).to(p.dtype))
    return mlp


def _count_silu_launches(monkeypatch):
    from kiln.layers import activation as layer_activation

    calls = []
    real = layer_activation.silu_and_mul

    def counting(x):
        calls.append(x.shape[0])
        return real(x)

    monkeypatch.setattr(layer_activation, "silu_and_mul", counting)
    return calls


@pytest.mark.parametrize("rows,hidden,inter,bias", [(1, 64, 128, False), (3, 96, 160, True)])
def test_silu_in_down_gives_the_launches_bits(rows, hidden, inter, bias, monkeypatch):
    mlp = _mlp(hidden, inter, bias, seed=rows)
    x = torch.randn(rows, hidden, generator=torch.Generator().manual_seed(7)).to(torch.float16)
    calls = _count_silu_launches(monkeypatch)
    monkeypatch.setenv("KILN_SILU_IN_DOWN", "0")
    want = mlp(x)
    assert calls == [rows] and not mlp._silu_in_down(x)
    monkeypatch.setenv("KILN_SILU_IN_DOWN", "1")
    assert mlp._silu_in_down(x)
    calls.clear()
    assert torch.equal(mlp(x), want)
    assert calls == []  # no silu_and_mul launch


def test_tc_gemv_silu_split_matches_and_refuses(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    w = (torch.randn(64, 256, generator=gen) * 0.1).to(torch.float16)
    gate_up = torch.randn(2, 512, generator=gen).to(torch.float16)
    plain = mma_gemv.tc_gemv(activation.silu_and_mul(gate_up), None, w, None, None,
                             torch.float16, split_k=4)
    folded = mma_gemv.tc_gemv(gate_up, None, w, None, None, torch.float16, split_k=4, silu=True)
    assert torch.equal(folded, plain)
    with pytest.raises(ValueError, match="2K columns"):
        mma_gemv.tc_gemv(gate_up[:, :256], None, w, None, None, torch.float16, silu=True)
    monkeypatch.setenv("KILN_TC_STREAM_K", "1")
    with pytest.raises(ValueError, match="split-K"):
        mma_gemv.tc_gemv(gate_up, None, w, None, None, torch.float16, silu=True)


def test_silu_in_down_not_taken_where_it_cannot_be(monkeypatch):
    mlp = _mlp(64, 128, False, seed=1)
    monkeypatch.setenv("KILN_SILU_IN_DOWN", "1")
    x = torch.randn(1, 64).to(torch.float16)
    assert not mlp._silu_in_down(torch.randn(17, 64).to(torch.float16))  # past SMALL_M rows
    assert not mlp._silu_in_down(torch.randn(1, 64))  # float32 rows of float16 weights
    mlp.act.quant_dtype = torch.float8_e4m3fn  # a quantizing SiLU-mul (fp8 down_proj)
    assert not mlp._silu_in_down(x)
    mlp.act.quant_dtype = None
    monkeypatch.setenv("KILN_TC_STREAM_K", "1")  # stream-K candidates: no SiLU in their loads
    assert not mlp._silu_in_down(x)
    monkeypatch.setenv("KILN_TC_STREAM_K", "0")
    monkeypatch.setenv("KILN_TC_GEMV", "fp8")  # float rows off the tensor-core GEMV
    assert not mlp._silu_in_down(x)


def test_engine_tokens_with_and_without_silu_in_down(tmp_path, monkeypatch):
    """Greedy tokens and their log-probs, bit for bit, with SiLU-mul in down's loads and
    without (decode rows on the tensor-core GEMV either way)."""
    from kiln.models.random_model import write_random_model

    write_random_model("tiny-llama", tmp_path, seed=6, dtype="float16")
    calls = _count_silu_launches(monkeypatch)
    runs = {}
    for fold in ("0", "1"):
        monkeypatch.setenv("KILN_SILU_IN_DOWN", fold)
        calls.clear()
        runs[fold], _ = greedy_tokens(tmp_path, (40, 9), 3)
        decode_launches = sum(1 for t in calls if t <= 2)
        assert (decode_launches == 0) == (fold == "1")
    assert runs["0"] == runs["1"]
