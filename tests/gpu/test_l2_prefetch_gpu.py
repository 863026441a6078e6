"""On the GPU: the side-stream L2 weight prefetch (KILN_L2_PREFETCH) changes no bit of the output."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.uint8])
def test_prefetch_kernels_run_and_write_nothing(mode, dtype):
    from kiln.kernels.l2_prefetch import prefetch_l2

    if dtype == torch.float8_e4m3fn and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs an FP8 GPU")
    if mode == 3 and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the bulk prefetch is sm_90+")
    w = torch.randint(0, 255, (1000, 4096), dtype=torch.uint8, device="cuda").view(dtype)
    before = w.view(torch.uint8).clone()
    for budget in (1, 4096 * 1000 // 3, 1 << 30):
        asked = prefetch_l2(w, budget, mode)
        row_bytes = w.shape[1] * w.element_size()
        assert 0 < asked <= w.shape[0] * max(row_bytes, 128)
    torch.cuda.synchronize()
    assert torch.equal(w.view(torch.uint8), before)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen3"])
def test_engine_output_is_the_same_with_the_prefetch(tmp_path, monkeypatch, preset):
    """Greedy tokens and logprobs of batch-1 and batch-3 decode, eager and through CUDA graphs,
    are identical with KILN_L2_PREFETCH on (each site, each mode, on a side stream and in the
    model's stream) and off, and nothing compiles
    after start-up."""
    from kiln import LLM, SamplingParams
    from kiln.kernels import l2_prefetch
    from kiln.models.random_model import write_random_model

    write_random_model(preset, tmp_path, seed=5, dtype="bfloat16")
    prompts = [{"prompt_token_ids": list(range(20 + i, 47 + 3 * i))} for i in range(3)]
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3)
    forks = []
    real = l2_prefetch.prefetch_l2
    monkeypatch.setattr(l2_prefetch, "prefetch_l2", lambda *a: (forks.append(a[1]), real(*a))[1])
    results = {}
    for setting, mode, stream in (("0", "1", "side"), ("34,8,6,8", "1", "side"),
                                  ("1,0.5,0.25,1", "2", "side"), ("34,8,6,8", "3", "side"),
                                  ("34,8,6,8", "1", "main"), ("34,8,6,8", "3", "main")):
        monkeypatch.setenv("KILN_L2_PREFETCH", setting)
        monkeypatch.setenv("KILN_L2_PREFETCH_MODE", mode)
        monkeypatch.setenv("KILN_L2_PREFETCH_STREAM", stream)
        for eager in (True, False):
            forks.clear()
            llm = LLM(str(tmp_path), dtype="bfloat16", device="cuda", enforce_eager=eager,
                      max_num_seqs=4, gpu_memory_utilization=0.2)
            outs = [llm.generate(prompts[:1], sp)[0], *llm.generate(prompts, sp)]
            results[setting, mode, stream, eager] = [(o.outputs[0].token_ids, o.outputs[0].logprobs)
                                             for o in outs]
            assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
            # eager runs launch the prefetch in every decode step; graphs at capture
            assert bool(forks) == (setting != "0"), (setting, eager)
            del llm
    for key, value in results.items():
        assert value == results["0", "1", "side", key[3]], key
