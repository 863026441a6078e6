"""Helpers shared by the GPU tests."""

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN in out gives NaN, which fails any bound)."""
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def randn(*shape, gen, dtype=torch.float32, scale=1.0):
    """Normal noise on CUDA from ``gen``, times ``scale``, in ``dtype``."""
    return (torch.randn(*shape, generator=gen, device="cuda") * scale).to(dtype)


def assert_top5_agree(ours, theirs, what=None):
    """The usual rule for two greedy runs (CompletionOutputs with logprobs of 5): where the tokens
    of a pair first differ, each side's token is in the other's top-5, and the comparison of
    that pair stops there."""
    for a, b in zip(ours, theirs, strict=True):
        for i, (ta, tb) in enumerate(zip(a.token_ids, b.token_ids)):
            if ta != tb:
                assert ta in b.logprobs[i] and tb in a.logprobs[i], (what, i)
                break


def eager_then_graph(run, check, eager: int, replays: int) -> None:
    """``run()`` (one step: it returns its output) ``eager`` times under programmatic dependent
    launch, ``check``-ing each output, then captured once in a CUDA graph with PDL and replayed
    ``replays`` times, checking the graph's output after each replay."""
    from kiln.kernels import pdl_scope

    for _ in range(eager):
        check(run())
    graph = torch.cuda.CUDAGraph()
    with pdl_scope(True), torch.cuda.graph(graph):
        out = run()
    for _ in range(replays):
        graph.replay()
        check(out)
    torch.cuda.synchronize()


def greedy_with_and_without(monkeypatch, model: str, env: str, kernel, has_copy) -> dict:
    """Greedy runs (3 prompts, 16 tokens, logprobs 5) of ``model`` loaded once with ``env`` = 0
    and once with 1, counting ``kernel``'s launches (a Gluon/Triton JIT function) and the modules
    for which ``has_copy(module)`` holds. Each load also asserts that nothing compiled after
    start-up. Returns {"packed": {flag: modules}, "calls": {flag: launches}, "runs": {flag:
    CompletionOutputs}}."""
    from kiln import LLM, SamplingParams

    prompts = [{"prompt_token_ids": list(range(3 + i, 40 + 2 * i))} for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=5)
    got = {"packed": {}, "calls": {}, "runs": {}}
    real = kernel.run
    flag = None

    def counting(*args, **kwargs):
        got["calls"][flag] = got["calls"].get(flag, 0) + 1
        return real(*args, **kwargs)
    monkeypatch.setattr(kernel, "run", counting)
    for flag in ("0", "1"):
        monkeypatch.setenv(env, flag)
        llm = LLM(model, device="cuda", num_kv_blocks=256, max_num_seqs=8)  # fixed: tests share the card
        got["packed"][flag] = sum(bool(has_copy(mod)) for mod in llm.engine.model.modules())
        got["runs"][flag] = [o.outputs[0] for o in llm.generate(prompts, params)]
        assert llm.engine.stats()["kernel_compiles_after_startup"] == 0
        del llm
        torch.cuda.empty_cache()
    return got
