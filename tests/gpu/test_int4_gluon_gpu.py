"""On the GPU: the Gluon int4 GEMV (kiln.kernels.int4_gluon, KILN_INT4_MMA=1) against the float32
reference, through the dispatcher, and in an int4 engine."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available()
                                or torch.cuda.get_device_capability() < (9, 0),
                                reason="the Gluon int4 GEMV needs sm_90")

from kiln.kernels import int4_gluon  # noqa: E402
from kiln.kernels import quant_matmul as qm  # noqa: E402
from gpu_helpers import assert_top5_agree, rel_err  # noqa: E402

# bfloat16 output rounding (2**-9) plus float32 summation order, as tests/gpu/test_quant_gpu.py
TOL = 8e-3


def int4_case(n, k, gen):
    qweight = torch.randint(0, 256, (n, k // 2), generator=gen, device="cuda", dtype=torch.uint8)
    scales = torch.rand(n, k // 128, generator=gen, device="cuda") * 0.05 + 0.005
    return qweight, scales


@pytest.mark.parametrize("shape", [(6144, 4096), (4096, 14336), (28672, 4096), (1000, 384),
                                   (40, 128)])
@pytest.mark.parametrize("m", [1, 2, 5, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int4_mma_gemv(dtype, m, shape, gen, poison_allocations):
    """Every tile (rows, ring slots, K splits) against the reference, with and without bias; N
    not a multiple of the rows, K splits of unequal or no groups; the split-K counters are
    re-armed, and a split K gives the same bits run after run."""
    n, k = shape
    qweight, scales = int4_case(n, k, gen)
    x = (torch.randn(m, k, generator=gen, device="cuda") * 2).to(dtype)
    bias = torch.randn(n, generator=gen, device="cuda").to(dtype)
    locks = qm.split_locks(x.device)
    for tile in (None, (16, 8, 1), (16, 8, 4), (32, 6, 3), (64, 4, 1), (16, 2, 5)):
        for b in (None, bias):
            out = int4_gluon.int4_mma_gemv(x, qweight, scales, b, tile, locks=locks)
            ref = qm.int4_wo_linear_ref(x, qweight, scales, 128, b)
            assert out.shape == (m, n) and out.dtype == dtype
            assert not out.isnan().any()
            assert rel_err(out, ref) < TOL, (tile, b is None)
            again = int4_gluon.int4_mma_gemv(x, qweight, scales, b, tile, locks=locks)
            assert torch.equal(out, again), tile
    assert not bool(locks.any())


def test_int4_mma_gemv_strided_x_and_extreme_values(gen, poison_allocations):
    """x rows strided (a view into wider rows), values near bfloat16's range ends, and the
    nibbles 0 and 15 (-8 and 7) everywhere in some rows."""
    n, k = 512, 1024
    qweight, scales = int4_case(n, k, gen)
    qweight[:8] = 0x00
    qweight[8:16] = 0xFF
    wide = (torch.randn(3, k + 256, generator=gen, device="cuda") * 2).to(torch.bfloat16)
    x = wide[:, 128:128 + k]
    x[0, :64] = 3.0e30
    x[1, 64:96] = -2.0e-30
    out = int4_gluon.int4_mma_gemv(x, qweight, scales, None, locks=qm.split_locks(x.device))
    ref = qm.int4_wo_linear_ref(x, qweight, scales, 128)
    for row in range(3):  # row by row: row 0's values would hide the others' errors
        assert rel_err(out[row].float(), ref[row].float()) < TOL, row


def test_dispatcher_takes_it_when_on(gen, monkeypatch, poison_allocations):
    """KILN_INT4_MMA=1: int4_wo_linear sends up to 8 bfloat16 or float16 rows with groups of 128
    here, and the rest (9 rows, groups of 64) to the other kernels."""
    calls = []
    real = int4_gluon.int4_mma_gemv
    monkeypatch.setattr(int4_gluon, "int4_mma_gemv",
                        lambda *a, **kw: (calls.append(a[0].shape[0]), real(*a, **kw))[1])
    n, k = 768, 1024
    qweight, scales = int4_case(n, k, gen)
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_INT4_MMA", flag)
        calls.clear()
        for m in (1, 8, 9):
            x = torch.randn(m, k, generator=gen, device="cuda").to(torch.bfloat16)
            out = qm.int4_wo_linear(x, qweight, scales, 128)
            assert rel_err(out, qm.int4_wo_linear_ref(x, qweight, scales, 128)) < TOL
        x16 = torch.randn(2, k, generator=gen, device="cuda").to(torch.float16)
        out = qm.int4_wo_linear(x16, qweight, scales, 128)
        assert rel_err(out, qm.int4_wo_linear_ref(x16, qweight, scales, 128)) < TOL
        s64 = torch.rand(n, k // 64, generator=gen, device="cuda") * 0.05
        qm.int4_wo_linear(x16.to(torch.bfloat16), qweight, s64, 64)
        assert calls == ([1, 8, 2] if flag == "1" else [])


def test_int4_engine_with_the_mma_gemv(tmp_path, monkeypatch):
    """An int4-wo engine (head_dim 128 preset, hidden 256: groups of 128) generates greedily with
    KILN_INT4_MMA=1, eager and through CUDA graphs, nothing compiled after start-up, and agrees
    with KILN_INT4_MMA=0 under the top-5 rule."""
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama-d128", tmp_path / "src", seed=4, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "int4"),
                                       QuantConfig("int4-wo"), eval_tokens=0, device="cuda",
                                       progress=False, calib_samples=4))["path"]
    calls = []
    real = int4_gluon.int4_mma_gemv
    monkeypatch.setattr(int4_gluon, "int4_mma_gemv",
                        lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    prompts = [{"prompt_token_ids": list(range(5 + i, 40 + 3 * i))} for i in range(4)]
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=5)
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_INT4_MMA", flag)
        for eager in (True, False):
            calls.clear()
            llm = LLM(engine, device="cuda", enforce_eager=eager, gpu_memory_utilization=0.2,
                      max_num_seqs=8)
            outs = llm.generate(prompts, sp)
            results[flag, eager] = [o.outputs[0] for o in outs]
            assert llm.engine.stats()["kernel_compiles_after_startup"] == 0, (flag, eager)
            assert bool(calls) == (flag == "1"), (flag, eager)
            del llm
    for eager in (True, False):
        assert_top5_agree(results["0", eager], results["1", eager], eager)


@pytest.mark.parametrize("head", ["int8-wo", "int4-wo"])
def test_weight_only_lm_head_engine(tmp_path, monkeypatch, head):
    """An engine built with --lm-head-quant int8-wo / int4-wo on the GPU generates through CUDA
    graphs (the decode graphs write the head's logits into their shared buffer), nothing compiled
    after start-up, and its head computes the weight-only product for 1 and 40 rows."""
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.build.engine_dir import load_engine_model
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    monkeypatch.setenv("KILN_INT4_MMA", "1")
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
            want = qm.int4_wo_linear_ref(hidden, head_mod.qweight, head_mod.scales, 128)
        else:
            want = qm.int8_wo_linear_ref(hidden, head_mod.qweight, head_mod.scales)
        assert rel_err(got, want.float()) < TOL, rows
    del model
    llm = LLM(engine, device="cuda", gpu_memory_utilization=0.2, max_num_seqs=8)
    outs = llm.generate([{"prompt_token_ids": list(range(3, 30))}] * 3,
                        SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 10 for o in outs)
    assert outs[0].outputs[0].token_ids == outs[2].outputs[0].token_ids
    assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
