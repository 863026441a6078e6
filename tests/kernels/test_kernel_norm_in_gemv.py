"""Add + RMSNorm computed by the GEMV that reads it (KILN_NORM_IN_GEMV, tc_gemv's norm) under the
interpreter: the bits of fused_add_rms_norm followed by the tensor-core GEMV (the interpreter
sums a row in one order either way; on the GPU the orders differ, see tests/gpu), the new
residual written once and the old one left alone, no norm launch before qkv_proj and gate_up,
the same greedy tokens and log-probs from an engine, and clear refusals."""

import pytest
import torch
import triton
import triton.language as tl

from kernel_cases import greedy_tokens
from kiln.kernels import PendingNorm, fma_gemv, mma_gemv, rmsnorm
from kiln.layers.linear import Linear
from kiln.layers.norm import RMSNorm
from kiln.models.llama import DecoderLayer


pytestmark = pytest.mark.usefixtures("linears_as_on_cuda")  # tests/kernels/conftest.py


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


def _fp8_weights(n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    return w, torch.rand(n, generator=gen) * 0.01 + 0.001


@pytest.mark.parametrize("rows,k,n,split,eps", [(1, 64, 48, 1, 1e-5), (3, 96, 80, 2, 0.5),
                                                (4, 256, 64, 0, 1e-6)])
def test_tc_gemv_norm_fp8_gives_the_quantizing_launchs_bits(rows, k, n, split, eps, monkeypatch):
    """fp8 W8A8: the norm quantized per token in the GEMV's loads, against the quantizing norm
    kernel followed by the GEMV on its codes (EARLY_W under PDL is the GPU's: tests/gpu)."""
    monkeypatch.setenv("KILN_NORM_IN_GEMV", "1")
    x, residual, g, _, bias = _case(rows, k, n, seed=rows + 10)
    w, ws = _fp8_weights(n, k, seed=rows)
    summed = residual.clone()
    quantized, _ = rmsnorm.fused_add_rms_norm_quant(x, summed, g, eps, torch.float8_e4m3fn)
    m = quantized.m
    want = mma_gemv.tc_gemv(quantized.q[:m], quantized.scale[:m], w, ws, bias, torch.float16,
                            split_k=split)
    pending, new_residual = rmsnorm.defer_add_rms_norm(x, residual, g, eps)
    assert mma_gemv.norm_in_gemv_ok(x, residual, g, w)
    got = mma_gemv.tc_gemv(x, None, w, ws, bias, torch.float16, split_k=split, norm=pending)
    assert torch.equal(got, want)
    assert torch.equal(new_residual, summed)
    # through the fp8 linear's dispatcher, and (switched off) with the norm's own launch first
    from kiln.kernels import quant_matmul

    for flag in ("1", "0"):
        monkeypatch.setenv("KILN_NORM_IN_GEMV", flag)
        pending, new_residual = rmsnorm.defer_add_rms_norm(x, residual, g, eps)
        out = quant_matmul.fp8_linear(pending, w, ws, bias)
        assert torch.equal(new_residual, summed)
        if flag == "1":
            assert torch.equal(out, want)
        else:  # the GEMV quantizes the normed rows itself: the same codes and scales
            assert torch.equal(out, quant_matmul.fp8_linear(quantized, w, ws, bias))


@pytest.mark.parametrize("kind,rows,k,n,row_block", [("int4", 1, 128, 48, 1), ("int4", 3, 256, 64, 16),
                                                     ("int8", 2, 96, 40, 1), ("int8", 4, 64, 24, 1)])
def test_weight_only_gemv_norm_gives_the_launches_bits(kind, rows, k, n, row_block, monkeypatch):
    """int4/int8 weight-only GEMV (the FMA GEMV; the interpreter runs its element paths, the
    GPU its word paths: tests/gpu): the add + RMSNorm in its loads against the norm launch
    followed by the GEMV, bit for bit, and the new residual."""
    from kiln.kernels import int4_bits, quant_matmul

    monkeypatch.setenv("KILN_NORM_IN_GEMV", "1")
    x, residual, g, _, bias = _case(rows, k, n, seed=rows + k)
    gen = torch.Generator().manual_seed(n)
    if kind == "int4":
        qweight = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
        scales = torch.rand(n, k // 64, generator=gen) * 0.05 + 0.005
        if row_block > 1:
            qweight = int4_bits.tile_int4_rows(qweight, row_block, 64)

        def linear(inp):
            return quant_matmul.int4_wo_linear(inp, qweight, scales, 64, bias, row_block=row_block)
    else:
        qweight = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        scales = torch.rand(n, generator=gen) * 0.01 + 0.001

        def linear(inp):
            return quant_matmul.int8_wo_linear(inp, qweight, scales, bias)
    assert quant_matmul.norm_in_wo_gemv_ok(x, residual, g, k, qweight if kind == "int4" else None)
    summed = residual.clone()
    normed, _ = rmsnorm.fused_add_rms_norm(x, summed, g, 1e-5)
    want = linear(normed)
    calls = []
    real = quant_matmul.launch
    monkeypatch.setattr(quant_matmul, "launch",
                        lambda *a, **kw: calls.append(kw.get("norm") is not None) or real(*a, **kw))
    pending, new_residual = rmsnorm.defer_add_rms_norm(x, residual, g, 1e-5)
    assert torch.equal(linear(pending), want) and calls == [True]
    assert torch.equal(new_residual, summed)


@triton.jit
def _words_kernel(x_ptr, r_ptr, g_ptr, out_ptr, rstd, N: tl.constexpr):
    i = tl.arange(0, N)
    xw = tl.load(x_ptr.to(tl.pointer_type(tl.int32)) + i)
    rw = tl.load(r_ptr.to(tl.pointer_type(tl.int32)) + i)
    gw = tl.load(g_ptr.to(tl.pointer_type(tl.int32)) + i)
    tl.store(out_ptr.to(tl.pointer_type(tl.int32)) + i,
             fma_gemv._norm_word(xw, rw, gw, rstd, tl.float16))


@triton.jit
def _values_kernel(x_ptr, r_ptr, g_ptr, out_ptr, rstd, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(out_ptr + i, rmsnorm.norm_values(tl.load(x_ptr + i), tl.load(r_ptr + i),
                                              tl.load(g_ptr + i), rstd))


def test_norm_word_normalizes_both_halves():
    """The word paths' helper (int4 GEMV on the GPU): two float16 values of an int32 word,
    normalized as norm_values does them one by one."""
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(64, generator=gen) * 3).to(torch.float16)
    r = torch.randn(64, generator=gen).to(torch.float16)
    g = (-1 + 2 * torch.rand(64, generator=gen)).to(torch.float16)  # negative halves too
    got, want = torch.empty_like(x), torch.empty_like(x)
    _words_kernel[(1,)](x, r, g, got, 0.37, N=32)
    _values_kernel[(1,)](x, r, g, want, 0.37, N=64)
    assert torch.equal(got, want)
    assert not torch.equal(want, x)  # it did normalize


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
    fp8, ws = _fp8_weights(32, 64, seed=1)
    with pytest.raises(ValueError, match="fp8 weights with their scales"):
        mma_gemv.tc_gemv(x, None, fp8, None, None, torch.float16, norm=pending)
    with pytest.raises(ValueError, match="no x scales"):
        mma_gemv.tc_gemv(x, torch.ones(2, 1), fp8, ws, None, torch.float16, norm=pending)
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

    from kiln.kernels import quant_matmul

    write_random_model("tiny-llama", tmp_path, seed=8, dtype="float16")
    calls = _record_norms(monkeypatch)
    in_gemv = []
    real_gemv = quant_matmul.tc_gemv
    monkeypatch.setattr(quant_matmul, "tc_gemv", lambda *a, **kw: in_gemv.append(
        kw.get("norm") is not None) or real_gemv(*a, **kw))
    runs, launched, fused = {}, {}, {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_NORM_IN_GEMV", flag)
        calls.clear()
        in_gemv.clear()
        runs[flag], llm = greedy_tokens(tmp_path, (40, 9), 3)
        final = llm.engine.model.norm
        launched[flag] = sum(1 for module, rows in calls if rows <= 2 and module is not final)
        fused[flag] = sum(in_gemv)
        assert any(module is final for module, _ in calls)
    assert launched["0"] > 0 and launched["1"] == 0
    assert fused["0"] == 0 and fused["1"] >= launched["0"]
    assert runs["0"] == runs["1"]


def test_fp8_engine_logits_with_and_without_norm_in_gemv(tmp_path, monkeypatch):
    """An fp8 W8A8 engine whose norms quantize for their readers: with KILN_NORM_IN_GEMV=1 the
    qkv_proj and gate_up GEMVs normalize and quantize as they load, the logits bit for bit."""
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.build.engine_dir import load_engine_model
    from kiln.layers.forward_context import build_attention_metadata
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama", tmp_path / "src", seed=9, dtype="float16")
    opts = BuildOptions(str(tmp_path / "src"), str(tmp_path / "fp8"), QuantConfig("fp8"),
                        eval_tokens=0, target_gpu="h200", device="cpu", progress=False)
    model, _ = load_engine_model(build_engine(opts)["path"], "cpu", dtype="float16",
                                 check_target=False)
    assert model.quantize_in_producers() > 0
    args = model.args
    tokens = [5, 9, 13]
    caches = [torch.zeros(2, 4, 16, args.num_key_value_heads, args.head_dim, dtype=torch.float16)
              for _ in range(args.num_hidden_layers)]
    meta = build_attention_metadata([(0, len(tokens), [0, 1, 2, 3])], 16)
    deferred = []
    real = rmsnorm.defer_add_rms_norm

    def counting(*a):
        deferred.append(1)
        return real(*a)

    monkeypatch.setattr("kiln.models.llama.defer_add_rms_norm", counting)
    from kiln.kernels import quant_matmul

    in_gemv = []
    real_gemv = quant_matmul.tc_gemv

    def recording(*a, **kw):
        in_gemv.append(kw.get("norm") is not None)
        return real_gemv(*a, **kw)

    monkeypatch.setattr(quant_matmul, "tc_gemv", recording)
    logits = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_NORM_IN_GEMV", flag)
        deferred.clear()
        in_gemv.clear()
        with torch.no_grad():
            hidden = model(torch.tensor(tokens), torch.arange(len(tokens)), caches, meta)
            logits[flag] = model.compute_logits(hidden)
        # every norm with a residual: all but the first layer's input norm, each in its GEMV
        expected = 2 * args.num_hidden_layers - 1 if flag == "1" else 0
        assert len(deferred) == expected and sum(in_gemv) == expected
    assert torch.equal(logits["1"], logits["0"])


def test_engine_tokens_with_every_decode_fusion(tmp_path, monkeypatch):
    """The three decode fusions together (RoPE in the decode attention, the add + RMSNorm in
    qkv_proj and gate_up, SiLU-mul in down), as call 6 measures them: the greedy tokens and
    log-probs of none of them, bit for bit."""
    from kiln.models.random_model import write_random_model

    write_random_model("tiny-llama", tmp_path, seed=11, dtype="float16")
    runs = {}
    for flag in ("0", "1"):
        for name in ("KILN_ATTN_ROPE", "KILN_NORM_IN_GEMV", "KILN_SILU_IN_DOWN"):
            monkeypatch.setenv(name, flag)
        runs[flag], _ = greedy_tokens(tmp_path, (33, 6, 17), 5)
    assert runs["0"] == runs["1"]


@pytest.mark.parametrize("scheme", ["int4-wo", "int8-wo"])
def test_weight_only_engine_logits_with_and_without_norm_in_gemv(tmp_path, monkeypatch, scheme):
    """int4/int8 weight-only engines: with KILN_NORM_IN_GEMV=1 qkv_proj and gate_up (AWQ scales
    folded into the norms) normalize as they load, the logits bit for bit."""
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.build.engine_dir import load_engine_model
    from kiln.kernels import quant_matmul
    from kiln.layers.forward_context import build_attention_metadata
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama", tmp_path / "src", seed=3, dtype="float16")
    config = QuantConfig(scheme, group_size=64) if scheme == "int4-wo" else QuantConfig(scheme)
    opts = BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"), config, eval_tokens=0,
                        device="cpu", progress=False, calib_samples=2)
    model, _ = load_engine_model(build_engine(opts)["path"], "cpu", dtype="float16")
    args = model.args
    tokens = [7, 3, 19, 4]
    caches = [torch.zeros(2, 4, 16, args.num_key_value_heads, args.head_dim, dtype=torch.float16)
              for _ in range(args.num_hidden_layers)]
    meta = build_attention_metadata([(0, len(tokens), [0, 1, 2, 3])], 16)
    fused = []
    real = quant_matmul.launch
    monkeypatch.setattr(quant_matmul, "launch",
                        lambda *a, **kw: fused.append(kw.get("norm") is not None) or real(*a, **kw))
    logits = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_NORM_IN_GEMV", flag)
        fused.clear()
        with torch.no_grad():
            logits[flag] = model.compute_logits(
                model(torch.tensor(tokens), torch.arange(len(tokens)), caches, meta))
        assert sum(fused) == (2 * args.num_hidden_layers - 1 if flag == "1" else 0)
    assert torch.equal(logits["1"], logits["0"])
