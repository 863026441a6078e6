"""Engine core: in-flight batching, chunked prefill, preemption and prefix reuse give exact outputs."""

import random

import pytest

from kiln import LLM, SamplingParams


def _prompts(n, seed, lo=1, hi=200, vocab=500):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.fixture(scope="module")
def alone_llm(tiny_model_dir):
    return LLM(tiny_model_dir, dtype="float32", device="cpu", max_num_batched_tokens=512,
               enable_prefix_caching=False)


def test_batched_chunked_preempted_equals_alone(tiny_model_dir, alone_llm):
    prompts = _prompts(24, seed=1)
    rng = random.Random(2)
    params = [SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 24), ignore_eos=True)
              for _ in prompts]
    alone = [alone_llm.generate({"prompt_token_ids": p}, sp)[0].outputs[0].token_ids
             for p, sp in zip(prompts, params)]

    # A 32-token budget chunks every long prompt; 40 blocks of 8 tokens cannot hold all 24
    # requests at once, so the scheduler must preempt and recompute.
    llm = LLM(tiny_model_dir, dtype="float32", device="cpu", max_num_batched_tokens=32,
              max_num_seqs=24, block_size=8, num_kv_blocks=40)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    got = [o.outputs[0].token_ids for o in outs]
    assert got == alone
    stats = llm.stats()
    assert stats["num_preemptions"] > 0
    assert stats["num_free_kv_blocks"] == stats["num_total_kv_blocks"] == 40
    assert not llm.engine.has_unfinished_requests()


def test_prefix_reuse_hits_and_matches(tiny_model_dir, alone_llm):
    rng = random.Random(3)
    shared = [rng.randrange(3, 500) for _ in range(160)]
    first = shared + [rng.randrange(3, 500) for _ in range(7)]
    second = shared + [rng.randrange(3, 500) for _ in range(11)]
    sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    llm = LLM(tiny_model_dir, dtype="float32", device="cpu", block_size=16)
    llm.generate({"prompt_token_ids": first}, sp)
    hits_before = llm.stats()["prefix_cache_hits"]
    out = llm.generate({"prompt_token_ids": second}, sp)[0]
    stats = llm.stats()
    assert stats["prefix_cache_hits"] - hits_before == 160  # ten full blocks of the shared prefix
    assert out.num_cached_tokens == 160
    expected = alone_llm.generate({"prompt_token_ids": second}, sp)[0]
    assert out.outputs[0].token_ids == expected.outputs[0].token_ids
    assert stats["num_free_kv_blocks"] == stats["num_total_kv_blocks"]


def test_n_seeds_and_stop_conditions(tiny_model_dir, alone_llm):
    llm = alone_llm
    prompt = {"prompt_token_ids": _prompts(1, seed=4, lo=10, hi=10)[0]}
    outs = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12,
                                               ignore_eos=True))[0].outputs
    assert len(outs) == 3 and all(len(o.token_ids) == 12 for o in outs)
    again = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12,
                                                ignore_eos=True))[0].outputs
    assert [o.token_ids for o in outs] == [o.token_ids for o in again]
    assert len({tuple(o.token_ids) for o in outs}) > 1

    greedy = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
    toks = greedy[0].outputs[0].token_ids
    stop_tok = toks[5]
    first = toks.index(stop_tok)
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True,
                                              stop_token_ids=[stop_tok]))[0].outputs[0]
    assert out.token_ids == toks[:first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_tok
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=20,
                                              stop_token_ids=[stop_tok], min_tokens=first + 2,
                                              ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) > first + 1
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
    assert out[0].outputs[0].finish_reason == "length"


def test_stop_string_cut_across_tokens(tiny_model_dir, alone_llm):
    prompt = {"prompt_token_ids": _prompts(1, seed=5, lo=12, hi=12)[0]}
    full = alone_llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=30,
                                                     ignore_eos=True))[0].outputs[0].text
    assert len(full) > 12
    stop = full[6:10]
    cut = full.index(stop)
    out = alone_llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True,
                                                    stop=[stop]))[0].outputs[0]
    assert out.text == full[:cut]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    out = alone_llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True,
                                                    stop=[stop], include_stop_str_in_output=True))
    assert out[0].outputs[0].text == full[:cut + len(stop)]


def test_logprobs_and_errors(tiny_model_dir, alone_llm):
    from kiln.errors import InvalidRequestError

    prompt = {"prompt_token_ids": _prompts(1, seed=6, lo=5, hi=5)[0]}
    out = alone_llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=4, logprobs=3,
                                                    ignore_eos=True))[0].outputs[0]
    assert len(out.logprobs) == 4
    for tok, entry in zip(out.token_ids, out.logprobs):
        assert entry[tok].rank == 1  # greedy picks the top token
        assert len(entry) == 3
        assert max(lp.logprob for lp in entry.values()) == entry[tok].logprob
    with pytest.raises(InvalidRequestError) as e:
        alone_llm.generate({"prompt_token_ids": [5] * 10},
                           SamplingParams(max_tokens=alone_llm.engine.max_model_len))
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequestError):
        alone_llm.generate({"prompt_token_ids": []})
    assert not alone_llm.engine.has_unfinished_requests()


def test_kernel_warm_up_runs_on_a_scratch_cache_and_changes_nothing(alone_llm):
    """The start-up warm-up (run on CUDA to compile ragged-size kernel variants) is a plain
    prefill and decode of two short sequences on its own cache: here on the CPU it must run and
    leave the engine's results as they were."""
    params = SamplingParams(temperature=0.0, max_tokens=8)
    before = alone_llm.generate(["def add(a, b):"], params)[0].outputs[0].token_ids
    engine = alone_llm.engine
    engine._warm_up_kernels(engine.config.cache.block_size)
    after = alone_llm.generate(["def add(a, b):"], params)[0].outputs[0].token_ids
    assert after == before and not engine.has_unfinished_requests()


def test_gc_frozen_only_while_requests_are_in_the_engine(alone_llm):
    """Objects alive when work starts are kept out of cyclic-GC passes (a full pass stalled a
    1000-request run for ~200 ms twice) and handed back once the engine is idle, whether the
    requests finished or were aborted."""
    import gc

    engine = alone_llm.engine
    assert not engine.has_unfinished_requests() and gc.get_freeze_count() == 0
    engine.add_request("a", "def add(a, b):", SamplingParams(temperature=0.0, max_tokens=4))
    engine.step()
    assert gc.get_freeze_count() > 0
    while engine.has_unfinished_requests():
        engine.step()
    assert gc.get_freeze_count() == 0
    engine.add_request("b", "def sub(a, b):", SamplingParams(temperature=0.0, max_tokens=50))
    engine.step()
    assert gc.get_freeze_count() > 0
    engine.abort_request("b")
    if engine.has_unfinished_requests():  # a launched step still to take in
        engine.step()
    assert not engine.has_unfinished_requests() and gc.get_freeze_count() == 0
