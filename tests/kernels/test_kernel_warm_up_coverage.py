"""The start-up warm-up meets every kernel variant a serving workload needs.

Triton compiles one variant per set of compile-time constants (tile sizes and switches that the
dispatchers pick from each step's shape). A variant first needed while serving is compiled while
a step waits: on the H200 a fresh machine's first 1000-request run took up to 48% longer than
its second. Here, under the interpreter, every (kernel, constants, warps, stages) launched by a
workload with chunked prefill, prefix hits, mixed steps and long-context decodes must have been
launched by the warm-up already. (Decode-only steps are eager here; on a GPU they replay graphs
captured at start-up, so this is the stricter check.)
"""

import pytest
import torch
from triton.runtime import interpreter

from kiln import SamplingParams
from kiln.kernels import decode_attention


@pytest.fixture
def launches(monkeypatch):
    seen = set()
    real = interpreter.InterpretedFunction.run

    def recording(self, *args, **kwargs):
        consts = tuple(sorted((k, v) for k, v in kwargs.items() if k.isupper()))
        seen.add((self.fn.__name__, consts, kwargs.get("num_warps"), kwargs.get("num_stages")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording)
    return seen


@pytest.mark.parametrize("rope", ["0", "1"], ids=["rotary-launch", "attn-rope"])
def test_warm_up_covers_a_serving_workload(tmp_path, launches, monkeypatch, rope):
    """With KILN_ATTN_ROPE=1 (the default) decode-only steps take RoPE in the decode kernel, so
    the mixed steps' decode rows need variants without it that the warm-up must still meet; with
    0 every step takes the rotary launch."""
    from kiln.engine.llm_engine import LLMEngine
    from kiln.models.random_model import write_random_model

    monkeypatch.setenv("KILN_ATTN_ROPE", rope)

    # A chip of 64 SMs, so that long contexts are split into partitions as on a GPU.
    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 64)
    write_random_model("tiny-llama", tmp_path, seed=0, dtype="float16")
    engine = LLMEngine.from_args(str(tmp_path), dtype="float16", device="cpu",
                                 max_num_batched_tokens=48, max_num_seqs=8, max_model_len=512)
    launches.clear()
    engine._warm_up_kernels(engine.config.cache.block_size)
    warmed = set(launches)
    # a split decode: partitions merged in the partition kernel (the default) or by the reduce
    assert any(name == "_decode_reduce_kernel"
               or (name == "_decode_partition_kernel" and ("SINGLE", False) in consts)
               for name, consts, *_ in warmed), "no split decode warmed"
    launches.clear()
    lengths = [5, 40, 150, 300, 40]  # the last repeats the second prompt's tokens: a prefix hit
    prompts = [[3 + (i * 7 + j) % 200 for j in range(n)] for i, n in enumerate(lengths[:-1])]
    prompts.append(list(prompts[1]))
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": ids},
                           SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert launches, "the workload ran no Triton kernel"
    missing = sorted(launches - warmed, key=str)
    assert not missing, f"variants first met while serving: {missing}"
    assert engine.stats()["prefix_cache_hits"] > 0
    assert torch.float16 == engine.dtype


def test_warm_up_covers_large_decode_batches(tmp_path, launches, monkeypatch):
    """With max_num_seqs at or past the large-batch decode threshold, the warm-up launches the
    large-batch decode tile, so a workload of that many concurrent requests compiles nothing new
    (its mixed steps and, here, eager decode steps use it)."""
    from kiln.engine.llm_engine import LLMEngine
    from kiln.models.random_model import write_random_model

    monkeypatch.setattr(decode_attention, "_num_sms", lambda device: 4)
    write_random_model("tiny-llama", tmp_path, seed=0, dtype="float16")
    n_large = decode_attention.large_decode_min_seqs(2, 4)  # tiny-llama: 2 kv heads
    engine = LLMEngine.from_args(str(tmp_path), dtype="float16", device="cpu",
                                 max_num_batched_tokens=64, max_num_seqs=n_large + 2,
                                 max_model_len=256)
    launches.clear()
    engine._warm_up_kernels(engine.config.cache.block_size)
    warmed = set(launches)
    large = decode_attention.LARGE_DECODE_TILE
    tile = (("BLOCK_N", large["block_n"]),)
    assert any(name == "_decode_partition_kernel" and set(tile) <= set(consts)
               and warps == large["num_warps"] for name, consts, warps, _ in warmed)
    launches.clear()
    for i in range(n_large + 2):
        engine.add_request(str(i), {"prompt_token_ids": [3 + i, 5, 7 + i, 11] * (1 + i % 3)},
                           SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    missing = sorted(launches - warmed, key=str)
    assert not missing, f"variants first met while serving: {missing}"


def test_warm_up_covers_an_int8_lm_head(tmp_path, launches):
    """An int4-wo engine with an int8-wo LM head: the head is the only int8 layer, so the warm-up
    must give it the row counts of a few decoding sequences itself (it once compiled its 4-row
    GEMV tile while serving, on the H200)."""
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.engine.llm_engine import LLMEngine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama", tmp_path / "src", seed=8, dtype="float16")
    path = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"),
                                     QuantConfig("int4-wo", lm_head="int8-wo", group_size=64),
                                     eval_tokens=0, device="cpu", progress=False,
                                     calib_samples=2))["path"]
    engine = LLMEngine.from_args(path, dtype="float16", device="cpu", max_num_batched_tokens=48,
                                 max_num_seqs=8, max_model_len=256)
    launches.clear()
    engine._warm_up_kernels(engine.config.cache.block_size)
    warmed = set(launches)
    launches.clear()
    for i in range(3):
        engine.add_request(str(i), {"prompt_token_ids": list(range(3, 30))},
                           SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert any(name == "_gemv_kernel" for name, *_ in launches), "the head ran no GEMV"
    missing = sorted(launches - warmed, key=str)
    assert not missing, f"variants first met while serving: {missing}"


def test_warm_up_gives_the_prefill_gemm_every_row_class(tmp_path, monkeypatch):
    """Triton compiles the weight-only prefill GEMM apart per M bucket and per whether M is a
    multiple of 16 (an int4-wo 8B engine compiled two variants for 128-token prompts while
    serving, on the H200): the warm-up meets every (bucket, multiple of 16) a workload within
    max_model_len can, and a 128-token prompt at one sequence (as `kiln bench latency` runs
    it) adds none."""
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.engine.llm_engine import LLMEngine
    from kiln.kernels import quant_matmul
    from kiln.kernels.qmm_common import GEMV_MAX_M
    from kiln.kernels.quant_gemm import m_bucket
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    seen = set()
    real = quant_matmul.m_bucket

    def recording(m):
        seen.add((m_bucket(m), m % 16 == 0))
        return real(m)

    monkeypatch.setattr(quant_matmul, "m_bucket", recording)
    write_random_model("tiny-llama", tmp_path / "src", seed=8, dtype="float16")
    path = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "e"),
                                     QuantConfig("int4-wo", group_size=64), eval_tokens=0,
                                     device="cpu", progress=False, calib_samples=2))["path"]
    engine = LLMEngine.from_args(path, dtype="float16", device="cpu", max_num_seqs=1,
                                 max_model_len=300)
    seen.clear()
    engine._warm_up_kernels(engine.config.cache.block_size)
    warmed = set(seen)
    reachable = {(m_bucket(m), m % 16 == 0) for m in range(GEMV_MAX_M + 1, 301)}
    assert reachable <= warmed, sorted(reachable - warmed)
    seen.clear()
    engine.add_request("0", {"prompt_token_ids": [3 + j % 200 for j in range(128)]},
                       SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert seen and seen <= warmed
