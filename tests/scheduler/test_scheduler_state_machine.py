"""Hypothesis state machine over Scheduler + KV cache manager with a fake paged "model".

The fake model keeps one token id per KV slot. Before computing a chunk it checks that every
earlier position of the sequence sits in the slot its block table names (so a wrong block table,
a stale prefix hit or a block reused while still held shows up as wrong context), then writes the
chunk and samples a token that depends only on the whole context. Outputs therefore do not depend
on batching, chunking, preemption or prefix hits, and each finished request is compared with a
one-at-a-time reference.

Steps may overlap as under async scheduling: the next step is scheduled and "launched" before the
previous one's samples are given to ``update``. The fake model then fills in-flight input tokens
from its own last samples, as the real runner does on the device.
"""

import hypothesis.strategies as st
from hypothesis import currently_in_test_context, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kiln.batch import ModelOutput, SchedulerOutput
from kiln.errors import InvalidRequestError
from kiln.request import Request, RequestStatus
from kiln.sampling_params import SamplingParams
from sched_helpers import make_scheduler

VOCAB = 10
EOS = 0


def next_token(context):
    """Deterministic pseudo-random token for a context."""
    return (hash(tuple(context)) * 2654435761 >> 11) % VOCAB


class FakeModel:
    """A paged KV cache of token ids that checks what it reads."""

    def __init__(self, num_blocks, block_size):
        self.block_size = block_size
        self.slots = [None] * (num_blocks * block_size)
        self.last_samples: dict[str, int] = {}

    def slot(self, table, pos):
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def execute(self, out: SchedulerOutput) -> ModelOutput:
        written = set()
        ids, tokens = [], []
        for item in out.scheduled:
            seq = list(item.prompt_token_ids) + list(item.output_token_ids)
            token_ids = list(item.token_ids)
            if item.last_token_in_flight:
                assert token_ids[-1] == -1 and len(seq) == item.seq_len - 1
                seq.append(self.last_samples[item.request_id])
                token_ids[-1] = seq[-1]
            assert -1 not in token_ids
            assert item.output_index == len(seq) - len(item.prompt_token_ids)
            assert item.num_tokens >= 1
            assert token_ids == seq[item.start_pos:item.seq_len]
            assert item.sample == (item.seq_len == len(seq))
            assert len(item.block_table) * self.block_size >= item.seq_len
            assert len(set(item.block_table)) == len(item.block_table)
            for pos in range(item.start_pos):
                assert self.slots[self.slot(item.block_table, pos)] == seq[pos], \
                    f"{item.request_id}: wrong context at position {pos}"
            for pos in range(item.start_pos, item.seq_len):
                s = self.slot(item.block_table, pos)
                assert s not in written, "two requests write one slot in one step"
                written.add(s)
                self.slots[s] = seq[pos]
            if item.sample:
                ids.append(item.request_id)
                tokens.append(next_token(seq[:item.seq_len]))
        self.last_samples = dict(zip(ids, tokens))
        return ModelOutput(request_ids=ids, sampled_token_ids=tokens)


def reference_output(req, max_seq_len):
    """What the request generates when it runs alone."""
    seq = list(req.prompt_token_ids)
    out = []
    params = req.sampling_params
    while True:
        tok = next_token(seq)
        seq.append(tok)
        out.append(tok)
        if len(out) >= params.min_tokens:
            if (not params.ignore_eos and tok in req.eos_token_ids) or tok in params.stop_token_ids:
                return out
        if len(out) >= req.max_tokens or len(seq) >= max_seq_len:
            return out


REQUEST_SPECS = st.fixed_dictionaries({
    "base": st.integers(0, 1),
    "prefix_len": st.integers(0, 16),
    "suffix": st.lists(st.integers(0, VOCAB - 1), max_size=4),
    "max_tokens": st.integers(1, 16),
    "min_tokens": st.integers(0, 3),
    "use_eos": st.booleans(),
    "ignore_eos": st.booleans(),
    "stop_ids": st.lists(st.integers(0, VOCAB - 1), max_size=1),
})


class SchedulerMachine(RuleBasedStateMachine):
    """Random arrivals, aborts and steps against random tiny configurations."""

    @initialize(
        # sampled_from leans to its first items: put the sizes that stress the cache most first.
        block_size=st.sampled_from([2, 4, 1, 8]),
        num_blocks=st.integers(1, 12),
        budget=st.integers(1, 16),
        max_num_seqs=st.sampled_from([3, 4, 2, 1]),
        max_model_len=st.sampled_from([64, 24, 8]),
        policy=st.sampled_from(["fcfs", "no-evict"]),
        prefix_caching=st.booleans(),
        bases=st.lists(st.lists(st.integers(1, VOCAB - 1), min_size=6, max_size=16),
                       min_size=1, max_size=2),
        initial=st.lists(REQUEST_SPECS, max_size=6),
    )
    def setup(self, block_size, num_blocks, budget, max_num_seqs, max_model_len, policy,
              prefix_caching, bases, initial):
        self.sched = make_scheduler(num_blocks=num_blocks, block_size=block_size, budget=budget,
                                    max_num_seqs=max_num_seqs, policy=policy,
                                    prefix_caching=prefix_caching, max_model_len=max_model_len)
        self.model = FakeModel(num_blocks, block_size)
        self.budget = budget
        self.max_num_seqs = max_num_seqs
        self.policy = policy
        self.capacity = num_blocks * block_size
        self.max_model_len = max_model_len
        self.bases = bases
        self.live: dict[str, Request] = {}
        self.done: list[Request] = []
        self.next_id = 0
        self.in_flight = None  # (SchedulerOutput, ModelOutput) launched but not yet updated
        self.num_tokens_in_flight = 0
        for spec in initial:
            self._add(**spec)

    @rule(specs=st.lists(REQUEST_SPECS, min_size=1, max_size=6))
    def add_requests(self, specs):
        for spec in specs:
            self._add(**spec)

    def _add(self, base, prefix_len, suffix, max_tokens, min_tokens, use_eos, ignore_eos,
             stop_ids):
        prompt = self.bases[base % len(self.bases)][:prefix_len] + suffix
        rid = f"r{self.next_id}"
        self.next_id += 1
        params = SamplingParams(max_tokens=max_tokens, min_tokens=min(min_tokens, max_tokens),
                                ignore_eos=ignore_eos, stop_token_ids=stop_ids)
        req = Request(request_id=rid, prompt_token_ids=prompt, sampling_params=params,
                      eos_token_ids=frozenset([EOS]) if use_eos else frozenset(),
                      max_tokens=max_tokens)
        too_long = (not prompt or len(prompt) + 1 > self.capacity
                    or len(prompt) > self.max_model_len)
        try:
            self.sched.add_request(req)
        except InvalidRequestError:
            assert too_long
            return
        assert not too_long
        self.live[rid] = req

    @rule(pick=st.integers(0, 1 << 16))
    def abort(self, pick):
        ids = sorted(self.live) + ["unknown"]
        rid = ids[pick % len(ids)]
        aborted = self.sched.abort_requests([rid])
        if rid == "unknown":
            assert aborted == []
            return
        assert aborted == [self.live[rid]]
        self._retire(self.live[rid], RequestStatus.FINISHED_ABORTED)

    @rule(num_steps=st.integers(1, 4), abort_roll=st.integers(0, 7), pick=st.integers(0, 1 << 16),
          ahead=st.booleans())
    def step(self, num_steps, abort_roll, pick, ahead=False):
        for i in range(num_steps):
            abort_id = None
            if abort_roll == 0 and i == 0 and self.live:
                # Abort a request between schedule and update: its output must be ignored.
                abort_id = sorted(self.live)[pick % len(self.live)]
            self._step(abort_id, ahead)

    def _step(self, abort_id=None, ahead=False):
        out = self.sched.schedule()
        assert out.num_batched_tokens <= self.budget
        assert len(out.scheduled) <= self.max_num_seqs
        assert len({s.request_id for s in out.scheduled}) == len(out.scheduled)
        if self.policy == "no-evict":
            assert not out.preempted_request_ids
        # Events show in --hypothesis-show-statistics, to confirm the paths are exercised.
        if currently_in_test_context():
            self._record_events(out)
        self.num_tokens_in_flight += sum(s.last_token_in_flight for s in out.scheduled)
        result = self.model.execute(out)
        if abort_id is not None:
            (req,) = self.sched.abort_requests([abort_id])
            self._retire(req, RequestStatus.FINISHED_ABORTED)
        if self.in_flight is not None:
            self._update(*self.in_flight)
            self.in_flight = None
        if ahead:
            self.in_flight = (out, result)
        else:
            self._update(out, result)

    def _update(self, out, result):
        for req in self.sched.update(out, result):
            assert req.is_finished and req.status != RequestStatus.FINISHED_ABORTED
            self._retire(req, req.status)

    def _record_events(self, out):
        if out.preempted_request_ids:
            event("preemption")
        if any(s.num_tokens > 1 and not s.sample for s in out.scheduled):
            event("partial prefill chunk")
        sizes = {s.num_tokens == 1 for s in out.scheduled}
        if sizes == {True, False}:
            event("decode and prefill mixed")
        if self.sched.stats()["prefix_cache_hits"]:
            event("prefix cache hit")
        if any(s.last_token_in_flight for s in out.scheduled):
            event("input token still in flight")

    def _retire(self, req, status):
        assert req.status == status
        assert self.live.pop(req.request_id) is req
        assert self.sched.get_request(req.request_id) is None
        self.done.append(req)

    @invariant()
    def blocks_are_owned_consistently(self):
        if not hasattr(self, "sched"):
            return
        kv = self.sched.kv_cache
        pool = kv.pool
        holders = [0] * kv.num_total_blocks
        for req in self.live.values():
            table = kv.block_table(req.request_id)
            assert len(set(table)) == len(table)
            if req.status == RequestStatus.RUNNING:
                assert len(table) * kv.block_size >= req.num_computed_tokens
            else:
                assert table == [] and req.num_computed_tokens == 0
            for b in table:
                holders[b] += 1
        for b in range(kv.num_total_blocks):
            assert pool.ref_count(b) == holders[b], f"block {b}"
            h = pool.block_hash(b)
            if h is not None:
                assert pool.lookup(h) == b
        free = pool.free_block_ids()
        assert len(set(free)) == len(free)
        assert set(free) == {b for b in range(kv.num_total_blocks) if holders[b] == 0}
        assert kv.num_free_blocks + sum(1 for n in holders if n) == kv.num_total_blocks

    @invariant()
    def queues_are_consistent(self):
        if not hasattr(self, "sched"):
            return
        sched = self.sched
        assert sched.num_running <= self.max_num_seqs
        assert sched.num_running + sched.num_waiting == len(self.live)
        assert all(r.status == RequestStatus.RUNNING for r in sched.running)
        assert all(r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
                   for r in sched.waiting)
        stats = sched.stats()
        assert stats["prefix_cache_hits"] <= stats["prefix_cache_queries"]
        if self.policy == "no-evict":
            assert stats["num_preemptions"] == 0

    def teardown(self):
        if not hasattr(self, "sched"):
            return
        for i in range(5000):
            if not self.sched.has_unfinished_requests() and self.in_flight is None:
                break
            self._step(ahead=i % 3 != 2)
        assert not self.sched.has_unfinished_requests(), "scheduler made no progress"
        assert not self.live
        kv = self.sched.kv_cache
        assert kv.num_free_blocks == kv.num_total_blocks
        assert all(kv.pool.ref_count(b) == 0 for b in range(kv.num_total_blocks))
        for req in self.done:
            assert req.is_finished
            if req.status != RequestStatus.FINISHED_ABORTED:
                assert req.output_token_ids == reference_output(req, self.sched.max_seq_len), \
                    req.request_id


TestSchedulerStateMachine = SchedulerMachine.TestCase
TestSchedulerStateMachine.settings = settings(max_examples=150, stateful_step_count=40,
                                              deadline=None)


def random_spec(rng):
    """A request spec like REQUEST_SPECS draws, from a seeded random.Random."""
    return {
        "base": rng.randrange(2), "prefix_len": rng.randrange(17),
        "suffix": [rng.randrange(VOCAB) for _ in range(rng.randrange(5))],
        "max_tokens": rng.randint(1, 16), "min_tokens": rng.randrange(4),
        "use_eos": rng.random() < 0.5, "ignore_eos": rng.random() < 0.3,
        "stop_ids": [rng.randrange(VOCAB)] if rng.random() < 0.3 else [],
    }


def test_seeded_soak_with_uniform_configurations():
    """The same machine driven by plain seeded randomness: uniform over configurations and long
    runs, where hypothesis favours small ones. Complements (does not replace) the shrinking run."""
    import random

    totals = {"preemptions": 0, "hits": 0, "finished": 0, "in_flight": 0}
    for seed in range(300):
        rng = random.Random(seed)
        machine = SchedulerMachine()
        machine.setup(block_size=rng.choice([1, 2, 4, 8]), num_blocks=rng.randint(1, 12),
                      budget=rng.randint(1, 16), max_num_seqs=rng.randint(1, 4),
                      max_model_len=rng.choice([8, 24, 64]),
                      policy=rng.choice(["fcfs", "no-evict"]), prefix_caching=rng.random() < 0.6,
                      bases=[[rng.randint(1, VOCAB - 1) for _ in range(16)] for _ in range(2)],
                      initial=[random_spec(rng) for _ in range(rng.randrange(7))])
        for _ in range(40):
            action = rng.random()
            if action < 0.3:
                machine.add_requests([random_spec(rng) for _ in range(rng.randint(1, 4))])
            elif action < 0.38:
                machine.abort(rng.randrange(1 << 16))
            else:
                machine.step(rng.randint(1, 3), rng.randrange(8), rng.randrange(1 << 16),
                             ahead=rng.random() < 0.5)
            machine.blocks_are_owned_consistently()
            machine.queues_are_consistent()
        machine.teardown()
        stats = machine.sched.stats()
        totals["preemptions"] += stats["num_preemptions"]
        totals["hits"] += stats["prefix_cache_hits"]
        totals["finished"] += len(machine.done)
        totals["in_flight"] += machine.num_tokens_in_flight
    # the run must actually reach the paths it is meant to test
    assert totals["preemptions"] > 0 and totals["hits"] > 0 and totals["finished"] > 1000
    assert totals["in_flight"] > 1000
