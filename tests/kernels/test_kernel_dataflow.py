"""Row-granular dependencies (kiln.kernels.dataflow) under the interpreter: the gated MLP's
gate_up -> down with ready flags and SiLU-mul folded into down's loads gives the bits of the
three separate launches, and marks every row granule of gate_up ready for the step's epoch;
decode attention -> o_proj gives the bits of the two launches and marks every (token, kv head)
ready; an engine decodes the same tokens and log-probs with and without either."""

import pytest
import torch

from kernel_cases import greedy_tokens, paged_case
from kiln.kernels import dataflow, decode_attention, mma_gemv
from kiln.layers.attention import PagedSelfAttention
from kiln.layers.rotary import RopeConfig, RotaryEmbedding
from kiln.models.llama import GatedMLP


@pytest.fixture(autouse=True)
def linears_as_on_cuda(monkeypatch):
    """Unquantized decode rows take the tensor-core GEMV here too, as Linear routes them on CUDA
    (on the CPU it takes F.linear, whose bits the flowing path need not give)."""
    from kiln.kernels import quant_matmul
    from kiln.layers.linear import UnquantizedLinearMethod

    def apply(self, layer, x):
        return quant_matmul.float_gemv_linear(x, layer.weight, layer.bias)

    monkeypatch.setattr(UnquantizedLinearMethod, "apply", apply)


def _mlp(hidden, inter, bias, seed):
    gen = torch.Generator().manual_seed(seed)
    mlp = GatedMLP(hidden, inter, bias, torch.float16, "cpu")
    for p in mlp.parameters():
        p.data.copy_((torch.randn(p.shape, generator=gen) * 0.2).to(p.dtype))
    return mlp


@pytest.mark.parametrize("rows,hidden,inter,bias", [(1, 64, 128, False), (3, 96, 160, True)])
def test_flowing_mlp_gives_the_launches_bits(rows, hidden, inter, bias):
    mlp = _mlp(hidden, inter, bias, seed=rows)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(rows, hidden, generator=gen).to(torch.float16)
    want = mlp(x)
    flags = dataflow.RowFlags(2, 2 * inter, "cpu")
    for step in (1, 2):
        flags.begin()
        assert mlp._flows(x)
        got = mlp(x, flags.slot(1))
        assert torch.equal(got, want)
        granules = -(-2 * inter // dataflow.FLAG_ROWS)
        assert torch.equal(flags.flags[1, :granules], torch.full((granules,), step,
                                                                 dtype=torch.int32))
        assert int(flags.flags[0].abs().sum()) == 0 and int(flags.errors) == 0


def test_gate_up_signals_each_granule_once_split():
    """A split-K gate_up (partials summed by the last program of each tile) signals too, and the
    consumer reads the summed rows."""
    mlp = _mlp(256, 64, False, seed=3)
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    want = mlp.down_proj(mlp.act(mlp.gate_up_proj(x)))
    flags = dataflow.RowFlags(1, 8, "cpu")
    flags.begin()
    slot = flags.slot(0)
    gate_up = mma_gemv.tc_gemv(x, None, mlp.gate_up_proj.weight, None, None, x.dtype, split_k=4,
                               signal=slot)
    assert torch.equal(flags.flags[0], torch.ones(8, dtype=torch.int32))
    out = mma_gemv.tc_gemv(gate_up, None, mlp.down_proj.weight, None, None, x.dtype, split_k=2,
                           wait=slot, silu=True)
    plain = mma_gemv.tc_gemv(mlp.act(gate_up), None, mlp.down_proj.weight, None, None, x.dtype,
                             split_k=2)
    assert torch.equal(out, plain)
    # SiLU folded in without flags: the same product
    assert torch.equal(mma_gemv.tc_gemv(gate_up, None, mlp.down_proj.weight, None, None, x.dtype,
                                        split_k=2, silu=True), plain)
    assert (out.float() - want.float()).abs().max() < 2e-2 * want.float().abs().max()


def test_flowing_refuses_what_it_cannot_do(monkeypatch):
    mlp = _mlp(64, 128, False, seed=1)
    x = torch.randn(1, 64).to(torch.float16)
    with pytest.raises(ValueError, match="2K columns"):
        mma_gemv.tc_gemv(x, None, mlp.down_proj.weight, None, None, x.dtype, silu=True)
    monkeypatch.setenv("KILN_TC_STREAM_K", "1")
    assert not mlp._flows(x)
    flags = dataflow.RowFlags(1, 16, "cpu")
    with pytest.raises(ValueError, match="split-K"):
        mma_gemv.tc_gemv(x, None, mlp.gate_up_proj.weight, None, None, x.dtype,
                         signal=flags.slot(0))
    monkeypatch.delenv("KILN_TC_STREAM_K")
    mlp.act.quant_dtype = torch.float8_e4m3fn
    assert not mlp._flows(x)
    with pytest.raises(ValueError, match="granule"):
        mma_gemv.tc_gemv(x, None, mlp.gate_up_proj.weight, None, None, x.dtype,
                         signal=flags.slot(0, granule=32))
    with pytest.raises(ValueError, match="KILN_DATAFLOW"):
        monkeypatch.setenv("KILN_DATAFLOW", "yes")
        dataflow.dataflow_enabled()
    monkeypatch.setenv("KILN_DATAFLOW", "attn")
    assert dataflow.dataflow_enabled("attn") and not dataflow.dataflow_enabled("mlp")
    monkeypatch.setenv("KILN_DATAFLOW", "qkv,mlp")
    assert dataflow.dataflow_enabled("qkv") and not dataflow.dataflow_enabled("attn")
    with pytest.raises(ValueError, match="KILN_DATAFLOW"):
        monkeypatch.setenv("KILN_DATAFLOW", "qkv,rope")
        dataflow.dataflow_enabled("qkv")


def _attention(hidden, heads, kv_heads, head_dim, bias, seed):
    rotary = RotaryEmbedding(head_dim, 1024, RopeConfig(), "cpu")
    attn = PagedSelfAttention(hidden, heads, kv_heads, head_dim, rotary, qkv_bias=bias,
                              o_bias=bias, qk_norm=False, rms_norm_eps=1e-6, sliding_window=None,
                              dtype=torch.float16, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    for p in attn.parameters():
        p.data.copy_((torch.randn(p.shape, generator=gen) * 0.2).to(p.dtype))
    return attn


@pytest.mark.parametrize("contexts,sms,bias,rope", [
    ([40], 1, False, "0"),              # one partition: each program stores its heads' output
    ([40, 7, 100], 1, True, "0"),
    ([300, 37, 129], 64, False, "0"),   # split contexts, merged in the kernel by the last program
    ([40, 7, 100], 1, True, "1"),       # RoPE in the decode kernel: qkv_proj flows into it too
    ([300, 37, 129], 64, False, "1"),
])
def test_flowing_attention_gives_the_launches_bits(contexts, sms, bias, rope, gen, monkeypatch):
    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: sms)
    monkeypatch.setenv("KILN_ATTN_ROPE", rope)
    heads, kv_heads, head_dim = 8, 2, 32
    attn = _attention(64, heads, kv_heads, head_dim, bias, seed=len(contexts))
    kv_cache, meta = paged_case([(c, 1) for c in contexts], kv_heads, head_dim, 16,
                                torch.float16, gen)
    positions = torch.tensor(contexts)
    x = torch.randn(len(contexts), 64, generator=gen).to(torch.float16)
    monkeypatch.setenv("KILN_ATTN_ROPE", "0")
    want = attn(positions, x, kv_cache, meta)
    monkeypatch.setenv("KILN_ATTN_ROPE", rope)
    rows = len(contexts) * kv_heads
    qkv_granules = (heads + 2 * kv_heads) * head_dim // dataflow.FLAG_ROWS
    flags = dataflow.RowFlags(3, qkv_granules, "cpu")
    for step in (1, 2):
        flags.begin()
        got = attn(positions, x, kv_cache, meta, flow=attn.flow_slot(flags, 1),
                   qkv_flow=flags.slot(2))
        assert torch.equal(got, want)
        # every (token, kv head) marked ready for this step, nothing else touched
        assert torch.equal(flags.flags[1, :rows], torch.full((rows,), step, dtype=torch.int32))
        assert int(flags.flags[1, rows:].abs().sum()) == 0
        assert int(flags.flags[0].abs().sum()) == 0 and int(flags.errors) == 0
        # qkv_proj marked its granules only where the attention reads them (RoPE in it)
        want_qkv = torch.full((qkv_granules,), step if rope == "1" else 0, dtype=torch.int32)
        assert torch.equal(flags.flags[2], want_qkv)
    # o_proj on its own, waiting on those flags, reads the attention's output as the layer did
    out = torch.randn(len(contexts), heads * head_dim, generator=gen).to(torch.float16)
    plain = mma_gemv.tc_gemv(out, None, attn.o_proj.weight, None, attn.o_proj.bias, out.dtype)
    waited = mma_gemv.tc_gemv(out, None, attn.o_proj.weight, None, attn.o_proj.bias, out.dtype,
                              wait=attn.flow_slot(flags, 1))
    assert torch.equal(waited, plain) and int(flags.errors) == 0


def test_attention_refuses_signals_it_cannot_give(gen, monkeypatch):
    from kiln.kernels.attention import paged_attention

    attn = _attention(64, 8, 2, 32, False, seed=5)
    kv_cache, meta = paged_case([(20, 1), (9, 3)], 2, 32, 16, torch.float16, gen)
    q = torch.randn(4, 8, 32, generator=gen).to(torch.float16)
    flags = dataflow.RowFlags(1, 32, "cpu")
    flags.begin()
    with pytest.raises(ValueError, match="decode batches"):  # a prompt of 3 tokens
        paged_attention(q, kv_cache, meta, 0.2, signal=attn.flow_slot(flags, 0))
    kv_cache, meta = paged_case([(20, 1)], 2, 32, 16, torch.float16, gen)
    with pytest.raises(ValueError, match="granule"):
        paged_attention(q[:1], kv_cache, meta, 0.2, signal=flags.slot(0))
    with pytest.raises(ValueError, match="decode batches"):
        paged_attention(q[:1], kv_cache, meta, 0.2, quant_dtype=torch.float8_e4m3fn,
                        signal=attn.flow_slot(flags, 0))
    monkeypatch.setenv("KILN_ATTN_FUSED_REDUCE", "0")  # merged by a reduce kernel: no signal
    assert not attn._flows(q[:1], kv_cache, meta)
    monkeypatch.delenv("KILN_ATTN_FUSED_REDUCE")
    assert attn._flows(q[:1], kv_cache, meta)
    attn.quant_dtype = torch.float8_e4m3fn
    assert not attn._flows(q[:1], kv_cache, meta)


@pytest.mark.parametrize("preset,flag,rope", [
    ("tiny-llama", "1", "0"), ("tiny-llama", "attn", "0"), ("tiny-llama", "1", "1"),
    ("tiny-qwen2", "1", "1"),    # q/k/v biases, tied embeddings
    ("tiny-qwen3", "1", "1"),    # q/k norms between qkv_proj and the attention
    ("tiny-mistral", "1", "1"),  # a sliding window
])
def test_engine_tokens_with_and_without_dataflow(preset, flag, rope, tmp_path, monkeypatch):
    """Greedy tokens and their log-probs, bit for bit, from an engine whose decode steps run
    the flowing boundaries (split contexts, as on a GPU) and one whose steps do not; the flags
    were used (set for the last epoch, no poll gave up)."""
    from kiln.models.random_model import write_random_model

    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    monkeypatch.setenv("KILN_ATTN_ROPE", rope)  # "1": qkv_proj -> attention flows too
    write_random_model(preset, tmp_path, seed=4, dtype="float16")
    runs = {}
    for setting in ("0", flag):
        monkeypatch.setenv("KILN_DATAFLOW", setting)
        runs[setting], llm = greedy_tokens(tmp_path, (70, 9), 3)
        flags = llm.engine.model._flags
        if setting == "0":
            assert flags is None
            continue
        assert flags is not None and int(flags.errors) == 0 and int(flags.epoch) >= 4
        # slots per layer: norm1, qkv, attn, o, norm2, mlp, down (LlamaFamilyModel._SLOTS)
        used = [int((flags.flags[i::7] == flags.epoch).sum()) for i in range(7)]
        assert used[2] > 0  # attention -> o_proj
        assert [used[i] > 0 for i in (0, 3, 4, 5, 6)] == [flag == "1"] * 5
        # qkv_proj flows into the attention only with RoPE in it and no q/k norm between them
        assert (used[1] > 0) == (flag == "1" and rope == "1" and preset != "tiny-qwen3")
    assert runs["0"] == runs[flag]


def test_flowing_norm_gives_the_fused_norm_bits(gen):
    """o_proj (a GEMV that signals) -> add + RMSNorm that waits on its granules and marks each
    row ready -> a GEMV that waits on the rows: the bits of the launches without flags, the
    norm's output in the module's own rows, reused step after step."""
    from kiln.layers.norm import RMSNorm

    hidden, rows = 64, 3
    norm = RMSNorm(hidden, 1e-5, torch.float16, "cpu")
    norm.weight.data.copy_(torch.randn(hidden, generator=gen).to(torch.float16))
    w_o = (torch.randn(hidden, 128, generator=gen) * 0.1).to(torch.float16)
    w_next = (torch.randn(96, hidden, generator=gen) * 0.1).to(torch.float16)
    x = torch.randn(rows, 128, generator=gen).to(torch.float16)
    residual = torch.randn(rows, hidden, generator=gen).to(torch.float16)
    o = mma_gemv.tc_gemv(x, None, w_o, None, None, x.dtype)
    want_res = residual.clone()
    want_normed, _ = norm(o, want_res)
    want_next = mma_gemv.tc_gemv(want_normed, None, w_next, None, None, x.dtype)
    flags = dataflow.RowFlags(2, hidden // dataflow.FLAG_ROWS, "cpu")
    outs = []
    for step in (1, 2):
        flags.begin()
        o_slot, row_slot = flags.slot(0), flags.slot(1, granule=hidden, row_stride=1)
        o = mma_gemv.tc_gemv(x, None, w_o, None, None, x.dtype, signal=o_slot.arm())
        res = residual.clone()
        normed, res_out = norm(o, res, wait=o_slot, signal=row_slot)
        assert row_slot.armed and res_out is res
        nxt = mma_gemv.tc_gemv(normed, None, w_next, None, None, x.dtype, wait=row_slot)
        assert torch.equal(normed, want_normed) and torch.equal(res, want_res)
        assert torch.equal(nxt, want_next)
        assert torch.equal(flags.flags[1, :rows], torch.full((rows,), step, dtype=torch.int32))
        assert int(flags.errors) == 0
        outs.append(normed.data_ptr())
    assert outs[0] == outs[1] == norm._flow_out.data_ptr()  # the module's own rows
    # an unarmed producer: no wait, a fresh output; a quantizing norm takes no flags
    res = residual.clone()
    normed, _ = norm(o, res, wait=flags.slot(0), signal=None)
    assert normed.data_ptr() != norm._flow_out.data_ptr() and torch.equal(normed, want_normed)
    with pytest.raises(ValueError, match="one flag a row"):
        norm(o, residual.clone(), signal=flags.slot(1))


def test_fp8_qkv_flows_into_the_attention(gen, monkeypatch):
    """An fp8 W8A8 qkv_proj over rows its norm quantized (QuantizedRows) marks its output ready
    and the decode attention with RoPE in it reads q, k and v as it does: the bits of the
    launches without flags (split contexts, merged in the kernel)."""
    from kiln.kernels.quant_act import quantize_rows
    from kiln.quant.fp8 import Fp8LinearMethod

    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    heads, kv_heads, head_dim, contexts = 8, 2, 32, [300, 37, 129]
    attn = _attention(64, heads, kv_heads, head_dim, False, seed=9)
    float_w = attn.qkv_proj.weight.data.clone()
    attn.qkv_proj.set_method(Fp8LinearMethod(), torch.float16, "cpu")
    for name, t in Fp8LinearMethod.quantize(float_w).items():
        getattr(attn.qkv_proj, name).data.copy_(t)
    kv_cache, meta = paged_case([(c, 1) for c in contexts], kv_heads, head_dim, 16,
                                torch.float16, gen)
    positions = torch.tensor(contexts)
    x = quantize_rows(torch.randn(len(contexts), 64, generator=gen).to(torch.float16),
                      torch.float8_e4m3fn, (len(contexts), 64))
    want = attn(positions, x, kv_cache, meta)
    monkeypatch.setenv("KILN_ATTN_ROPE", "1")
    qkv_granules = (heads + 2 * kv_heads) * head_dim // dataflow.FLAG_ROWS
    flags = dataflow.RowFlags(1, qkv_granules, "cpu")
    for step in (1, 2):
        flags.begin()
        slot = flags.slot(0)
        assert torch.equal(attn(positions, x, kv_cache, meta, qkv_flow=slot), want)
        assert slot.armed and int(flags.errors) == 0
        assert torch.equal(flags.flags[0], torch.full((qkv_granules,), step, dtype=torch.int32))
