"""Row-granular dependencies (kiln.kernels.dataflow, KILN_DATAFLOW) on CUDA: the gated MLP's
gate_up -> down and decode attention -> o_proj with ready flags, under programmatic dependent
launch and in CUDA graphs, give the bits of the separate launches at the 8B shapes, with no poll
loop giving up (also with the waiters' early weight reads); an engine decodes the same greedy
tokens with and without them, nothing compiled after start-up."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from kiln.kernels import dataflow  # noqa: E402
from kiln.layers.attention import PagedSelfAttention  # noqa: E402
from kiln.layers.rotary import RopeConfig, RotaryEmbedding  # noqa: E402
from kiln.models.llama import GatedMLP  # noqa: E402
from gpu_helpers import eager_then_graph  # noqa: E402
from test_kernels_gpu import paged_case  # noqa: E402

# the waiters' weight reads before their polls (tc_gemv's waiter_steps)
WAITER_ENVS = [{}, {"KILN_DATAFLOW_EARLY_W": "1"}, {"KILN_DATAFLOW_PREFETCH": "8"},
               {"KILN_DATAFLOW_EARLY_LAUNCH": "1"}, {"KILN_DATAFLOW_POLL": "load"}]
WAITER_IDS = ["plain", "early_w", "prefetch", "early_launch", "load_polls"]


def _same(out, want):
    assert torch.equal(out, want)


def _mlp(hidden, inter, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    mlp = GatedMLP(hidden, inter, False, dtype, "cuda")
    for p in mlp.parameters():
        p.data.copy_(torch.randn(p.shape, generator=gen, device="cuda") * 0.02)
    return mlp


@pytest.mark.parametrize("waiter", WAITER_ENVS, ids=WAITER_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 4, 16])
@pytest.mark.parametrize("shape", [(4096, 14336), (256, 512)])
def test_flowing_mlp_bits_under_pdl_and_graphs(shape, rows, dtype, waiter, monkeypatch):
    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.setenv("KILN_PDL", "1")
    for name, value in waiter.items():
        monkeypatch.setenv(name, value)
    hidden, inter = shape
    mlp = _mlp(hidden, inter, dtype, seed=rows)
    x = torch.randn(rows, hidden, device="cuda").to(dtype)
    want = mlp(x)
    flags = dataflow.RowFlags(1, 2 * inter, "cuda")
    assert mlp._flows(x)

    def run():  # under PDL the consumer launches while gate_up runs
        flags.begin()
        return mlp(x, flags.slot(0))

    eager_then_graph(run, lambda out: _same(out, want), 20, 50)
    assert int(flags.errors) == 0
    assert int(flags.epoch) == 20 + 50  # the captured begin() runs only in the replays


def _attention(dtype, seed):
    rotary = RotaryEmbedding(128, 8192, RopeConfig(), "cuda")
    attn = PagedSelfAttention(4096, 32, 8, 128, rotary, qkv_bias=False, o_bias=False,
                              qk_norm=False, rms_norm_eps=1e-5, sliding_window=None, dtype=dtype,
                              device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for p in attn.parameters():
        p.data.copy_(torch.randn(p.shape, generator=gen, device="cuda") * 0.02)
    return attn


@pytest.mark.parametrize("waiter", WAITER_ENVS[::3] + WAITER_ENVS[4:],
                         ids=WAITER_IDS[::3] + WAITER_IDS[4:])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rope", ["0", "1"])
@pytest.mark.parametrize("rows,graph_len", [(1, 8192), (4, 8192), (16, 8192), (1, 0), (16, 0)])
def test_flowing_attention_bits_under_pdl_and_graphs(rows, graph_len, rope, dtype, waiter,
                                                     monkeypatch):
    """8B attention layer (32 query heads over 8 kv heads) at decode rows: contexts split into
    partitions and merged in the kernel (max_seq_len as a decode graph fixes it), or one
    partition each (graph_len 0: the batch's own longest context); rope "1": RoPE in the decode
    kernel, which then also reads q, k and v as qkv_proj marks them ready."""
    import dataclasses

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.setenv("KILN_PDL", "1")
    for name, value in waiter.items():
        monkeypatch.setenv(name, value)
    attn = _attention(dtype, seed=rows)
    gen = torch.Generator(device="cuda").manual_seed(11 + rows)
    contexts = torch.randint(30, 3000, (rows,), generator=gen, device="cuda").tolist()
    kv_cache, meta = paged_case([(c, 1) for c in contexts], 8, 128, 16, dtype, gen)
    if graph_len:
        meta = dataclasses.replace(meta, max_seq_len=graph_len)
    positions = torch.tensor(contexts, device="cuda")
    x = torch.randn(rows, 4096, device="cuda").to(dtype)
    want = attn(positions, x, kv_cache, meta)
    monkeypatch.setenv("KILN_ATTN_ROPE", rope)
    flags = dataflow.RowFlags(2, 6144 // 16, "cuda")
    slot, qkv_slot = attn.flow_slot(flags, 0), flags.slot(1)

    def run():
        flags.begin()
        return attn(positions, x, kv_cache, meta, flow=slot, qkv_flow=qkv_slot)

    eager_then_graph(run, lambda out: _same(out, want), 20, 50)
    assert torch.equal(flags.flags[0, :rows * 8], flags.epoch.expand(rows * 8))
    assert bool((flags.flags[1] == flags.epoch).all()) == (rope == "1")
    assert int(flags.errors) == 0
    assert int(flags.epoch) == 20 + 50  # the captured begin() runs only in the replays


def test_engine_greedy_tokens_with_and_without_dataflow(tmp_path, monkeypatch):
    from kiln import LLM, SamplingParams
    from kiln.models.random_model import write_random_model

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    write_random_model("tiny-llama-d128", tmp_path / "m", seed=3, dtype="bfloat16")
    prompts = [{"prompt_token_ids": list(range(3 + i, 40 + 3 * i))} for i in range(5)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=1)
    runs = {}
    for flag, rope in (("0", "0"), ("1", "0"), ("attn", "0"), ("1", "1")):
        monkeypatch.setenv("KILN_DATAFLOW", flag)
        monkeypatch.setenv("KILN_ATTN_ROPE", rope)
        llm = LLM(str(tmp_path / "m"), device="cuda", gpu_memory_utilization=0.2, max_num_seqs=8)
        outs = llm.generate(prompts, params)
        runs[flag + rope] = [o.outputs[0].token_ids for o in outs]
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        flags = getattr(llm.engine.model, "_flags", None)
        if flag != "0":  # the decode steps ran the flowing boundaries, no poll loop gave up
            assert flags is not None and int(flags.errors) == 0 and int(flags.epoch) > 24
            # slots per layer: norm1, qkv, attn, o, norm2, mlp, down (LlamaFamilyModel._SLOTS)
            used = [int((flags.flags[i::7] == flags.epoch).sum()) for i in range(7)]
            assert used[2] > 0  # attention -> o_proj
            assert [used[i] > 0 for i in (0, 3, 4, 5, 6)] == [flag == "1"] * 5
            assert (used[1] > 0) == (rope == "1")
        del llm
        torch.cuda.empty_cache()
    assert runs["10"] == runs["00"] and runs["attn0"] == runs["00"] and runs["11"] == runs["00"]


@pytest.mark.parametrize("polls", ["atomic", "load"])
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_flowing_model_bits_under_pdl_and_graphs(rows, polls, monkeypatch):
    """Two decoder layers of the 8B architecture with every boundary flowing (KILN_DATAFLOW=1,
    KILN_ATTN_ROPE=1: norms, qkv_proj, attention, o_proj, the MLP), decode rows over split
    contexts, eager under PDL and replayed from a CUDA graph: the hidden states of the separate
    launches, bit for bit, every slot set each step, no poll given up."""
    import dataclasses

    from kiln.models.args import ModelArgs
    from kiln.models.llama import LlamaFamilyModel
    from kiln.models.presets import preset_config

    monkeypatch.delenv("KILN_KERNELS", raising=False)
    monkeypatch.setenv("KILN_PDL", "1")
    config = dict(preset_config("llama-3-8b"), num_hidden_layers=2, vocab_size=1024)
    args = ModelArgs.from_hf_config(config)
    model = LlamaFamilyModel(args, torch.bfloat16, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(rows)
    for p in model.parameters():
        p.data.copy_(torch.randn(p.shape, generator=gen, device="cuda") * 0.02)
    for layer in model.layers:  # norm weights near 1, as trained models have them
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.data.add_(1.0)
    contexts = torch.randint(30, 3000, (rows,), generator=gen, device="cuda").tolist()
    caches, meta = [], None
    for _ in range(2):
        cache, meta = paged_case([(c, 1) for c in contexts], 8, 128, 16, torch.bfloat16,
                                 torch.Generator(device="cuda").manual_seed(7))
        caches.append(cache)
    meta = dataclasses.replace(meta, max_seq_len=8192)
    ids = torch.randint(0, 1024, (rows,), generator=gen, device="cuda")
    positions = torch.tensor(contexts, device="cuda")
    monkeypatch.setenv("KILN_DATAFLOW", "0")
    want = model(ids, positions, caches, meta)
    monkeypatch.setenv("KILN_DATAFLOW", "1")
    monkeypatch.setenv("KILN_ATTN_ROPE", "1")
    monkeypatch.setenv("KILN_DATAFLOW_POLL", polls)
    eager_then_graph(lambda: model(ids, positions, caches, meta), lambda out: _same(out, want),
                     10, 30)
    flags = model._flags
    # every slot of both layers set, but the first layer's input norm (no residual before it)
    assert bool((flags.flags[1:, 0] == flags.epoch).all()) and int(flags.flags[0, 0]) == 0
    assert int(flags.errors) == 0 and int(flags.epoch) == 10 + 30
