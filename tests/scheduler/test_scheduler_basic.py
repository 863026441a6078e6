"""Scheduler: budgets, chunked prefill, mixing, preemption, no-evict, aborts, stop conditions."""

import pytest

from kiln.batch import ModelOutput
from kiln.errors import InvalidRequestError
from kiln.request import RequestStatus
from sched_helpers import make_request, make_scheduler, model_output, step


def by_id(out):
    return {s.request_id: s for s in out.scheduled}


def test_chunked_prefill_under_a_small_budget():
    sched = make_scheduler(budget=4)
    req = make_request("a", range(10), max_tokens=2)
    sched.add_request(req)
    chunks = []
    for _ in range(3):
        out, finished = step(sched)
        (item,) = out.scheduled
        chunks.append((item.start_pos, item.token_ids, item.sample))
        assert out.num_batched_tokens <= 4 and not finished
    assert chunks == [(0, [0, 1, 2, 3], False), (4, [4, 5, 6, 7], False), (8, [8, 9], True)]
    assert req.output_token_ids == [7] and req.num_computed_tokens == 10
    out, finished = step(sched)
    assert [(s.start_pos, s.token_ids, s.sample) for s in out.scheduled] == [(10, [7], True)]
    assert finished == [req] and req.status == RequestStatus.FINISHED_LENGTH
    assert not sched.has_unfinished_requests()
    assert sched.kv_cache.num_free_blocks == sched.kv_cache.num_total_blocks


def test_scheduled_request_fields():
    sched = make_scheduler(block_size=4)
    req = make_request("a", range(6), seed=3)
    req.seed = 11
    sched.add_request(req)
    out = sched.schedule()
    (item,) = out.scheduled
    assert item.block_table == sched.kv_cache.block_table("a") and len(item.block_table) == 2
    assert item.seed == 11 and item.sampling_params is req.sampling_params
    assert item.prompt_token_ids is req.prompt_token_ids
    assert item.output_token_ids is req.output_token_ids
    assert req.status == RequestStatus.RUNNING and req.num_cached_tokens == 0


def test_decode_and_prefill_mixed_in_one_step():
    sched = make_scheduler(budget=4)
    a = make_request("a", range(3), max_tokens=5)
    sched.add_request(a)
    step(sched)  # a's prompt fits: it now decodes
    b = make_request("b", range(100, 106), max_tokens=5)
    sched.add_request(b)
    out, _ = step(sched)
    items = by_id(out)
    assert items["a"].token_ids == [7] and items["a"].start_pos == 3 and items["a"].sample
    assert items["b"].token_ids == [100, 101, 102] and not items["b"].sample
    assert out.num_batched_tokens == 4 and not out.is_decode_only
    out, _ = step(sched)
    items = by_id(out)
    assert items["a"].num_tokens == 1
    assert items["b"].token_ids == [103, 104, 105] and items["b"].sample


def test_running_requests_go_first_in_arrival_order_and_budget_caps_the_step():
    sched = make_scheduler(budget=2, max_num_seqs=8)
    for rid in "abc":
        sched.add_request(make_request(rid, [1], max_tokens=10))
    out, _ = step(sched)
    assert [s.request_id for s in out.scheduled] == ["a", "b"]
    out, _ = step(sched)
    assert [s.request_id for s in out.scheduled] == ["a", "b"]  # c waits: running first
    assert sched.num_waiting == 1 and sched.num_running == 2


def test_max_num_seqs_caps_running():
    sched = make_scheduler(max_num_seqs=2)
    for rid in "abc":
        sched.add_request(make_request(rid, [1, 2], max_tokens=2))
    out, _ = step(sched)
    assert len(out.scheduled) == 2 and sched.num_running == 2 and sched.num_waiting == 1
    _, finished = step(sched)
    assert len(finished) == 2
    out, _ = step(sched)
    assert [s.request_id for s in out.scheduled] == ["c"]


def test_preemption_under_a_tiny_cache_and_resumption_recomputes():
    # 4 blocks of 2 tokens; two requests of 3 prompt tokens take 2 blocks each.
    sched = make_scheduler(num_blocks=4, block_size=2, budget=16, prefix_caching=False)
    a = make_request("a", [1, 2, 3], max_tokens=4)
    b = make_request("b", [4, 5, 6], max_tokens=4)
    sched.add_request(a)
    sched.add_request(b)
    step(sched)  # both prefilled; each has 4 tokens now, 2 blocks each, 0 free
    assert sched.kv_cache.num_free_blocks == 0
    out, _ = step(sched)  # both compute position 3 in their second block: still fits
    out = sched.schedule()  # a needs a third block for position 4: b (last arrived) is preempted
    assert out.preempted_request_ids == ["b"]
    assert [s.request_id for s in out.scheduled] == ["a"]
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert b.num_preemptions == 1 and sched.stats()["num_preemptions"] == 1
    assert sched.waiting[0] is b and sched.kv_cache.block_table("b") == []
    sched.update(out, model_output(out))
    b_tokens = list(b.all_token_ids)
    assert b_tokens == [4, 5, 6, 7, 7]
    while a.status == RequestStatus.RUNNING:
        out, _ = step(sched)
        assert "b" not in by_id(out) or by_id(out)["b"].start_pos == 0
    # b comes back and recomputes prompt plus the output it had
    out, _ = step(sched)
    item = by_id(out)["b"]
    assert item.start_pos == 0 and item.token_ids == b_tokens and item.sample
    while sched.has_unfinished_requests():
        step(sched)
    assert a.output_token_ids == [7] * 4 and b.output_token_ids == [7] * 4
    assert sched.kv_cache.num_free_blocks == 4


def test_preempted_request_resumes_from_its_cached_prefix():
    sched = make_scheduler(num_blocks=4, block_size=2, budget=16, prefix_caching=True)
    a = make_request("a", [1, 2, 3], max_tokens=4)
    b = make_request("b", [4, 5, 6], max_tokens=4)
    sched.add_request(a)
    sched.add_request(b)
    step(sched)
    step(sched)
    out, _ = step(sched)
    assert out.preempted_request_ids == ["b"]
    # a takes the only free block it needs, b's two full blocks stay cached while free
    out, _ = step(sched)  # a: 6 tokens computed in 3 blocks, 1 free: b needs 3 blocks, waits
    assert "b" not in by_id(out)
    while a.status == RequestStatus.RUNNING:
        step(sched)
    hits_before = sched.stats()["prefix_cache_hits"]
    out, _ = step(sched)
    item = by_id(out)["b"]
    assert item.start_pos == 2 and item.token_ids == [6, 7, 7]
    assert sched.stats()["prefix_cache_hits"] - hits_before == 2
    assert b.num_cached_tokens == 0  # set on first admission only


def test_self_preemption_when_the_requester_arrived_last():
    sched = make_scheduler(num_blocks=2, block_size=4, budget=16, prefix_caching=False)
    a = make_request("a", [1], max_tokens=8)
    b = make_request("b", [2, 3, 4, 5], max_tokens=8)
    sched.add_request(a)
    sched.add_request(b)
    step(sched)  # one block each; b's block is full
    out, _ = step(sched)  # b needs a second block, none free, b arrived last: b preempts itself
    assert out.preempted_request_ids == ["b"]
    assert [s.request_id for s in out.scheduled] == ["a"]
    assert b.status == RequestStatus.PREEMPTED and a.status == RequestStatus.RUNNING


def test_a_sequence_never_outgrows_the_whole_cache():
    sched = make_scheduler(num_blocks=2, block_size=2, budget=16, prefix_caching=False)
    a = make_request("a", [1, 2], max_tokens=8)
    sched.add_request(a)
    finished = []
    while not finished:
        _, finished = step(sched)
    # 4 tokens fill the cache: the request ends by length instead of preempting itself forever
    assert finished == [a] and a.status == RequestStatus.FINISHED_LENGTH and a.num_tokens == 4
    assert sched.stats()["num_preemptions"] == 0


def test_no_evict_never_preempts():
    sched = make_scheduler(num_blocks=4, block_size=2, budget=16, policy="no-evict",
                           prefix_caching=False)
    a = make_request("a", [1, 2, 3], max_tokens=4)  # needs 6 slots -> 3 blocks
    b = make_request("b", [4, 5, 6], max_tokens=4)
    sched.add_request(a)
    sched.add_request(b)
    out, _ = step(sched)
    assert [s.request_id for s in out.scheduled] == ["a"]  # b would not fit a's reserved room
    while sched.has_unfinished_requests():
        out, _ = step(sched)
        assert not out.preempted_request_ids
    assert sched.stats()["num_preemptions"] == 0
    assert a.num_output_tokens == 4 and b.num_output_tokens == 4


def test_no_evict_admits_when_whole_need_fits():
    sched = make_scheduler(num_blocks=6, block_size=2, policy="no-evict", prefix_caching=False)
    sched.add_request(make_request("a", [1, 2, 3], max_tokens=4))
    sched.add_request(make_request("b", [4, 5, 6], max_tokens=4))
    out, _ = step(sched)
    assert len(out.scheduled) == 2


def test_prompt_that_can_never_fit_is_rejected():
    sched = make_scheduler(num_blocks=2, block_size=4)
    sched.add_request(make_request("ok", range(7)))
    with pytest.raises(InvalidRequestError, match="at most 7 prompt tokens"):
        sched.add_request(make_request("big", range(8)))
    with pytest.raises(InvalidRequestError):
        sched.add_request(make_request("empty", []))
    with pytest.raises(InvalidRequestError, match="already in use"):
        sched.add_request(make_request("ok", [1]))
    small = make_scheduler(max_model_len=5)
    with pytest.raises(InvalidRequestError, match="max_model_len"):
        small.add_request(make_request("long", range(6)))


@pytest.mark.parametrize("state", ["waiting", "prefill", "decode", "preempted", "in_flight"])
def test_abort_in_any_state(state):
    sched = make_scheduler(num_blocks=4, block_size=2, budget=2, prefix_caching=False)
    a = make_request("a", [1, 2, 3], max_tokens=8)
    b = make_request("b", [4, 5, 6], max_tokens=8)
    sched.add_request(a)
    if state == "waiting":
        target = a
    elif state == "prefill":
        step(sched)
        target = a
        assert 0 < a.num_computed_tokens < a.num_prompt_tokens
    elif state == "decode":
        step(sched)
        step(sched)
        target = a
        assert a.num_output_tokens == 1
    elif state == "preempted":
        sched.add_request(b)
        while b.status != RequestStatus.PREEMPTED:
            step(sched)
        target = b
    else:
        target = a
    pending = sched.schedule() if state == "in_flight" else None
    aborted = sched.abort_requests([target.request_id, "nope"])
    assert aborted == [target] and target.status == RequestStatus.FINISHED_ABORTED
    assert sched.get_request(target.request_id) is None
    assert sched.kv_cache.block_table(target.request_id) == []
    if pending is not None:
        assert sched.update(pending, model_output(pending)) == []
        assert target.output_token_ids == []
    # Every schedule is followed by its update: a step's pending samples must come back.
    out, _ = step(sched)
    assert target.request_id in out.finished_request_ids
    assert sched.abort_requests([target.request_id]) == []
    while sched.has_unfinished_requests():
        step(sched)
    assert sched.kv_cache.num_free_blocks == 4


def run_one(sched, req, tokens):
    sched.add_request(req)
    it = iter(tokens)
    while sched.has_unfinished_requests():
        step(sched, lambda item: next(it))
    return req


def test_max_tokens_finishes_with_length():
    req = run_one(make_scheduler(), make_request("a", [1], max_tokens=3), [5, 6, 7, 8])
    assert req.output_token_ids == [5, 6, 7] and req.status == RequestStatus.FINISHED_LENGTH
    assert req.status.finish_reason == "length"


def test_max_model_len_finishes_with_length():
    req = run_one(make_scheduler(max_model_len=4), make_request("a", [1, 2], max_tokens=10),
                  [5, 6, 7, 8])
    assert req.output_token_ids == [5, 6] and req.status == RequestStatus.FINISHED_LENGTH


def test_eos_stops_with_no_stop_reason():
    req = run_one(make_scheduler(), make_request("a", [1], max_tokens=10, eos=[2]), [5, 2, 6])
    assert req.output_token_ids == [5, 2] and req.status == RequestStatus.FINISHED_STOPPED
    assert req.stop_reason is None


def test_min_tokens_holds_back_eos_and_stop_tokens():
    req = run_one(make_scheduler(), make_request("a", [1], max_tokens=10, eos=[2], min_tokens=3,
                                                 stop_token_ids=[4]), [2, 4, 2, 6])
    assert req.output_token_ids == [2, 4, 2] and req.status == RequestStatus.FINISHED_STOPPED


def test_stop_token_ids_set_the_stop_reason():
    req = run_one(make_scheduler(), make_request("a", [1], max_tokens=10, stop_token_ids=[9]),
                  [5, 9, 6])
    assert req.output_token_ids == [5, 9] and req.stop_reason == 9
    assert req.status == RequestStatus.FINISHED_STOPPED


def test_ignore_eos_keeps_going():
    req = run_one(make_scheduler(), make_request("a", [1], max_tokens=3, eos=[2], ignore_eos=True),
                  [2, 2, 2, 2])
    assert req.output_token_ids == [2, 2, 2] and req.status == RequestStatus.FINISHED_LENGTH


def test_finish_requests_for_stop_strings_and_finished_ids_reach_the_runner():
    sched = make_scheduler()
    a = make_request("a", [1, 2], max_tokens=10)
    sched.add_request(a)
    step(sched)
    assert sched.finish_requests(["a"], RequestStatus.FINISHED_STOPPED) == [a]
    assert a.status == RequestStatus.FINISHED_STOPPED
    assert sched.schedule().finished_request_ids == ["a"]
    with pytest.raises(ValueError):
        sched.finish_requests(["a"], RequestStatus.RUNNING)


def test_model_output_for_aborted_requests_is_ignored():
    sched = make_scheduler()
    a = make_request("a", [1, 2], max_tokens=10)
    b = make_request("b", [3, 4], max_tokens=10)
    sched.add_request(a)
    sched.add_request(b)
    out = sched.schedule()
    sched.abort_requests(["a"])
    finished = sched.update(out, ModelOutput(request_ids=["a", "b"], sampled_token_ids=[1, 2]))
    assert finished == [] and a.output_token_ids == [] and b.output_token_ids == [2]


def test_stats_report_cache_and_queue_state():
    sched = make_scheduler(num_blocks=8, block_size=2)
    sched.add_request(make_request("a", [1, 2, 3, 4, 5], max_tokens=4))
    step(sched)
    sched.add_request(make_request("b", [1, 2, 3, 4, 9], max_tokens=4))
    step(sched)
    stats = sched.stats()
    assert stats["num_total_kv_blocks"] == 8
    assert stats["num_free_kv_blocks"] == 8 - 3 - 1  # b shares a's two full blocks
    assert stats["kv_cache_usage"] == pytest.approx(4 / 8)
    assert stats["prefix_cache_queries"] == 10 and stats["prefix_cache_hits"] == 4
    assert stats["num_running"] == 2 and stats["num_waiting"] == 0
    assert stats["num_preemptions"] == 0
