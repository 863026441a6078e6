"""Add + RMSNorm computed by the GEMV that reads it (KILN_NORM_IN_GEMV, tc_gemv's norm) under the
interpreter: the bits of fused_add_rms_norm followed by the tensor-core GEMV (the interpreter
sums a row in one order either way; on the GPU the orders differ, see tests/gpu), the new
residual written once and the old one left alone, no norm launch before qkv_proj and gate_up,
the same greedy tokens and log-probs from an engine, and clear refusals."""

import pytest
import torch

from kernel_cases import greedy_tokens
from kiln.kernels import PendingNorm, mma_gemv, rmsnorm
from kiln.layers.linear import Linear
from kiln.layers.norm import RMSNorm
from kiln.models.llama import DecoderLayer


@pytest.fixture(autouse=True)
def linears_as_on_cuda(monkeypatch):
    """Unquantized decode rows take the tensor-core GEMV here too, as Linear routes them on CUDA
    (on the CPU it takes F.linear, whose bits the deferred norm need not give)."""
    from kiln.kernels import quant_matmul
    from kiln.layers.linear import UnquantizedLinearMethod

    def apply(self, layer, x):
        return quant_matmul.float_gemv_linear(x, layer.weight, layer.bias)

    monkeypatch.setattr(UnquantizedLinearMethod, "apply", apply)


def _case(rows, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen).to(torch.float16)
    residual = (torch.randn(rows, k, generator=gen) * 3).to(torch.float16)
    g = (1 + 0.3 * torch.randn(k, generator=gen)).to(torch.float16)
    w = (torch.randn(n, k, generator=gen) * 0.1).to(torch.float16)
    bias = torch.randn(n, generator=gen).to(torch.float16)
    return x, residual, g, w, bias


@pytest.mark.parametrize("rows,k,n,split,bias,eps", [(1, 64, 48, 1, False, 1e-5),
                                                     (3, 96, 80, 2, True, 0.5),
                                                     (4, 256, 64, 4, False, 1e-6)])
def test_tc_gemv_norm_gives_the_launches_bits(rows, k, n, split, bias, eps, monkeypatch):
    monkeypatch.setenv("KILN_NORM_IN_GEMV", "1")
    x, residual, g, w, b = _case(rows, k, n, seed=rows)
    b = b if bias else None
    summed = residual.clone()
    normed, _ = rmsnorm.fused_add_rms_norm(x, summed, g, eps)
    want = mma_gemv.tc_gemv(normed, None, w, None, b, torch.float16, split_k=split)
    kept = residual.clone()
    pending, new_residual = rmsnorm.defer_add_rms_norm(x, residual, g, eps)
    got = mma_gemv.tc_gemv(x, None, w, None, b, torch.float16, split_k=split, norm=pending)
    assert torch.equal(got, want)
    assert torch.equal(new_residual, summed)  # x + residual, stored once
    assert torch.equal(residual, kept)  # not in place: every program reads it
    assert torch.equal(pending.materialize(), normed)


def test_linear_takes_a_pending_norm_or_runs_it(monkeypatch):
    x, residual, g, w, _ = _case(2, 64, 32, seed=5)
    linear = Linear(64, 32, False, torch.float16, "cpu")
    linear.weight.data.copy_(w)
    normed, summed = rmsnorm.fused_add_rms_norm_ref(x, residual, g, 1e-5)
    want = mma_gemv.tc_gemv(normed, None, w, None, None, torch.float16)
    for flag in ("1", "0"):  # in the GEMV, or (switched off) the norm's own launch first
        monkeypatch.setenv("KILN_NORM_IN_GEMV", flag)
        pending, new_residual = rmsnorm.defer_add_rms_norm(x, residual, g, 1e-5)
        assert torch.equal(linear(pending), want)
        assert torch.equal(new_residual, summed)


def test_tc_gemv_norm_refuses(monkeypatch):
    x, residual, g, w, _ = _case(2, 64, 32, seed=2)
    pending, _ = rmsnorm.defer_add_rms_norm(x, residual, g, 1e-5)
    with pytest.raises(ValueError, match="without silu"):
        mma_gemv.tc_gemv(torch.cat([x, x], 1), None, w, None, None, torch.float16, silu=True,
                         norm=pending)
    with pytest.raises(ValueError, match="weight of \\[64\\]"):
        short, _ = rmsnorm.defer_add_rms_norm(x, residual, g[:32], 1e-5)
        mma_gemv.tc_gemv(x, None, w, None, None, torch.float16, norm=short)
    with pytest.raises(ValueError, match="stand for x2's rows"):
        mma_gemv.tc_gemv(x.clone(), None, w, None, None, torch.float16, norm=pending)
    monkeypatch.setenv("KILN_TC_STREAM_K", "1")
    with pytest.raises(ValueError, match="split-K"):
        mma_gemv.tc_gemv(x, None, w, None, None, torch.float16, norm=pending)


def test_norm_in_gemv_not_taken_where_it_cannot_be(monkeypatch):
    x, residual, g, w, _ = _case(2, 64, 32, seed=3)
    monkeypatch.setenv("KILN_NORM_IN_GEMV", "1")
    assert mma_gemv.norm_in_gemv_ok(x, residual, g, w)
    many = torch.randn(mma_gemv.NORM_IN_GEMV_MAX_M + 1, 64).to(torch.float16)
    assert not mma_gemv.norm_in_gemv_ok(many, many, g, w)  # rows past NORM_IN_GEMV_MAX_M
    assert not mma_gemv.norm_in_gemv_ok(x.float(), residual.float(), g.float(), w.float())
    assert not mma_gemv.norm_in_gemv_ok(x, residual, g.float(), w)  # a float32 norm weight
    assert not mma_gemv.norm_in_gemv_ok(x[:, :48], residual[:, :48], g[:48], w[:, :48])  # K % 32
    assert not mma_gemv.norm_in_gemv_ok(x.t().contiguous().t(), residual, g, w)
    monkeypatch.setenv("KILN_TC_STREAM_K", "1")
    assert not mma_gemv.norm_in_gemv_ok(x, residual, g, w)
    monkeypatch.setenv("KILN_TC_STREAM_K", "0")
    monkeypatch.setenv("KILN_TC_GEMV", "fp8")  # float rows off the tensor-core GEMV
    assert not mma_gemv.norm_in_gemv_ok(x, residual, g, w)
    monkeypatch.setenv("KILN_TC_GEMV", "1")
    monkeypatch.setenv("KILN_NORM_IN_GEMV", "0")
    assert not mma_gemv.norm_in_gemv_ok(x, residual, g, w)
    # a quantizing norm (an fp8 reader) keeps its own launch
    monkeypatch.setenv("KILN_NORM_IN_GEMV", "1")
    norm = RMSNorm(64, 1e-5, torch.float16, "cpu")
    reader = Linear(64, 32, False, torch.float16, "cpu")
    assert isinstance(DecoderLayer._norm(norm, reader, x, residual)[0], PendingNorm)
    norm.quant_dtype = torch.float8_e4m3fn
    assert not isinstance(DecoderLayer._norm(norm, reader, x, residual)[0], PendingNorm)


def _record_norms(monkeypatch):
    """(module, rows) of every add + RMSNorm an RMSNorm module launches itself."""
    calls = []
    real = RMSNorm.forward

    def recording(self, x, residual=None):
        if residual is not None:
            calls.append((self, x.shape[0]))
        return real(self, x, residual)

    monkeypatch.setattr(RMSNorm, "forward", recording)
    return calls


def test_engine_tokens_with_and_without_norm_in_gemv(tmp_path, monkeypatch):
    """Greedy tokens and their log-probs, bit for bit, with the add + RMSNorm in the GEMVs and
    without (decode rows on the tensor-core GEMV either way); deferred, the layers' norms launch
    nothing over decode rows (the final norm, read by the LM head, still does)."""
    from kiln.models.random_model import write_random_model

    write_random_model("tiny-llama", tmp_path, seed=8, dtype="float16")
    calls = _record_norms(monkeypatch)
    runs, launched = {}, {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_NORM_IN_GEMV", flag)
        calls.clear()
        runs[flag], llm = greedy_tokens(tmp_path, (40, 9), 3)
        final = llm.engine.model.norm
        launched[flag] = sum(1 for module, rows in calls if rows <= 2 and module is not final)
        assert any(module is final for module, _ in calls)
    assert launched["0"] > 0 and launched["1"] == 0
    assert runs["0"] == runs["1"]
