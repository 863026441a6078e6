"""The batch-1 int4 ring GEMV (kiln.kernels.ring_int4, Gluon, tensor cores) against the int4
reference, its deterministic shared-tile reduction, its use under CUDA graphs with PDL, and an
int4-wo engine's greedy tokens with and without it."""

import pytest
import torch

from gpu_helpers import assert_top5_agree, eager_then_graph, rel_err

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="needs an sm_90 GPU")

# (N, K): 8B layers (qkv, o, gate_up, down, LM head), units of 8 chunks (K 2048, 3072), one
# row block, odd tile counts
SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096),
          (2048, 2048), (48, 3072), (16, 4096), (4112, 16384), (400, 6144)]


def case(n, k, seed):
    """Random packed int4 weights (row-major and in blocks of 16 rows), scales, a bf16 row."""
    from kiln.kernels.int4_bits import tile_int4_rows

    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen, device="cuda")
    s = (torch.rand(n, k // 128, generator=gen, device="cuda") * 0.02 + 0.001) * (k / 4096) ** -0.5
    x = torch.randn(1, k, generator=gen, device="cuda").to(torch.bfloat16)
    return x, q, tile_int4_rows(q, 16, 128), s


@pytest.mark.parametrize("n,k", SHAPES)
def test_ring_int4_matches_reference(n, k):
    from kiln.kernels.quant_ref import int4_wo_linear_ref
    from kiln.kernels.ring_int4 import ring_int4_gemv, ring_int4_ok, ring_int4_ref

    x, q, tiled, s = case(n, k, n + k)
    assert ring_int4_ok(x, tiled, s, 128, 16)
    ref = int4_wo_linear_ref(x, q, s, 128)
    assert torch.equal(ring_int4_ref(x, tiled, s), ref)
    wq = torch.stack(((q & 15).double() - 8, (q >> 4).double() - 8), -1).reshape(n, k)
    exact = x.double() @ (wq * s.double().repeat_interleave(128, 1)).t()
    out = ring_int4_gemv(x, tiled, s)
    assert out.shape == (1, n) and out.dtype == torch.bfloat16
    # float32 sums (with the 136 x offset) in another order: within the output's rounding
    assert rel_err(out, exact) < 4e-3
    assert (out.float() - ref.float()).abs().max() <= 2 * ref.float().abs().max() * 2 ** -7
    again = ring_int4_gemv(x, tiled, s)  # counters re-armed, partials in program order: same bits
    assert torch.equal(again, out)


def test_ring_int4_bias_and_out():
    from kiln.kernels.ring_int4 import ring_int4_gemv, ring_int4_ref

    x, q, tiled, s = case(3072, 4096, 1)
    bias = torch.randn(3072, device="cuda").to(torch.bfloat16)
    out = torch.full((1, 3072), float("nan"), dtype=torch.bfloat16, device="cuda")
    got = ring_int4_gemv(x, tiled, s, bias, out=out)
    assert got.data_ptr() == out.data_ptr() and not torch.isnan(out).any()
    assert rel_err(out, ring_int4_ref(x, tiled, s, bias)) < 4e-3


def test_ring_int4_refuses_what_it_does_not_take():
    from kiln.kernels.ring_int4 import ring_int4_gemv, ring_int4_ok

    x, q, tiled, s = case(64, 4096, 2)
    assert ring_int4_ok(x, tiled, s, 128, 16)
    assert not ring_int4_ok(x.expand(2, -1).contiguous(), tiled, s, 128, 16)  # two rows
    assert not ring_int4_ok(x.half(), tiled, s, 128, 16)
    assert not ring_int4_ok(x, tiled, s, 128, 1)  # row-major weights
    assert not ring_int4_ok(x, tiled, s.half(), 128, 16)
    x1, _, t1, s1 = case(64, 1024, 3)  # one unit a row block
    assert not ring_int4_ok(x1, t1, s1, 128, 16)
    x2, _, t2, s2 = case(64, 3200, 4)  # 25 groups
    assert not ring_int4_ok(x2, t2, s2, 128, 16)
    with pytest.raises(ValueError, match="ring_int4_gemv takes one"):
        ring_int4_gemv(x.half(), tiled, s)


def test_ring_int4_chain_in_a_graph_with_pdl():
    """Four dependent int4 products (each one's output the next one's input), eager and then
    replayed from a CUDA graph captured with PDL, against the reference chain."""
    from kiln.kernels.ring_int4 import ring_int4_gemv, ring_int4_ref

    dims = [(6144, 4096), (4096, 6144), (14336, 4096), (4096, 14336)]
    ws = []
    for i, (n, k) in enumerate(dims):
        _, _, tiled, s = case(n, k, 20 + i)
        ws.append((tiled, s * 8))
    x = torch.randn(1, 4096, device="cuda", generator=torch.Generator(device="cuda").manual_seed(9)
                    ).to(torch.bfloat16)

    def run():
        h = x
        for tiled, s in ws:
            h = ring_int4_gemv(h, tiled, s)
        return h

    want = x
    for tiled, s in ws:
        want = ring_int4_ref(want, tiled, s)

    def check(out):
        assert rel_err(out, want) < 2e-2

    eager_then_graph(run, check, 3, 10)


def test_engine_greedy_tokens_with_and_without_the_int4_ring(tmp_path, monkeypatch):
    """An int4-wo engine (int4 LM head too) of a model wide enough for the kernel decodes its
    batch-1 rows through it with KILN_RING_INT4=1 (never with 0, nor by default with the rest
    of the ring path on), compiles nothing after start-up, and gives the other path's greedy
    tokens under the top-5 rule."""
    import kiln.kernels.ring_int4 as ri
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    monkeypatch.setenv("KILN_RING_INT4_MIN_MB", "0")  # its layers are all below the default size
    write_random_model("tiny-llama-d2048", tmp_path / "src", seed=9, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"),
                                       QuantConfig("int4-wo", lm_head="int4-wo"), eval_tokens=0,
                                       device="cuda", progress=False, calib_samples=4))["path"]
    prompts = [{"prompt_token_ids": list(range(5 + i, 50 + 3 * i))} for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=5)
    calls, runs = {}, {}
    real = ri._ring_int4_kernel.run

    def counting(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)
    monkeypatch.setattr(ri._ring_int4_kernel, "run", counting)
    for name, ring, int4 in (("off", "0", "0"), ("on", "0", "1"), ("ring path", "1", None)):
        monkeypatch.setenv("KILN_RING_GEMV", ring)
        if int4 is None:
            monkeypatch.delenv("KILN_RING_INT4", raising=False)
        else:
            monkeypatch.setenv("KILN_RING_INT4", int4)
        llm = LLM(str(engine), device="cuda", num_kv_blocks=256, max_num_seqs=1)
        runs[name] = [o.outputs[0] for o in llm.generate(prompts, params)]  # batch 1
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        del llm
        torch.cuda.empty_cache()
    assert calls.get("on", 0) > 0 and calls.get("off", 0) == 0 and calls.get("ring path", 0) == 0
    assert_top5_agree(runs["on"], runs["off"])
