"""Shared helpers for scheduler tests: building schedulers and requests, a fake model step."""

from kiln.batch import ModelOutput
from kiln.config import CacheConfig, SchedulerConfig
from kiln.request import Request
from kiln.sampling_params import SamplingParams
from kiln.scheduler.scheduler import Scheduler


def make_scheduler(num_blocks=64, block_size=4, budget=64, max_num_seqs=8, policy="fcfs",
                   prefix_caching=True, max_model_len=4096):
    return Scheduler(
        SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                        max_model_len=max_model_len, scheduling_policy=policy),
        CacheConfig(block_size=block_size, num_kv_blocks=num_blocks,
                    enable_prefix_caching=prefix_caching))


def make_request(rid, prompt, max_tokens=16, eos=(), **params):
    sp = SamplingParams(max_tokens=max_tokens, **params)
    return Request(request_id=rid, prompt_token_ids=list(prompt), sampling_params=sp,
                   eos_token_ids=frozenset(eos), max_tokens=max_tokens)


def model_output(out, token_for=lambda item: 7):
    """Sample ``token_for(item)`` for every scheduled item that samples."""
    items = [s for s in out.scheduled if s.sample]
    return ModelOutput(request_ids=[s.request_id for s in items],
                       sampled_token_ids=[token_for(s) for s in items])


def step(sched, token_for=lambda item: 7):
    """One schedule + update; returns (scheduler output, finished requests)."""
    out = sched.schedule()
    return out, sched.update(out, model_output(out, token_for))
