"""On the GPU: kiln's greedy output in bf16 agrees with transformers under the top-5 rule."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from gpu_helpers import assert_top5_agree  # noqa: E402


def _hf_greedy(model_dir, prompt_ids, n):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    ids = torch.tensor([prompt_ids], device="cuda")
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    top5 = [set(torch.topk(s[0].float(), 5).indices.tolist()) for s in out.scores]
    return tokens, top5


def _large_batch_fp8_engine(tmp_path, preset: str, seed: int, kv_heads: int):
    """(path, n): an fp8 engine of a random `preset` checkpoint built for n + 8 sequences, n
    being 8 more than the sequence count from which decode takes the large-batch tile (one
    partition per sequence)."""
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.kernels.decode_attention import _num_sms, large_decode_min_seqs
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model(preset, tmp_path / "src", seed=seed, dtype="bfloat16")
    n = large_decode_min_seqs(kv_heads, _num_sms(torch.device("cuda"))) + 8
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "fp8"),
                                       QuantConfig("fp8"), eval_tokens=0, device="cuda",
                                       progress=False, max_batch_size=n + 8))["path"]
    return engine, n


def test_kv_blocks_from_gpu_memory_utilization(tmp_path, monkeypatch):
    """Start-up memory profiling sizes the KV cache from gpu_memory_utilization: the card's share
    less what this process holds (the weights), the profiled forward pass and what other
    processes hold, which this test pins at none (other test processes come and go). A share
    256 MiB above what the process holds leaves the tiny model (4 KiB blocks; 4096 sequences
    could use 512 MiB, so the cap on blocks does not decide) between 128 and 256 MiB of cache; a
    share below the weights is refused, naming the option. The other engine tests fix
    num_kv_blocks so that they can share a card."""
    import gc

    from kiln import LLM, SamplingParams
    from kiln.errors import KilnError
    from kiln.models.random_model import write_random_model

    write_random_model("tiny-llama", tmp_path, seed=2, dtype="bfloat16")
    real = torch.cuda.mem_get_info

    def alone(device=None):
        free, total = real(device)
        return total - torch.cuda.memory_reserved(device), total
    monkeypatch.setattr(torch.cuda, "mem_get_info", alone)
    gc.collect()
    torch.cuda.empty_cache()
    total = real()[1]
    share = torch.cuda.memory_allocated() + 256 * 2**20
    llm = LLM(str(tmp_path), dtype="bfloat16", device="cuda", enforce_eager=True, max_num_seqs=4096,
              max_num_batched_tokens=4096, gpu_memory_utilization=share / total)
    runner = llm.engine.runner
    kv_bytes = sum(t.numel() * t.element_size() for t in runner.kv_caches)
    assert 128 * 2**20 < kv_bytes <= 256 * 2**20, kv_bytes
    assert all(t.shape[1] == runner.num_kv_blocks for t in runner.kv_caches)
    out = llm.generate({"prompt_token_ids": list(range(3, 40))},
                       SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 8
    del llm, runner
    gc.collect()
    torch.cuda.empty_cache()
    with pytest.raises(KilnError, match="gpu-memory-utilization"):
        LLM(str(tmp_path), dtype="bfloat16", device="cuda", enforce_eager=True, max_num_seqs=4,
            gpu_memory_utilization=2**10 / total)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen3", "tiny-mistral"])
@pytest.mark.parametrize("enforce_eager", [True, False])
def test_bf16_greedy_matches_transformers(tmp_path, preset, enforce_eager):
    from kiln import LLM, SamplingParams
    from kiln.models.random_model import write_random_model

    write_random_model(preset, tmp_path, seed=1, dtype="bfloat16")
    prompt = list(range(20, 60))
    n = 32
    llm = LLM(str(tmp_path), dtype="bfloat16", device="cuda", enforce_eager=enforce_eager,
              max_num_seqs=8, num_kv_blocks=256)
    out = llm.generate({"prompt_token_ids": prompt},
                       SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=5))
    ours = out[0].outputs[0].token_ids
    our_top5 = [set(d) for d in out[0].outputs[0].logprobs]
    theirs, their_top5 = _hf_greedy(str(tmp_path), prompt, n)
    agreed = 0
    for i in range(n):
        if ours[i] != theirs[i]:
            assert ours[i] in their_top5[i] and theirs[i] in our_top5[i], (i, ours, theirs)
            break
        agreed += 1
    assert agreed >= 1, (ours, theirs)  # random tiny models have near-ties in bf16


def test_batched_decode_with_graphs_equals_eager(tmp_path):
    from kiln import LLM, SamplingParams
    from kiln.models.random_model import write_random_model

    write_random_model("tiny-llama", tmp_path, seed=2, dtype="float32")
    prompts = [{"prompt_token_ids": list(range(5, 5 + 3 * i + 1))} for i in range(12)]
    sp = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    eager = LLM(str(tmp_path), dtype="float32", device="cuda", enforce_eager=True,
                num_kv_blocks=512, max_num_seqs=16).generate(prompts, sp)
    graph = LLM(str(tmp_path), dtype="float32", device="cuda", num_kv_blocks=512,
                max_num_seqs=16).generate(prompts, sp)
    assert [o.outputs[0].token_ids for o in eager] == [o.outputs[0].token_ids for o in graph]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="programmatic dependent launch needs sm90+")
@pytest.mark.parametrize("triton_gemv", ["0", "1"])
def test_programmatic_dependent_launch_changes_no_bit(tmp_path, monkeypatch, triton_gemv):
    """KILN_PDL=1 (every launch: kernels scheduled before their predecessor ends, each waiting for
    it in-kernel) and the default KILN_PDL=auto (small decode graphs) give the same tokens and
    logprobs as ordinary launches, eager and through CUDA graphs, with the decode GEMVs on cuBLAS
    or on the Triton kernel (an all-Triton chain)."""
    from kiln import LLM, SamplingParams
    from kiln.models.random_model import write_random_model

    write_random_model("tiny-llama", tmp_path, seed=3, dtype="bfloat16")
    prompts = [{"prompt_token_ids": list(range(7, 7 + 5 * i + 3))} for i in range(10)]
    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=3)
    monkeypatch.setenv("KILN_TRITON_GEMV", triton_gemv)
    results = {}
    for pdl in ("0", "1", "auto", "early"):
        monkeypatch.setenv("KILN_PDL", "1" if pdl == "early" else pdl)
        # early: kernels let the next one be scheduled before they wait, and the GEMVs ask for
        # their whole weight slice in L2 before waiting
        monkeypatch.setenv("KILN_PDL_EARLY", "1" if pdl == "early" else "0")
        monkeypatch.setenv("KILN_GEMV_PREFETCH", "1000000" if pdl == "early" else "0")
        for eager in (True, False):
            llm = LLM(str(tmp_path), dtype="bfloat16", device="cuda", enforce_eager=eager,
                      num_kv_blocks=512, max_num_seqs=16)
            outs = llm.generate(prompts, sp)
            results[pdl, eager] = [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]
            del llm
    for eager in (True, False):
        assert results["1", eager] == results["0", eager], f"KILN_PDL=1, enforce_eager={eager}"
        assert results["auto", eager] == results["0", eager], f"KILN_PDL=auto, enforce_eager={eager}"
        assert results["early", eager] == results["0", eager], f"early PDL, enforce_eager={eager}"


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="programmatic dependent launch needs sm90+")
def test_pdl_auto_covers_small_decode_graphs_only(monkeypatch):
    from kiln import kernels

    monkeypatch.delenv("KILN_PDL", raising=False)
    t = torch.zeros(1, device="cuda")
    assert not kernels.pdl_enabled(t)
    with kernels.pdl_scope(True):
        assert kernels.pdl_args(t) == {"PDL": True, "launch_pdl": True}
    monkeypatch.setenv("KILN_PDL", "0")
    with kernels.pdl_scope(True):
        assert not kernels.pdl_enabled(t)
    monkeypatch.setenv("KILN_PDL", "1")
    assert kernels.pdl_enabled(t)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 engines need an FP8 GPU")
def test_producer_quant_changes_no_bit(tmp_path, monkeypatch):
    """KILN_PRODUCER_QUANT=1 (norms and SiLU-mul quantize the fp8 linears' inputs) gives an fp8
    engine the same tokens and logprobs as the separate quantization launches, eager and
    through CUDA graphs."""
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama", tmp_path / "src", seed=5, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "fp8"),
                                       QuantConfig("fp8"), eval_tokens=0, device="cuda",
                                       progress=False))["path"]
    prompts = [{"prompt_token_ids": list(range(9, 9 + 4 * i + 2))} for i in range(12)]
    sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=3)
    results = {}
    for flag in ("0", "1", "attn"):  # attn: the attention quantizes o_proj's input as well
        monkeypatch.setenv("KILN_PRODUCER_QUANT", "0" if flag == "0" else "1")
        monkeypatch.setenv("KILN_ATTN_QUANT_OUT", "1" if flag == "attn" else "0")
        for eager in (True, False):
            llm = LLM(engine, device="cuda", enforce_eager=eager, num_kv_blocks=512,
                      max_num_seqs=16)
            if flag != "0":
                assert llm.engine.model.layers[0].mlp.act.quant_dtype == torch.float8_e4m3fn
            assert (llm.engine.model.layers[0].self_attn.quant_dtype is not None) == (flag == "attn")
            outs = llm.generate(prompts, sp)
            results[flag, eager] = [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]
            del llm
    for eager in (True, False):
        assert results["1", eager] == results["0", eager], f"enforce_eager={eager}"
        assert results["attn", eager] == results["0", eager], f"attn, enforce_eager={eager}"


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 engines need an FP8 GPU")
@pytest.mark.parametrize("preset,kv_heads", [("tiny-llama", 2), ("tiny-llama-d128", 1)])
def test_attention_quant_out_large_batch_fp8_cache(tmp_path, monkeypatch, preset, kv_heads):
    """Decode batches large enough for one partition per sequence over an fp8 cache: with
    KILN_ATTN_QUANT_OUT=1 the attention kernel quantizes o_proj's input itself (also for the last
    layer's sampled rows, re-padded for cuBLAS), and the tokens and logprobs are those of the
    separate quantization launch, eager and through CUDA graphs; nothing compiles after start-up.
    Only the Triton kernel quantizes: tiny-llama-d128 (head_dim 128) runs the Gluon kernel
    without it, so there the comparison is also Gluon against Triton."""
    from kiln import LLM, SamplingParams
    from kiln.kernels import decode_gluon

    engine, n = _large_batch_fp8_engine(tmp_path, preset, 6, kv_heads)
    prompts = [{"prompt_token_ids": list(range(9 + i % 50, 9 + i % 50 + 3 + i % 7))}
               for i in range(n)]
    sp = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=2)
    gluon_launches = []
    real = decode_gluon.decode_fp8
    monkeypatch.setattr(decode_gluon, "decode_fp8", lambda *a, **k: (
        gluon_launches.append(1), real(*a, **k)))
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_ATTN_QUANT_OUT", flag)
        for eager in (True, False):
            gluon_launches.clear()
            llm = LLM(engine, device="cuda", enforce_eager=eager, num_kv_blocks=8 * (n + 8),
                      max_num_seqs=n + 8, kv_cache_dtype="fp8", max_num_batched_tokens=16384)
            outs = llm.generate(prompts, sp)
            results[flag, eager] = [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]
            compiles = llm.engine.stats()["kernel_compiles_after_startup"]
            assert compiles == 0, f"KILN_ATTN_QUANT_OUT={flag}, eager={eager}: {compiles}"
            if flag == "0":  # the Gluon kernel ran the head_dim-128 engine's large batches
                assert bool(gluon_launches) == (kv_heads == 1), eager
            del llm
    for eager in (True, False):
        assert results["1", eager] == results["0", eager], f"enforce_eager={eager}"


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 engines need an FP8 GPU")
def test_gluon_decode_attention_in_the_engine(tmp_path, monkeypatch):
    """Decode batches large enough for one partition per sequence over an fp8 cache with head_dim
    128 run the Gluon kernel (KILN_ATTN_GLUON=1, the default), eager and through CUDA graphs,
    with nothing compiled after start-up; greedy tokens agree with the Triton kernel's
    (KILN_ATTN_GLUON=0) under the top-5 rule."""
    from kiln import LLM, SamplingParams
    from kiln.kernels import decode_gluon

    engine, n = _large_batch_fp8_engine(tmp_path, "tiny-llama-d128", 3, 1)
    prompts = [{"prompt_token_ids": list(range(9 + i % 50, 9 + i % 50 + 3 + i % 60))}
               for i in range(n)]
    sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=5)
    launches = []
    real = decode_gluon.decode_fp8
    monkeypatch.setattr(decode_gluon, "decode_fp8",
                        lambda *a, **k: (launches.append(a[0].shape[0]), real(*a, **k)))
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KILN_ATTN_GLUON", flag)
        for eager in (True, False):
            launches.clear()
            # every prompt in the first step, so that the decode steps hold all n sequences
            llm = LLM(engine, device="cuda", enforce_eager=eager, num_kv_blocks=8 * (n + 8),
                      max_num_seqs=n + 8, kv_cache_dtype="fp8", max_num_batched_tokens=16384)
            outs = llm.generate(prompts, sp)
            results[flag, eager] = [o.outputs[0] for o in outs]
            compiles = llm.engine.stats()["kernel_compiles_after_startup"]
            assert compiles == 0, f"KILN_ATTN_GLUON={flag}, eager={eager}: {compiles}"
            assert bool(launches) == (flag == "1"), (flag, eager, launches[:4])
            del llm
    for eager in (True, False):
        assert_top5_agree(results["0", eager], results["1", eager], eager)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 engines need an FP8 GPU")
def test_fp8_lm_head_engine(tmp_path):
    """An engine built with --lm-head-quant fp8 on the GPU tunes the head with the other
    quantized layers, computes the fp8 W8A8 product for any row count, and generates through
    CUDA graphs."""
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.build.engine_dir import load_engine_model
    from kiln.kernels.quant_ref import fp8_linear_ref
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama", tmp_path / "src", seed=7, dtype="bfloat16")
    info = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"),
                                     QuantConfig("fp8", lm_head="fp8"), eval_tokens=0,
                                     device="cuda", progress=False))
    model, _ = load_engine_model(info["path"], "cuda")
    head = model.lm_head
    assert head.is_quantized and head.weight.dtype == torch.float8_e4m3fn
    shapes = info["kernel_tuning"].get("layer_shapes", [])
    assert info["kernel_tuning"]["status"] != "tuned" or ["Fp8LinearMethod", 64, 512] in shapes
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for m in (1, 3, 16, 40):
            hidden = torch.randn(m, 64, generator=gen, device="cuda").to(torch.bfloat16)
            want = fp8_linear_ref(hidden, head.weight, head.weight_scale).float()
            got = model.compute_logits(hidden)
            assert got.dtype == torch.float32
            assert ((got - want).norm() / want.norm()).item() < 2e-2, m
        # the decode graphs' bf16 logits buffer, filled by the head itself (rows 32 and 48: the
        # fp8 GEMM writes it directly; 3: a GEMV's product copied in)
        buf = torch.full((64, 512), float("nan"), device="cuda", dtype=torch.bfloat16)
        for m in (3, 32, 48):
            hidden = torch.randn(m, 64, generator=gen, device="cuda").to(torch.bfloat16)
            want = head(hidden)
            got = head(hidden, out=buf[:m])
            assert got.data_ptr() == buf.data_ptr() and torch.equal(got.float(), want), m
    del model
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [{"prompt_token_ids": list(range(3, 3 + 2 * i + 1))} for i in range(5)]
    for eager in (True, False):
        llm = LLM(info["path"], device="cuda", enforce_eager=eager, num_kv_blocks=256,
                  max_num_seqs=8)
        outs = llm.generate(prompts, sp)
        assert all(len(o.outputs[0].token_ids) == 12 for o in outs)
        assert all(0 <= t < 512 for o in outs for t in o.outputs[0].token_ids)
        del llm


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 engines need an FP8 GPU")
def test_build_tunes_the_decode_step(tmp_path):
    """`kiln build` on the target GPU re-chooses the decode GEMVs by the whole step's time at
    each --step-tuning-batch-sizes entry: engine.json summarises each run, its choices are ones
    loading seeds the autotuners with, the step it kept is no slower than the one it started
    from, and the engine generates through CUDA graphs."""
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.kernels import quant_matmul as qm
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama", tmp_path / "src", seed=11, dtype="bfloat16")
    info = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"), QuantConfig("fp8"),
                                     eval_tokens=0, device="cuda", progress=False,
                                     step_tuning_batch_sizes=(2, 1)))
    tuning = info["kernel_tuning"]
    assert tuning["status"] == "tuned"
    runs = tuning["in_situ"]
    assert [r["batch_size"] for r in runs] == [1, 2]
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    for r in runs:
        assert r["slots"] > 0 and r["trials"] > 0
        assert med(r["step_ms_after"]) <= med(r["step_ms_before"])
    cost = tuning["in_situ_seconds"]
    assert 0 < cost["engine_start"] < cost["total"]
    assert cost["total"] >= sum(r["seconds"] for r in runs)
    assert qm.import_tuning(tuning["results"]) == len(tuning["results"])
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [{"prompt_token_ids": list(range(3, 3 + 2 * i + 1))} for i in range(3)]
    llm = LLM(info["path"], device="cuda", num_kv_blocks=256, max_num_seqs=8)
    outs = llm.generate(prompts, sp)
    assert all(len(o.outputs[0].token_ids) == 12 for o in outs)
    del llm


def test_bf16_engine_build_tunes_the_tensor_core_gemv(tmp_path):
    """`kiln build --quant none` on the GPU tunes the tensor-core GEMV that serves the
    unquantized decode rows, then the decode step; the engine loads the choices and generates
    the same greedy tokens as the checkpoint it came from."""
    from kiln import LLM, SamplingParams
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama", tmp_path / "src", seed=13, dtype="bfloat16")
    info = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"), QuantConfig("none"),
                                     eval_tokens=0, device="cuda", progress=False))
    tuning = info["kernel_tuning"]
    assert tuning["status"] == "tuned"
    assert {s[0] for s in tuning["layer_shapes"]} == {"UnquantizedLinearMethod"}
    assert any(e["kernel"] == "tc_gemv" for e in tuning["results"])
    assert [r["batch_size"] for r in tuning["in_situ"]] == [1] and tuning["in_situ"][0]["slots"] > 0
    sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=5)
    prompts = [{"prompt_token_ids": list(range(5, 5 + 3 * i + 2))} for i in range(3)]
    outs = {}
    for name, path in (("checkpoint", tmp_path / "src"), ("engine", info["path"])):
        llm = LLM(str(path), device="cuda", num_kv_blocks=256, max_num_seqs=8)
        outs[name] = [o.outputs[0] for o in llm.generate(prompts, sp)]
        del llm
    # another launch configuration may sum in another order: where the tokens first differ,
    # each must be in the other's top-5
    assert_top5_agree(outs["checkpoint"], outs["engine"])
