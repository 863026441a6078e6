"""Async scheduling (step n+1 scheduled before step n's samples are taken in) changes no output."""

import random

from kiln import LLM, SamplingParams


def _workload(seed):
    rng = random.Random(seed)
    prompts, params = [], []
    for i in range(20):
        prompts.append({"prompt_token_ids": [rng.randrange(3, 500) for _ in range(rng.randint(1, 90))]})
        kind = i % 5
        if kind == 0:
            sp = SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 20), ignore_eos=True)
        elif kind == 1:
            sp = SamplingParams(temperature=0.9, top_p=0.9, seed=i, n=2, max_tokens=12, ignore_eos=True)
        elif kind == 2:
            sp = SamplingParams(temperature=0.7, seed=i, repetition_penalty=1.3,
                                frequency_penalty=0.5, max_tokens=10, ignore_eos=True)
        elif kind == 3:
            sp = SamplingParams(temperature=0.0, max_tokens=16, logprobs=2, ignore_eos=True,
                                stop_token_ids=[rng.randrange(3, 500)])
        else:
            sp = SamplingParams(temperature=1.0, seed=i, min_p=0.05, max_tokens=14)
        params.append(sp)
    return prompts, params


def _run(tiny_model_dir, async_scheduling, prompts, params, **kw):
    llm = LLM(tiny_model_dir, dtype="float32", device="cpu", async_scheduling=async_scheduling, **kw)
    assert llm.engine.async_scheduling is async_scheduling
    outs = llm.generate(prompts, params)
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_total_kv_blocks"]
    assert not llm.engine.has_unfinished_requests()
    return outs, stats


def _summary(outs):
    return [[(o.token_ids, o.text, o.finish_reason, o.stop_reason,
              None if o.logprobs is None else [sorted(d) for d in o.logprobs]) for o in r.outputs]
            for r in outs]


def test_async_equals_sync_on_a_mixed_workload_with_preemption(tiny_model_dir):
    prompts, params = _workload(11)
    kw = dict(max_num_batched_tokens=48, max_num_seqs=16, block_size=8, num_kv_blocks=40)
    sync_outs, _ = _run(tiny_model_dir, False, prompts, params, **kw)
    async_outs, stats = _run(tiny_model_dir, True, prompts, params, **kw)
    assert stats["num_preemptions"] > 0
    assert _summary(async_outs) == _summary(sync_outs)


def test_async_stop_strings_drop_the_token_computed_in_flight(tiny_model_dir):
    rng = random.Random(5)
    prompt = {"prompt_token_ids": [rng.randrange(3, 500) for _ in range(12)]}
    base = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    full = _run(tiny_model_dir, False, [prompt], [base])[0][0].outputs[0]
    stop = full.text[6:10]
    sp = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=[stop])
    sync_out = _run(tiny_model_dir, False, [prompt], [sp])[0][0].outputs[0]
    llm = LLM(tiny_model_dir, dtype="float32", device="cpu", async_scheduling=True)
    before = llm.stats()["generation_tokens_total"]
    async_out = llm.generate(prompt, sp)[0].outputs[0]
    assert async_out.finish_reason == "stop" and async_out.text == sync_out.text
    assert async_out.token_ids == sync_out.token_ids
    # Only the tokens that reached the output are counted, not the one computed in vain.
    assert llm.stats()["generation_tokens_total"] - before == len(sync_out.token_ids)
