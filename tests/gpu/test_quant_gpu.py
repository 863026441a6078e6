"""Quantized matmul kernels on CUDA (bf16/fp16) against the float32 references.

Covers every path the dispatchers take: int4/int8 weight-only GEMV (M <= 4) and tl.dot GEMM
with and without split-K, fp8 GEMV / fp8 tl.dot (M <= 16) / torch._scaled_mm (M > 16), int8
W8A8 GEMV / int8 tl.dot GEMM (and torch._int_mm), per-token activation quantization bit-exact
against torch. Llama-3-8B shapes included. Skipped without CUDA; allocations are NaN-poisoned.
"""

from __future__ import annotations


import pytest
import torch
import triton

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from kiln.kernels import quant_matmul as qm  # noqa: E402
from kiln.kernels import fma_gemv, int4_bits, mma_gemv, qmm_common  # noqa: E402
from kiln.kernels.quant_ref import (fp8_linear_ref, int4_wo_linear_ref, int8_sq_linear_ref,  # noqa: E402
                                    int8_wo_linear_ref)
from kiln.kernels.quant_act import quant_per_token, quant_per_token_ref  # noqa: E402
from gpu_helpers import rel_err  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16]
# Norm-wise relative error against the float32 reference: the kernels round x-dtype inputs
# exactly, so the error is the output rounding (bf16 ~ 2**-9) plus float32 summation order.
TOL = {torch.bfloat16: 8e-3, torch.float16: 2e-3, torch.float32: 1e-5}
MS = [1, 3, 4, 5, 16, 17, 64, 100, 300]
SHAPES = [(96, 384), (4096, 4096), (6144, 4096), (4096, 14336)]  # (N, K); small ragged + Llama-3-8B


@pytest.fixture(autouse=True)
def triton_path(monkeypatch):
    """Never let a KILN_KERNELS=reference in the environment turn these into self-comparisons.

    Default launch configs (no autotuning) keep compile time down; test_autotuned_paths runs
    the autotuner.
    """
    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.delenv("KILN_INT4_ROW_BLOCK", raising=False)  # the default, blocks of 16 (others set it)
    monkeypatch.setenv("KILN_QUANT_AUTOTUNE", "0")


def randx(m, k, dtype, gen):
    return (torch.randn(m, k, generator=gen, device="cuda") * 2).to(dtype)


def int4_case(n, k, group, gen):
    qweight = torch.randint(0, 256, (n, k // 2), generator=gen, device="cuda", dtype=torch.uint8)
    scales = torch.rand(n, k // group, generator=gen, device="cuda") * 0.05 + 0.005
    return qweight, scales


def int8_case(n, k, gen):
    weight = torch.randint(-127, 128, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    return weight, torch.rand(n, generator=gen, device="cuda") * 0.01 + 0.001


def fp8_case(n, k, gen):
    w = (torch.randn(n, k, generator=gen, device="cuda") * 100).clamp(-448, 448)
    return w.to(torch.float8_e4m3fn), torch.rand(n, generator=gen, device="cuda") * 0.01 + 0.001


def check(out, ref, dtype, m, n, tol=None):
    """Shape, dtype, no NaN, and relative error under tol (default TOL[dtype])."""
    assert out.shape == (m, n) and out.dtype == dtype
    assert not out.isnan().any()
    assert rel_err(out, ref) < (tol or TOL)[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", MS)
def test_int4_wo(m, shape, dtype, gen, poison_allocations):
    n, k = shape
    qweight, scales = int4_case(n, k, 128, gen)
    x = randx(m, k, dtype, gen)
    bias = torch.randn(n, generator=gen, device="cuda").to(dtype)
    check(qm.int4_wo_linear(x, qweight, scales, 128, bias),
          int4_wo_linear_ref(x, qweight, scales, 128, bias), dtype, m, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(96, 384), (4096, 14336), (28672, 4096)])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_int4_gemv_float16_products(m, shape, dtype, gen, monkeypatch, poison_allocations):
    """The GEMV's float16 products over double words (INT4_ASM 4/5, the default for 16-bit x)
    and over words (2/3, KILN_INT4_F16=1), and its float32 ones (KILN_INT4_F16=0) against the
    reference, one row at every base launch configuration, more rows at the default one; the
    paths agree to within the output's rounding."""
    n, k = shape
    qweight, scales = int4_case(n, k, 128, gen)
    x = randx(m, k, dtype, gen)
    ref = int4_wo_linear_ref(x, qweight, scales, 128)
    monkeypatch.delenv("KILN_INT4_F16", raising=False)
    assert fma_gemv.int4_asm_mode(x, qweight) == (4 if dtype == torch.bfloat16 else 5)
    for config in fma_gemv.GEMV_BASE_CONFIGS if m == 1 else [None]:
        outs = []
        for f16 in ("2", "1", "0"):
            monkeypatch.setenv("KILN_INT4_F16", f16)
            out = qm.launch(x, qweight, scales, scales.stride(1), 128, qm.W_INT4, None, dtype,
                            "gemv", config=config)
            check(out, ref, dtype, m, n)
            outs.append(out.float())
        assert rel_err(outs[0], outs[2]) < TOL[dtype] and rel_err(outs[1], outs[2]) < TOL[dtype]


@pytest.mark.parametrize("f16", ["2", "1"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3])
def test_int4_gemv_float16_overflow_falls_back(m, dtype, f16, gen, monkeypatch, poison_allocations):
    """x beyond what float16 products hold (values past float16's range for bfloat16 x, products
    past it for float16 x) in a few K columns: the tiles that overflow are computed again in
    float32, so the result is the reference's, finite, in every output column."""
    monkeypatch.setenv("KILN_INT4_F16", f16)
    n, k = 4096, 4096
    qweight, scales = int4_case(n, k, 128, gen)
    x = randx(m, k, dtype, gen)
    big = 1.0e5 if dtype == torch.bfloat16 else 3.0e4
    x[:, 1000] = big
    x[:, 2051] = -big / 2
    ref = int4_wo_linear_ref(x, qweight, scales, 128)
    assert ref.isfinite().all()
    out = qm.int4_wo_linear(x, qweight, scales, 128)
    assert out.isfinite().all()
    check(out, ref, dtype, m, n)


@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("m", [1, 17])
def test_int4_wo_small_groups(m, group, gen, poison_allocations):
    n, k = 320, 1024
    qweight, scales = int4_case(n, k, group, gen)
    x = randx(m, k, torch.float16, gen)
    check(qm.int4_wo_linear(x, qweight, scales, group), int4_wo_linear_ref(x, qweight, scales,
                                                                           group),
          torch.float16, m, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(72, 200)])
@pytest.mark.parametrize("m", MS)
def test_int8_wo(m, shape, dtype, gen, poison_allocations):
    n, k = shape
    weight, scales = int8_case(n, k, gen)
    x = randx(m, k, dtype, gen)
    bias = torch.randn(n, generator=gen, device="cuda").to(dtype)
    check(qm.int8_wo_linear(x, weight, scales, bias), int8_wo_linear_ref(x, weight, scales, bias),
          dtype, m, n)


# torch._scaled_mm (M > SMALL_M) with fast accumulation (KILN_FP8_FAST_ACCUM, the default): the
# tensor cores' own fp8 accumulator loses bits with K. Its float16 results (torch's row-wise path
# returns bfloat16, cast afterwards) measured 2.2e-3 (K 4096) to 3.3e-3 (K 14336) on the H200.
FAST_ACCUM_TOL = {torch.bfloat16: 8e-3, torch.float16: 5e-3}


@pytest.mark.parametrize("fast", ["1", "0"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", MS)
def test_fp8(m, shape, dtype, fast, gen, poison_allocations, monkeypatch):
    monkeypatch.setenv("KILN_FP8_FAST_ACCUM", fast)
    n, k = shape
    weight, ws = fp8_case(n, k, gen)
    x = randx(m, k, dtype, gen)
    bias = torch.randn(n, generator=gen, device="cuda").to(dtype)
    check(qm.fp8_linear(x, weight, ws, bias), fp8_linear_ref(x, weight, ws, bias), dtype, m, n,
          FAST_ACCUM_TOL if fast == "1" and m > qm.SMALL_M else None)


@pytest.mark.parametrize("m", [5, 17, 64])
def test_fp8_triton_gemm_at_larger_m(m, gen, poison_allocations):
    """The fp8 tl.dot kernel (used when _scaled_mm cannot run) beyond the sizes it serves by default."""
    n, k = 4096, 4096
    weight, ws = fp8_case(n, k, gen)
    x = randx(m, k, torch.bfloat16, gen)
    xq, sx = quant_per_token(x, torch.float8_e4m3fn)
    out = qm.launch(xq, weight, ws, 0, qm.KTILE_8BIT, qm.W_FP8, None, torch.bfloat16, "gemm", x_scales=sx)
    check(out, fp8_linear_ref(x, weight, ws), torch.bfloat16, m, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(72, 200)])
@pytest.mark.parametrize("m", MS)
def test_int8_sq(m, shape, dtype, gen, poison_allocations):
    n, k = shape
    weight, ws = int8_case(n, k, gen)
    x = randx(m, k, dtype, gen)
    bias = torch.randn(n, generator=gen, device="cuda").to(dtype)
    check(qm.int8_sq_linear(x, weight, ws, bias), int8_sq_linear_ref(x, weight, ws, bias), dtype,
          m, n)


@pytest.mark.parametrize("m", [17, 64, 300])
def test_int8_sq_int_mm(m, gen):
    n, k = 4096, 4096
    weight, ws = int8_case(n, k, gen)
    x = randx(m, k, torch.bfloat16, gen)
    check(qm.int8_sq_int_mm(x, weight, ws, None, torch.bfloat16), int8_sq_linear_ref(x, weight, ws),
          torch.bfloat16, m, n)


@pytest.mark.parametrize("split", [2, 3, 8])
@pytest.mark.parametrize("path,m", [("gemv", 1), ("gemv", 4), ("gemm", 16)])
def test_forced_split_k(path, m, split, gen, poison_allocations):
    n, k = 4096, 14336
    qweight, scales = int4_case(n, k, 128, gen)
    x = randx(m, k, torch.bfloat16, gen)
    bias = torch.randn(n, generator=gen, device="cuda").to(torch.bfloat16)
    out = qm.launch(x, qweight, scales, scales.stride(1), 128, qm.W_INT4, bias, torch.bfloat16, path,
                    split_k=split)
    check(out, int4_wo_linear_ref(x, qweight, scales, 128, bias), torch.bfloat16, m, n)


def test_3d_input_and_float32(gen, poison_allocations):
    n, k = 256, 512
    qweight, scales = int4_case(n, k, 128, gen)
    x = (torch.randn(2, 9, k, generator=gen, device="cuda")).float()
    out = qm.int4_wo_linear(x, qweight, scales, 128)
    assert out.shape == (2, 9, n)
    assert rel_err(out, int4_wo_linear_ref(x, qweight, scales, 128)) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
@pytest.mark.parametrize("qdtype", [torch.float8_e4m3fn, torch.int8])
def test_activation_quant_bit_exact(qdtype, dtype, gen, poison_allocations):
    x = randx(37, 4096, dtype, gen)
    x[3] *= 500
    x[4] = 0.0
    q, s = quant_per_token(x, qdtype)
    q_ref, s_ref = quant_per_token_ref(x, qdtype)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def test_graph_capture_after_warmup(gen):
    """Decode paths replay inside a CUDA graph once autotuning has happened eagerly."""
    n, k = 4096, 4096
    qweight, scales = int4_case(n, k, 128, gen)
    weight, ws = fp8_case(n, k, gen)
    x = randx(1, k, torch.bfloat16, gen)
    outs = [qm.int4_wo_linear(x, qweight, scales, 128), qm.fp8_linear(x, weight, ws)]  # warm-up
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        a = qm.int4_wo_linear(x, qweight, scales, 128)
        b = qm.fp8_linear(x, weight, ws)
    x.copy_(randx(1, k, torch.bfloat16, gen))
    g.replay()
    torch.cuda.synchronize()
    assert rel_err(a, int4_wo_linear_ref(x, qweight, scales, 128)) < TOL[torch.bfloat16]
    assert rel_err(b, fp8_linear_ref(x, weight, ws)) < TOL[torch.bfloat16]
    del outs


@pytest.mark.parametrize("m", [1, 8, 64, 2048])
def test_autotuned_paths(m, gen, monkeypatch, poison_allocations):
    """With autotuning on, every candidate the tuner may pick computes the same product."""
    monkeypatch.setenv("KILN_QUANT_AUTOTUNE", "1")
    n, k = 4096, 4096
    qweight, scales = int4_case(n, k, 128, gen)
    w8, s8 = int8_case(n, k, gen)
    x = randx(m, k, torch.bfloat16, gen)
    check(qm.int4_wo_linear(x, qweight, scales, 128), int4_wo_linear_ref(x, qweight, scales, 128),
          torch.bfloat16, m, n)
    check(qm.int8_sq_linear(x, w8, s8), int8_sq_linear_ref(x, w8, s8), torch.bfloat16, m, n)
    assert qm.tuned_kernels()["gemv" if m <= qm.GEMV_MAX_M else "gemm"].cache


def test_build_time_tuning_seeds_the_autotuners(gen, monkeypatch):
    """`kiln build` on the GPU tunes every quantized layer shape; an engine load seeds the
    autotuners with those choices, after which the same shapes launch without tuning."""
    import triton

    from kiln.build.tuning import apply_kernel_tuning, tune_quant_kernels
    from kiln.layers.linear import Linear
    from kiln.quant.int4 import Int4WeightOnlyLinearMethod

    monkeypatch.setenv("KILN_QUANT_AUTOTUNE", "1")
    layer = Linear(1024, 768, bias=False, dtype=torch.bfloat16, device="cuda",
                   method=Int4WeightOnlyLinearMethod(group_size=128))
    qweight, scales = int4_case(768, 1024, 128, gen)
    layer.qweight.data.copy_(qweight)
    layer.scales.data.copy_(scales)
    model = torch.nn.Sequential(layer)
    saved = {name: dict(k.cache) for name, k in qm.tuned_kernels().items()}
    for k in qm.tuned_kernels().values():
        k.cache.clear()
    try:
        record = tune_quant_kernels(model, torch.device("cuda"), torch.bfloat16)
        assert record["status"] == "tuned" and record["triton"] == triton.__version__
        assert {e["kernel"] for e in record["results"]} == {"gemv", "gemm"}
        assert len(record["results"]) == len(record["m_values"])  # one shape, one key per M
        for k in qm.tuned_kernels().values():
            k.cache.clear()
        assert apply_kernel_tuning({"kernel_tuning": record}, "cuda") == len(record["results"])
        keys = {name: set(k.cache) for name, k in qm.tuned_kernels().items()}

        def no_bench(*args, **kwargs):
            raise AssertionError("a seeded shape was tuned again")

        for k in qm.tuned_kernels().values():
            monkeypatch.setattr(k, "_bench", no_bench)
        for m in record["m_values"]:
            x = randx(m, 1024, torch.bfloat16, gen)
            out = layer(x)
            assert rel_err(out, int4_wo_linear_ref(x, qweight, scales, 128)) < TOL[torch.bfloat16]
        assert {name: set(k.cache) for name, k in qm.tuned_kernels().items()} == keys
    finally:
        for name, k in qm.tuned_kernels().items():
            k.cache.clear()
            k.cache.update(saved[name])


def assert_switch_keeps_bits(monkeypatch, var, run, refill, replays, check=lambda: None, on="1"):
    """``run()`` gives the same bits with the environment switch ``var`` at ``on`` as at 0,
    eagerly and across replays of a CUDA graph captured with it at ``on`` (``refill()`` changes
    the inputs in place before each replay); ``check()`` runs after the eager comparison and at
    the end."""
    monkeypatch.setenv(var, "0")
    want = run()
    monkeypatch.setenv(var, on)
    assert all(torch.equal(a, b) for a, b in zip(run(), want))
    check()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = run()
    for _ in range(replays):
        refill()
        g.replay()
        torch.cuda.synchronize()
        monkeypatch.setenv(var, "0")
        want = run()
        monkeypatch.setenv(var, on)
        assert all(torch.equal(a, b) for a, b in zip(outs, want))
    check()


@pytest.mark.parametrize("tc", ["0", "1"])
@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_gemv_fused_split_k_bit_identical_and_replayable(m, shape, tc, gen, monkeypatch):
    """KILN_QUANT_FUSED_SPLITK=1 (the GEMV sums its own K splits; arrival counters in global
    memory): the same bits as the separate reduce kernel, eagerly and across CUDA-graph replays
    (each replay must find the counters re-armed). fp8 through the FMA GEMV (tc 0) and the
    tensor-core GEMV (tc 1)."""
    monkeypatch.setenv("KILN_TC_GEMV", tc)
    n, k = shape
    qweight, scales = int4_case(n, k, 128, gen)
    weight, ws = fp8_case(n, k, gen)
    x = randx(m, k, torch.bfloat16, gen)

    def both():
        return qm.int4_wo_linear(x, qweight, scales, 128), qm.fp8_linear(x, weight, ws)

    def counters_rearmed():
        assert not bool(qmm_common.split_locks(x.device).any())

    assert_switch_keeps_bits(monkeypatch, "KILN_QUANT_FUSED_SPLITK", both,
                             lambda: x.copy_(randx(m, k, torch.bfloat16, gen)), 3,
                             counters_rearmed)


def gemv_products(m, shape, gen, int4=True):
    """(products, refill) for the GEMV switch tests, over a bfloat16 x [m, K]: products() the
    decode products of x with random int4 (unless int4 is False), fp8 and bf16 weights of shape
    (N, K) through kiln's dispatchers; refill() new values in x, in place."""
    n, k = shape
    qweight, scales = int4_case(n, k, 128, gen) if int4 else (None, None)
    weight, ws = fp8_case(n, k, gen)
    wf = (torch.randn(n, k, generator=gen, device="cuda") * 0.02).to(torch.bfloat16)
    x = randx(m, k, torch.bfloat16, gen)

    def products():
        return ([qm.int4_wo_linear(x, qweight, scales, 128)] if int4 else []) + [
            qm.fp8_linear(x, weight, ws), qm.float_gemv_linear(x, wf)]

    return products, lambda: x.copy_(randx(m, k, torch.bfloat16, gen))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="PDL and the bulk L2 prefetch need sm90+")
@pytest.mark.parametrize("early", ["0", "1"])
@pytest.mark.parametrize("tc", ["0", "1"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", [1, 4])
def test_gemv_weight_prefetch_changes_no_bit(m, shape, tc, early, gen, monkeypatch):
    """KILN_GEMV_PREFETCH (the GEMVs ask for their first weight steps in L2 before waiting for the
    kernel before, under PDL, with the early trigger and a budget or without): the same bits, eagerly and
    across CUDA-graph replays, for int4, fp8 and bf16 weights (fp8 and bf16 through the FMA GEMV
    with tc 0 and the tensor-core GEMV with tc 1)."""
    monkeypatch.setenv("KILN_TC_GEMV", tc)
    monkeypatch.setenv("KILN_PDL", "1")
    monkeypatch.setenv("KILN_PDL_EARLY", early)
    # with the early trigger also a launch-wide budget (1 MiB: whole slices of the small shape,
    # part of a step or none of the 8B shapes')
    monkeypatch.setenv("KILN_GEMV_PREFETCH_MB", "1" if early == "1" else "0")
    products, refill = gemv_products(m, shape, gen)
    assert_switch_keeps_bits(monkeypatch, "KILN_GEMV_PREFETCH", products, refill, 2)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="PDL needs sm90+")
@pytest.mark.parametrize("steps", ["1", "2", "4"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", [1, 4])
def test_tensor_core_gemv_early_weights_change_no_bit(m, shape, steps, gen, monkeypatch):
    """KILN_GEMV_EARLY_W (the tensor-core GEMV loads its first 1, 2 or 4 weight tiles before waiting
    for the kernel before, under PDL): the same bits, eagerly and across CUDA-graph replays, for
    fp8 and bf16 weights."""
    monkeypatch.setenv("KILN_TC_GEMV", "1")
    monkeypatch.setenv("KILN_PDL", "1")
    products, refill = gemv_products(m, shape, gen, int4=False)
    assert_switch_keeps_bits(monkeypatch, "KILN_GEMV_EARLY_W", products, refill, 2, on=steps)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="PDL needs sm90+")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", [1, 4])
def test_fma_gemv_early_group_changes_no_bit(m, shape, gen, monkeypatch):
    """KILN_GEMV_EARLY_GROUP=1 (the FMA GEMV loads its first K group before waiting for the
    kernel before, under PDL): the same bits, eagerly and across CUDA-graph replays, for int4
    (row-major and in blocks of 16 rows), fp8 and bf16 weights through the FMA GEMV."""
    monkeypatch.setenv("KILN_TC_GEMV", "0")
    monkeypatch.setenv("KILN_PDL", "1")
    products, refill = gemv_products(m, shape, gen)
    n, k = shape
    qweight, scales = int4_case(n, k, 128, gen)
    tiled = int4_bits.tile_int4_rows(qweight, 16, 128) if n % 16 == 0 else None
    x = randx(m, k, torch.bfloat16, gen)

    def all_products():
        blocked = ([qm.int4_wo_linear(x, tiled, scales, 128, row_block=16)]
                   if tiled is not None else [])
        return products() + blocked

    def refill_all():
        refill()
        x.copy_(randx(m, k, torch.bfloat16, gen))

    assert_switch_keeps_bits(monkeypatch, "KILN_GEMV_EARLY_GROUP", all_products, refill_all, 2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_gemv_quantizing_its_own_activations_bit_identical(m, shape, gen, monkeypatch):
    """KILN_QUANT_FUSED_ACT=1 (the W8A8 GEMV quantizes x per token itself, no separate launch):
    the same bits as the quantization kernel plus the GEMV, for fp8 and int8, eagerly and across
    CUDA-graph replays (fp8 on the FMA GEMV: KILN_TC_GEMV=0)."""
    monkeypatch.setenv("KILN_TC_GEMV", "0")
    n, k = shape
    w8, ws8 = fp8_case(n, k, gen)
    wi8 = torch.randint(-127, 128, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    wsi8 = torch.rand(n, generator=gen, device="cuda") * 0.01 + 0.001
    x = randx(m, k, torch.bfloat16, gen)
    x[0] *= 50

    def both():
        return qm.fp8_linear(x, w8, ws8), qm.int8_sq_linear(x, wi8, wsi8)

    assert_switch_keeps_bits(monkeypatch, "KILN_QUANT_FUSED_ACT", both,
                             lambda: x.copy_(randx(m, k, torch.bfloat16, gen)), 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_float_gemv_against_linear(m, shape, dtype, gen, poison_allocations):
    """KILN_TRITON_GEMV's path: unquantized weights through the GEMV kernel vs float32 F.linear."""
    n, k = shape
    w = (torch.randn(n, k, generator=gen, device="cuda") * 0.02).to(dtype)
    bias = torch.randn(n, generator=gen, device="cuda").to(dtype)
    x = randx(m, k, dtype, gen)
    ref = torch.nn.functional.linear(x.float(), w.float(), bias.float())
    check(qm.float_gemv_linear(x, w, bias), ref.to(dtype), dtype, m, n)


def test_unquantized_linear_uses_the_gemv_only_when_asked(gen, monkeypatch):
    from kiln.layers.linear import Linear

    layer = Linear(4096, (4096, 1024, 1024), bias=False, dtype=torch.bfloat16, device="cuda")
    layer.weight.data.copy_(torch.randn(6144, 4096, generator=gen, device="cuda") * 0.02)
    x = randx(2, 4096, torch.bfloat16, gen)
    ref = torch.nn.functional.linear(x.float(), layer.weight.float())
    monkeypatch.setenv("KILN_TRITON_GEMV", "0")
    monkeypatch.setenv("KILN_TC_GEMV", "0")
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))
    monkeypatch.setenv("KILN_TRITON_GEMV", "1")
    check(layer(x), ref.to(torch.bfloat16), torch.bfloat16, 2, 6144)
    monkeypatch.setenv("KILN_TRITON_GEMV", "0")
    monkeypatch.setenv("KILN_TC_GEMV", "float")
    check(layer(x), ref.to(torch.bfloat16), torch.bfloat16, 2, 6144)
    assert not torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))  # not cuBLAS
    many = randx(64, 4096, torch.bfloat16, gen)  # prefill rows stay on cuBLAS
    assert torch.equal(layer(many), torch.nn.functional.linear(many, layer.weight))


@pytest.mark.parametrize("shape", [(6144, 4096), (4096, 14336)])
@pytest.mark.parametrize("cfg",
                         range(len(fma_gemv.GEMV_BASE_CONFIGS) + len(fma_gemv.GEMV_SPLIT_CONFIGS)
                               + len(fma_gemv.GEMV_STREAM_K_CONFIGS)))
def test_every_gemv_candidate_including_named_splits(cfg, shape, gen, poison_allocations):
    """Each GEMV launch configuration the autotuner may pick (those naming their K split too,
    KILN_GEMV_TUNE_SPLIT=1, and the stream-K ones, tuned by default) gives the reference's
    products, int4 and fp8, at batch 1 and 4."""
    n, k = shape
    config = (fma_gemv.GEMV_BASE_CONFIGS + fma_gemv.GEMV_SPLIT_CONFIGS
              + fma_gemv.GEMV_STREAM_K_CONFIGS)[cfg]
    qweight, scales = int4_case(n, k, 128, gen)
    w8, s8 = fp8_case(n, k, gen)
    for m in (1, 4):
        x = randx(m, k, torch.bfloat16, gen)
        out = qm.launch(x, qweight, scales, scales.stride(1), 128, qm.W_INT4, None, torch.bfloat16,
                        "gemv", config=config)
        check(out, int4_wo_linear_ref(x, qweight, scales, 128), torch.bfloat16, m, n)
        xq, sx = quant_per_token(x, torch.float8_e4m3fn)
        out = qm.launch(xq, w8, s8, 0, qm.KTILE_8BIT, qm.W_FP8, None, torch.bfloat16, "gemv",
                        x_scales=sx, config=config)
        check(out, fp8_linear_ref(x, w8, s8), torch.bfloat16, m, n)


def codes_match_but_for_sum_order(qa, sa, qb, sb) -> bool:
    """Whether fp8 codes qa / scales sa equal qb / sb bit for bit (True), or differ only as a
    float32 sum order can make them (False): scales within one bf16 ulp (the row's largest
    element may move too), codes at most one fp8 step apart in at most 1e-5 of the elements;
    anything else fails the test."""
    same = torch.equal(qa.view(torch.uint8), qb.view(torch.uint8)) and torch.equal(sa, sb)
    if not same:
        assert ((sa - sb).abs() <= sb.abs() * 2 ** -7).all()
        bad = qa.view(torch.uint8) != qb.view(torch.uint8)
        assert bad.sum().item() <= max(1, qa.numel() // 100_000)
        a, b = qa[bad].float(), qb[bad].float()
        assert ((a - b).abs() <= torch.maximum(a.abs(), b.abs()) / 8 + 2 ** -9).all()
    return same


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 20, 1000])
def test_producers_quantize_bit_identically(m, dtype, gen, poison_allocations):
    """The quantizing RMSNorm and SiLU-mul (KILN_PRODUCER_QUANT) give the codes and scales of
    the separate quantization launch, and fp8_linear on them the bits of the usual path (GEMV,
    Triton GEMM and torch._scaled_mm row counts). One exception, seen on the H200 at 1000 rows:
    the quantizing RMSNorm sums the row's squares in another order than the plain one (the
    compiler lays the row out for its fp8 stores), so about one element in a million lands one
    output ulp away and, where that crosses a rounding boundary, one fp8 step away; then the
    codes may differ there (at most one step, at most 1e-5 of them) and the products are close."""
    from kiln.kernels.activation import silu_and_mul, silu_and_mul_quant
    from kiln.kernels.rmsnorm import fused_add_rms_norm, fused_add_rms_norm_quant

    hidden, inter = 4096, 14336
    x = randx(m, hidden, dtype, gen)
    residual = randx(m, hidden, dtype, gen)
    w = (torch.rand(hidden, generator=gen, device="cuda") + 0.5).to(dtype)
    normed, res_a = fused_add_rms_norm(x, residual.clone(), w, 1e-5)
    rows, res_b = fused_add_rms_norm_quant(x, residual.clone(), w, 1e-5, torch.float8_e4m3fn)
    assert torch.equal(res_a, res_b)
    q, s = quant_per_token(normed, torch.float8_e4m3fn)
    w8, s8 = fp8_case(6144, hidden, gen)
    if codes_match_but_for_sum_order(rows.q[:m], rows.scale[:m], q, s):
        assert torch.equal(qm.fp8_linear(rows, w8, s8), qm.fp8_linear(normed, w8, s8))
    else:
        check(qm.fp8_linear(rows, w8, s8), qm.fp8_linear(normed, w8, s8), dtype, m, 6144)
    gate_up = randx(m, 2 * inter, dtype, gen)
    act = silu_and_mul(gate_up)
    arows = silu_and_mul_quant(gate_up, torch.float8_e4m3fn)
    q, s = quant_per_token(act, torch.float8_e4m3fn)
    assert torch.equal(arows.q[:m].view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(arows.scale[:m], s)
    w8, s8 = fp8_case(hidden, inter, gen)
    assert torch.equal(qm.fp8_linear(arows, w8, s8), qm.fp8_linear(act, w8, s8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6144, 4096), (4096, 14336), (96, 384)])
@pytest.mark.parametrize("m", [1, 4, 16])
def test_int4_tensor_core_gemv(m, shape, dtype, gen, poison_allocations):
    """The tensor-core int4 product (KILN_INT4_TC) against the reference, the PTX dequantization
    included (the CPU interpreter runs the plain one)."""
    n, k = shape
    qweight, scales = int4_case(n, k, 128, gen)
    x = randx(m, k, dtype, gen)
    bias = torch.randn(n, generator=gen, device="cuda").to(dtype)
    for block_n in (64, 128):
        for one_dot in (True, False):
            out = mma_gemv.int4_tc_gemv(x, qweight, scales, 128, bias, dtype, block_n=block_n,
                                        one_dot=one_dot)
            check(out, int4_wo_linear_ref(x, qweight, scales, 128, bias), dtype, m, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6144, 4096), (4096, 14336), (96, 384)])
@pytest.mark.parametrize("m", [1, 4, 16])
def test_tensor_core_gemv_every_candidate(m, shape, dtype, gen, poison_allocations):
    """The tensor-core GEMV (KILN_TC_GEMV), fp8 codes and unquantized weights, at every launch
    configuration the autotuner may pick (named splits included, fused split-K reduce) against
    the references, with bias."""
    n, k = shape
    w8, s8 = fp8_case(n, k, gen)
    w16 = (torch.randn(n, k, generator=gen, device="cuda") * 0.02).to(dtype)
    x = randx(m, k, dtype, gen)
    bias = torch.randn(n, generator=gen, device="cuda").to(dtype)
    xq, sx = quant_per_token(x, torch.float8_e4m3fn)
    ref8 = fp8_linear_ref(x, w8, s8, bias)
    ref16 = (x.float() @ w16.float().T + bias.float())
    for config in mma_gemv.TC_GEMV_CONFIGS_FP8:
        check(mma_gemv.tc_gemv(xq, sx, w8, s8, bias, dtype, config=config), ref8, dtype, m, n)
    for config in mma_gemv.TC_GEMV_CONFIGS_FLOAT:
        check(mma_gemv.tc_gemv(x, None, w16, None, bias, dtype, config=config), ref16.to(dtype),
              dtype, m, n)


@pytest.mark.parametrize("tile", [(64, 128, 4, 4, 2), (64, 128, 4, 6, 1), (64, 64, 4, 6, 3),
                                  (128, 64, 4, 4, 2)])
@pytest.mark.parametrize("shape", [(6144, 4096), (4096, 4096), (4096, 14336), (96, 384)])
@pytest.mark.parametrize("m", [1, 16])
def test_tensor_core_gemv_flat_stream_k_gives_the_tile_loop_bits(m, shape, tile, gen,
                                                                 poison_allocations):
    """Stream-K as one loop over a program's units (FLAT) gives the bits of the loop per tile,
    fp8 codes and bfloat16 weights, with bias and the fused reduce, and leaves every arrival
    counter re-armed."""
    n, k = shape
    bn, bk, warps, stages, per_sm = tile
    kw = {"BLOCK_N": bn, "BLOCK_K": bk, "STREAM_K": per_sm}
    tiles = triton.Config(kw, num_warps=warps, num_stages=stages)
    flat = triton.Config({**kw, "FLAT": True}, num_warps=warps, num_stages=stages)
    w8, s8 = fp8_case(n, k, gen)
    w16 = (torch.randn(n, k, generator=gen, device="cuda") * 0.02).to(torch.bfloat16)
    x = randx(m, k, torch.bfloat16, gen)
    bias = torch.randn(n, generator=gen, device="cuda").to(torch.bfloat16)
    xq, sx = quant_per_token(x, torch.float8_e4m3fn)
    want = mma_gemv.tc_gemv(xq, sx, w8, s8, bias, torch.bfloat16, config=tiles)
    check(want, fp8_linear_ref(x, w8, s8, bias), torch.bfloat16, m, n)
    assert torch.equal(mma_gemv.tc_gemv(xq, sx, w8, s8, bias, torch.bfloat16, config=flat), want)
    want = mma_gemv.tc_gemv(x, None, w16, None, bias, torch.bfloat16, config=tiles)
    assert torch.equal(mma_gemv.tc_gemv(x, None, w16, None, bias, torch.bfloat16, config=flat),
                       want)
    torch.cuda.synchronize()
    assert not bool(qmm_common.split_locks(x.device).any())


def test_tensor_core_gemv_dispatch_and_autotune(gen, monkeypatch, poison_allocations):
    """KILN_TC_GEMV=1: fp8_linear and the unquantized Linear send decode rows to the autotuned
    tensor-core GEMV (the autotuner's choice is recorded for kiln build), prefill rows elsewhere."""
    from kiln.layers.linear import Linear

    monkeypatch.setenv("KILN_QUANT_AUTOTUNE", "1")
    monkeypatch.setenv("KILN_TC_GEMV", "1")
    w8, s8 = fp8_case(6144, 4096, gen)
    x = randx(2, 4096, torch.bfloat16, gen)
    check(qm.fp8_linear(x, w8, s8), fp8_linear_ref(x, w8, s8), torch.bfloat16, 2, 6144)
    assert any(e["kernel"] == "tc_gemv" for e in qm.export_tuning())
    layer = Linear(4096, 6144, bias=False, dtype=torch.bfloat16, device="cuda")
    layer.weight.data.copy_(torch.randn(6144, 4096, generator=gen, device="cuda") * 0.02)
    check(layer(x), (x.float() @ layer.weight.float().T).to(torch.bfloat16), torch.bfloat16, 2, 6144)


def test_gemv_tuner_times_from_memory(gen):
    """The GEMV autotuner's timer runs the launch, and returns the median between its 20th and
    80th percentiles in milliseconds, as Triton's autotuner expects."""
    qweight, scales = int4_case(4096, 4096, 128, gen)
    x = randx(1, 4096, torch.bfloat16, gen)
    calls = []

    def fn():
        calls.append(1)
        qm.launch(x, qweight, scales, scales.stride(1), 128, qm.W_INT4, None, torch.bfloat16, "gemv")

    med, lo, hi = fma_gemv.bench_from_memory(fn, quantiles=(0.5, 0.2, 0.8))
    assert len(calls) == 51 and 0 < lo <= med <= hi < 10


@pytest.mark.parametrize("head", ["int8-wo", "int4-wo"])
def test_weight_only_lm_head_engine(tmp_path, head):
    """An engine built with --lm-head-quant int8-wo / int4-wo on the GPU generates through CUDA
    graphs (the decode graphs write the head's logits into their shared buffer), nothing compiled
    after start-up, and its head computes the weight-only product for 1 and 40 rows."""
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.build.engine_dir import load_engine_model
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama-d128", tmp_path / "src", seed=8, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"),
                                       QuantConfig("int4-wo", lm_head=head), eval_tokens=0,
                                       device="cuda", progress=False, calib_samples=4))["path"]
    model, _ = load_engine_model(engine, "cuda")
    head_mod = model.lm_head
    for rows in (1, 40):
        hidden = torch.randn(rows, 256, device="cuda").to(torch.bfloat16)
        got = model.compute_logits(hidden)
        if head == "int4-wo":
            # (the loaded head holds its rows in blocks: int4_bits.INT4_ROW_BLOCK)
            block = getattr(head_mod, "int4_row_block", 1)
            qweight = (int4_bits.untile_int4_rows(head_mod.qweight, block, 128) if block > 1
                       else head_mod.qweight)
            want = int4_wo_linear_ref(hidden, qweight, head_mod.scales, 128)
        else:
            want = int8_wo_linear_ref(hidden, head_mod.qweight, head_mod.scales)
        assert rel_err(got, want.float()) < TOL[torch.bfloat16], rows
    del model
    llm = LLM(engine, device="cuda", num_kv_blocks=256, max_num_seqs=8)
    outs = llm.generate([{"prompt_token_ids": list(range(3, 30))}] * 3,
                        SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 10 for o in outs)
    assert outs[0].outputs[0].token_ids == outs[2].outputs[0].token_ids
    assert llm.engine.stats()["kernel_compiles_after_startup"] == 0


@pytest.mark.parametrize("row_block", [16, 64])
@pytest.mark.parametrize("shape", [(6144, 4096), (4096, 14336)])
def test_int4_row_blocks_give_row_major_bits(shape, row_block, gen, monkeypatch, poison_allocations):
    """int4 weights stored in blocks of rows (tile_int4_rows, KILN_INT4_ROW_BLOCK): every GEMV
    candidate (split-K and stream-K) over double words, the word and float32 paths and four rows
    at the default configuration, and the GEMM at 64 rows, each gives the row-major launch's
    bits (the same products in the same order)."""
    n, k = shape
    qweight, scales = int4_case(n, k, 128, gen)
    tiled = int4_bits.tile_int4_rows(qweight, row_block, 128)
    bias = torch.randn(n, generator=gen, device="cuda").to(torch.bfloat16)
    runs = [(1, "2", c) for c in fma_gemv.GEMV_CONFIGS + fma_gemv.GEMV_SPLIT_CONFIGS]
    runs += [(1, "1", None), (1, "0", None), (4, "2", None), (64, "2", None)]
    for m, f16, config in runs:
        monkeypatch.setenv("KILN_INT4_F16", f16)
        x = randx(m, k, torch.bfloat16, gen)
        args = (scales, scales.stride(1), 128, qm.W_INT4, bias, torch.bfloat16,
                "gemv" if m <= qm.GEMV_MAX_M else "gemm")
        want = qm.launch(x, qweight, *args, config=config)
        got = qm.launch(x, tiled, *args, config=config, row_block=row_block)
        assert torch.equal(got, want), (m, f16, config)
        if config is None:
            check(want, int4_wo_linear_ref(x, qweight, scales, 128, bias), torch.bfloat16, m, n)


def test_int4_row_block_engine(tmp_path, monkeypatch):
    """An int4-wo engine loaded with KILN_INT4_ROW_BLOCK=16 stores its layers' weights in blocks of
    16 rows (engine files untouched) and decodes the row-major engine's greedy tokens."""
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama-d128", tmp_path / "src", seed=9, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"),
                                       QuantConfig("int4-wo", lm_head="int4-wo"), eval_tokens=0,
                                       device="cuda", progress=False, calib_samples=4))["path"]
    prompts = [{"prompt_token_ids": list(range(3 + i, 40 + 2 * i))} for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    tokens, blocks = {}, {}
    for env in ("0", "16"):
        monkeypatch.setenv("KILN_INT4_ROW_BLOCK", env)
        llm = LLM(engine, device="cuda", num_kv_blocks=256, max_num_seqs=8)
        model = llm.engine.model
        blocks[env] = sorted({getattr(m, "int4_row_block", None) for m in model.modules()
                              if hasattr(m, "qweight")})
        tokens[env] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        del llm, model
        torch.cuda.empty_cache()
    assert blocks == {"0": [1], "16": [16]}
    assert tokens["16"] == tokens["0"]
