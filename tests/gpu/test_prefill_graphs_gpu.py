"""On the GPU: the piecewise prefill graphs (kiln.runner.prefill_graphs) replay what the eager
forward computes, alone and in the engine (bf16 and an fp8 engine)."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from gpu_helpers import assert_top5_agree, rel_err  # noqa: E402

BLOCK = 16


def _step(model, caches, seqs, ids, rows, graphs=None):
    from kiln.layers.forward_context import build_step_inputs

    meta, positions, (ids_t, rows_t) = build_step_inputs(seqs, BLOCK, "cuda", extra=(ids, rows))
    selected = rows_t if rows_t.shape[0] < ids_t.shape[0] else None
    with torch.inference_mode():
        if graphs is not None:
            return graphs.forward(ids_t, positions, meta, selected)
        return model(ids_t, positions, caches, meta, selected)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-llama-d128", "tiny-mistral", "tiny-qwen3"])
def test_replay_matches_the_eager_forward(tmp_path, preset):
    """Fresh prompts (the fresh-prefill attention where the head size allows), a mixed step and a
    chunk over a cached prefix, each padded to its bucket: the replayed hidden rows and the cache
    writes match the eager forward's in bf16; a step past the largest bucket returns None."""
    from kiln.models.loader import load_model
    from kiln.models.random_model import write_random_model
    from kiln.runner.memory import allocate_kv_caches
    from kiln.runner.prefill_graphs import PrefillGraphs

    model = load_model(write_random_model(preset, tmp_path, seed=5, dtype="bfloat16"),
                       device="cuda")
    args = model.args
    eager = allocate_kv_caches(args, 64, BLOCK, torch.bfloat16, "cuda")
    cached = allocate_kv_caches(args, 64, BLOCK, torch.bfloat16, "cuda")
    graphs = PrefillGraphs(model, cached, 128, BLOCK, torch.device("cuda"))
    graphs.capture()
    g = torch.Generator().manual_seed(1)
    a = torch.randint(3, args.vocab_size, (77,), generator=g).tolist()
    b = torch.randint(3, args.vocab_size, (30,), generator=g).tolist()
    steps = [
        ([(0, 77, [0, 1, 2, 3, 4])], a, [76]),
        ([(77, 1, [0, 1, 2, 3, 4]), (0, 20, [5, 6])], [9] + b[:20], [0, 20]),
        ([(78, 1, [0, 1, 2, 3, 4]), (20, 10, [5, 6]), (0, 5, [7])], [4] + b[20:] + a[:5],
         list(range(16))),
    ]
    for seqs, ids, rows in steps:
        want = _step(model, eager, seqs, ids, rows)
        got = _step(model, cached, seqs, ids, rows, graphs)
        assert got.shape == want.shape
        assert rel_err(got, want) < 2e-2, (seqs, rel_err(got, want))
    for x, y in zip(eager, cached):
        assert rel_err(y.float(), x.float()) < 2e-2  # and the padding wrote no slot
    assert _step(model, cached, [(0, 129, list(range(9)))], list(range(3, 132)), [128],
                 graphs) is None


def _greedy(llm, prompts, n=24):
    from kiln import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=5)
    return [o.outputs[0] for o in llm.generate(prompts, sp)]


def _with_and_without(monkeypatch, model_dir, **kwargs):
    """Greedy runs of model_dir with prefill graphs (counting the steps they ran) and without;
    chunked prefill (64-token steps) and prompts arriving together make mixed steps."""
    from kiln import LLM

    prompts = [{"prompt_token_ids": list(range(5 + i, 5 + i + 11 * i + 3))} for i in range(9)]
    runs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("KILN_PREFILL_GRAPHS", flag)
        llm = LLM(model_dir, device="cuda", num_kv_blocks=256, max_num_seqs=8,
                  max_num_batched_tokens=64, **kwargs)
        graphs = llm.engine.runner.prefill_graphs
        assert (graphs is not None) == (flag == "1")
        replays = []
        if graphs is not None:
            assert graphs.buckets == [16, 32, 48, 64]
            real = graphs.forward

            def counting(*args, **kw):
                out = real(*args, **kw)
                replays.append(out is not None)
                return out
            graphs.forward = counting
        runs[flag] = _greedy(llm, prompts)
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        if graphs is not None:
            assert sum(replays) >= 5, replays
        del llm
        torch.cuda.empty_cache()
    return runs


def test_engine_greedy_with_and_without_prefill_graphs(tmp_path, monkeypatch):
    from kiln.models.random_model import write_random_model

    write_random_model("tiny-llama-d128", tmp_path, seed=6, dtype="bfloat16")
    runs = _with_and_without(monkeypatch, str(tmp_path))
    assert_top5_agree(runs["1"], runs["0"], "bf16")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 needs sm89+")
def test_fp8_engine_greedy_with_and_without_prefill_graphs(tmp_path, monkeypatch):
    """An fp8 engine (fp8 KV cache too): the producers' quantization and the fp8 cache's
    fresh-prompt codes inside the captured pieces."""
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.models.random_model import write_random_model
    from kiln.quant.config import QuantConfig

    write_random_model("tiny-llama-d128", tmp_path / "src", seed=7, dtype="bfloat16")
    engine = build_engine(BuildOptions(str(tmp_path / "src"), str(tmp_path / "fp8"),
                                       QuantConfig("fp8"), eval_tokens=0, device="cuda",
                                       progress=False, kv_cache_dtype="fp8"))["path"]
    runs = _with_and_without(monkeypatch, engine)
    assert_top5_agree(runs["1"], runs["0"], "fp8")
