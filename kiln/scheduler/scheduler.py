"""The token-budget scheduler: who computes how many tokens in the next step (pure CPU)."""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Iterable

from kiln.batch import ModelOutput, ScheduledRequest, SchedulerOutput
from kiln.config import CacheConfig, SchedulerConfig
from kiln.errors import InvalidRequestError
from kiln.kv_cache.manager import KVCacheManager
from kiln.request import Request, RequestStatus


class Scheduler:
    """Decides each step's batch under one rule: a token budget and a cap on running sequences.

    Running requests go first, oldest first: each gets the tokens it still has to compute (one for
    a decode, the next chunk for an unfinished prefill) while the budget lasts. Then waiting
    requests are admitted first-in first-out (preempted ones wait at the front) while budget,
    sequence slots and KV blocks allow; a prompt longer than the budget left gets a partial chunk.

    When a running request cannot get blocks, the running request that arrived last is preempted
    (perhaps the one asking): its blocks are freed, its full blocks stay in the prefix cache, and
    it later recomputes prompt plus output so far. With ``scheduling_policy="no-evict"`` a request
    is only admitted when blocks no running request has a claim on cover its whole length, so
    nothing is ever preempted.

    Steps may overlap (async scheduling): ``schedule`` may be called again before the previous
    step's ``update``. Scheduling a chunk therefore counts its tokens as computed at once, and a
    sampling chunk leaves a pending output token; the next step feeds that token to the model
    from the device (``last_token_in_flight``) and ``update`` appends it when it reaches the
    host. A request whose pending token may end it by length is not scheduled again until then;
    one that ends on EOS or a stop token has computed one token in vain, which ``update`` drops.
    """

    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig):
        if cache_config.num_kv_blocks is None:
            raise ValueError("cache_config.num_kv_blocks must be set before building the scheduler")
        self.scheduler_config = scheduler_config
        self.cache_config = cache_config
        self.kv_cache = KVCacheManager(cache_config.num_kv_blocks, cache_config.block_size,
                                       cache_config.enable_prefix_caching)
        self._cache_capacity = cache_config.num_kv_blocks * cache_config.block_size
        # A sequence may never outgrow the whole cache, or it could only be preempted forever.
        self.max_seq_len = min(scheduler_config.max_model_len, self._cache_capacity)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # sorted by arrival
        self._requests: dict[str, Request] = {}
        self._arrival_order: dict[str, int] = {}
        self._next_arrival = 0
        self._finished_since_schedule: list[str] = []
        # Requests of each step not yet updated, by id(SchedulerOutput).
        self._in_flight: dict[int, dict[str, Request]] = {}
        self.num_preemptions = 0

    # ----------------------------------------------------------------------------------- requests

    def add_request(self, request: Request) -> None:
        """Queue a new request (status WAITING).

        Raises InvalidRequestError when the id is already live, the prompt is empty, longer than
        max_model_len, or too long for the prompt plus one generated token to fit in the KV cache.
        """
        request_id = request.request_id
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", param="request_id")
        num_prompt = request.num_prompt_tokens
        if num_prompt == 0:
            raise InvalidRequestError("the prompt is empty; give at least one token", param="prompt")
        max_model_len = self.scheduler_config.max_model_len
        if num_prompt > max_model_len:
            raise InvalidRequestError(
                f"the prompt has {num_prompt} tokens but max_model_len is {max_model_len}; "
                f"shorten the prompt to at most {max_model_len} tokens", param="prompt")
        if num_prompt + 1 > self._cache_capacity:
            raise InvalidRequestError(
                f"the prompt has {num_prompt} tokens but the KV cache holds only "
                f"{self._cache_capacity} tokens ({self.kv_cache.num_total_blocks} blocks of "
                f"{self.cache_config.block_size}), so at most {self._cache_capacity - 1} prompt "
                f"tokens fit with one generated token; shorten the prompt or give the cache more "
                f"memory", param="prompt")
        request.status = RequestStatus.WAITING
        self._requests[request_id] = request
        self._arrival_order[request_id] = self._next_arrival
        self._next_arrival += 1
        self.waiting.append(request)

    def abort_requests(self, request_ids: Iterable[str]) -> list[Request]:
        """Abort live requests in any state (status FINISHED_ABORTED); unknown ids are ignored."""
        return self.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def finish_requests(self, request_ids: Iterable[str] | str,
                        status: RequestStatus) -> list[Request]:
        """End live requests with a finished ``status`` (say, the engine found a stop string).

        Frees their blocks and forgets them; returns the requests ended, unknown ids are ignored.
        """
        if not status.is_finished:
            raise ValueError(f"finish_requests needs a finished status, got {status.name}")
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        ended = []
        for request_id in request_ids:
            request = self._requests.get(request_id)
            if request is None:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            self._finish(request, status)
            ended.append(request)
        return ended

    def get_request(self, request_id: str) -> Request | None:
        """The live (unfinished) request with this id, or None."""
        return self._requests.get(request_id)

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting or running."""
        return bool(self.waiting or self.running)

    @property
    def num_running(self) -> int:
        """Requests that hold KV blocks and are scheduled step after step."""
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """Requests queued for admission (new or preempted)."""
        return len(self.waiting)

    def stats(self) -> dict:
        """Counters for metrics and logs."""
        return {
            "num_total_kv_blocks": self.kv_cache.num_total_blocks,
            "num_free_kv_blocks": self.kv_cache.num_free_blocks,
            "kv_cache_usage": self.kv_cache.usage,
            "num_preemptions": self.num_preemptions,
            "prefix_cache_queries": self.kv_cache.prefix_cache_queries,
            "prefix_cache_hits": self.kv_cache.prefix_cache_hits,
            "num_running": len(self.running),
            "num_waiting": len(self.waiting),
        }

    # ----------------------------------------------------------------------------------- schedule

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and token counts; allocate their KV slots."""
        budget = self.scheduler_config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []
        step_requests: dict[str, Request] = {}

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(self._num_known_tokens(request) - request.num_computed_tokens, budget)
            if num_new <= 0 or (request.num_pending_outputs and self._must_wait(request)):
                i += 1
                continue
            while not self.kv_cache.allocate_slots(request, num_new):
                # Running is sorted by arrival, so the victim is never one already scheduled.
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            else:
                scheduled.append(self._schedule_chunk(request, num_new, step_requests))
                budget -= num_new
                i += 1
                continue
            break  # the request preempted itself, so it was the last one running

        no_evict = self.scheduler_config.scheduling_policy == "no-evict"
        reserved = self._reserved_blocks() if no_evict else 0
        # After a preemption the cache is tight: admitting now would only thrash (a victim could
        # come straight back and be preempted again next step).
        while (not preempted and self.waiting and budget > 0
               and len(self.running) < self.scheduler_config.max_num_seqs):
            request = self.waiting[0]
            if request.num_pending_outputs:
                break  # preempted with a token in flight: admit it once that token is known
            num_hit = self.kv_cache.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_hit, budget)
            if no_evict:
                need = self.kv_cache.num_blocks_to_allocate(request, self._max_slots(request))
                if need > self.kv_cache.num_free_blocks - reserved:
                    self.kv_cache.free(request)  # drops the pending hit; holds no blocks yet
                    break
            if not self.kv_cache.allocate_slots(request, num_new):
                break
            self.waiting.popleft()
            request.num_computed_tokens = num_hit
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit
            request.status = RequestStatus.RUNNING
            bisect.insort(self.running, request, key=self._arrival_key)
            scheduled.append(self._schedule_chunk(request, num_new, step_requests))
            budget -= num_new
            if no_evict:
                reserved += self.kv_cache.num_blocks_to_allocate(request, self._max_slots(request))

        finished_ids, self._finished_since_schedule = self._finished_since_schedule, []
        out = SchedulerOutput(scheduled=scheduled, finished_request_ids=finished_ids,
                              preempted_request_ids=preempted)
        if scheduled:
            self._in_flight[id(out)] = step_requests
        return out

    @staticmethod
    def _num_known_tokens(request: Request) -> int:
        """Prompt plus outputs, counting a token still in flight."""
        return request.num_tokens + request.num_pending_outputs

    def _must_wait(self, request: Request) -> bool:
        """Whether a request's token in flight may be its last (length limits, or penalties and
        stop strings that need the exact history): then it is not scheduled before that token
        reaches the host."""
        n_out = request.num_output_tokens + request.num_pending_outputs
        if request.max_tokens is not None and n_out >= request.max_tokens:
            return True
        if self._num_known_tokens(request) >= self.max_seq_len:
            return True
        return request.sampling_params.has_penalties

    def _schedule_chunk(self, request: Request, num_new: int,
                        step_requests: dict[str, Request]) -> ScheduledRequest:
        start = request.num_computed_tokens
        if request.first_scheduled_time is None:
            request.first_scheduled_time = time.monotonic()
        step_requests[request.request_id] = request
        end = start + num_new
        in_flight = end > request.num_tokens  # the last input token is the pending sample
        token_ids = request.all_token_ids[start:end]
        if in_flight:
            token_ids.append(-1)
        sample = end == self._num_known_tokens(request)
        item = ScheduledRequest(
            request_id=request.request_id,
            token_ids=token_ids,
            start_pos=start,
            block_table=self.kv_cache.block_table(request.request_id),
            sample=sample,
            sampling_params=request.sampling_params,
            seed=request.seed,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=request.output_token_ids,
            output_index=request.num_output_tokens + request.num_pending_outputs,
            last_token_in_flight=in_flight,
        )
        request.num_computed_tokens = end
        if sample:
            request.num_pending_outputs += 1
        return item

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _arrival_key(self, request: Request) -> int:
        return self._arrival_order[request.request_id]

    def _max_slots(self, request: Request) -> int:
        """KV slots the request needs at most: its final length less the last (never computed) token."""
        max_tokens = request.max_tokens if request.max_tokens is not None else self.max_seq_len
        final_len = min(request.num_prompt_tokens + max_tokens, self.max_seq_len)
        return max(final_len - 1, request.num_tokens)

    def _reserved_blocks(self) -> int:
        """Free blocks that running requests may still claim to reach their full length."""
        return sum(self.kv_cache.num_blocks_to_allocate(r, self._max_slots(r)) for r in self.running)

    # ------------------------------------------------------------------------------------- update

    def update(self, scheduler_output: SchedulerOutput, model_output: ModelOutput) -> list[Request]:
        """Take in one step's results; return the requests that finished in it.

        Scheduled requests that sampled get their token appended and their stop conditions
        checked; full blocks go to the prefix cache. Requests finished since ``schedule`` (aborted,
        or ended by an earlier step while this one was in flight) are skipped; a request
        preempted meanwhile still takes its token (it will recompute it with the rest).
        """
        step_requests = self._in_flight.pop(id(scheduler_output), {})
        sampled = dict(zip(model_output.request_ids, model_output.sampled_token_ids))
        finished = []
        for item in scheduler_output.scheduled:
            request = step_requests.get(item.request_id)
            if request is None or request.status.is_finished:
                continue
            if not item.sample:
                if request.status == RequestStatus.RUNNING:
                    self.kv_cache.cache_blocks(request)
                continue
            request.num_pending_outputs -= 1
            if item.request_id not in sampled:
                raise RuntimeError(f"request {item.request_id} was to sample but the model output "
                                   f"has no token for it")
            token_id = sampled[item.request_id]
            request.append_output_token(token_id)
            if request.first_token_time is None:
                request.first_token_time = time.monotonic()
            if request.status == RequestStatus.RUNNING:
                self.kv_cache.cache_blocks(request)
            status = self._check_stop(request, token_id)
            if status is not None:
                # A request preempted while this step was in flight waits; it may end here too.
                if request.status == RequestStatus.RUNNING:
                    self.running.remove(request)
                else:
                    self.waiting.remove(request)
                self._finish(request, status)
                finished.append(request)
        return finished

    def _check_stop(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token_id in request.eos_token_ids:
                request.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if token_id in params.stop_token_ids:
                request.stop_reason = token_id
                return RequestStatus.FINISHED_STOPPED
        if request.max_tokens is not None and request.num_output_tokens >= request.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.max_seq_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _finish(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        self.kv_cache.free(request)
        del self._requests[request.request_id]
        del self._arrival_order[request.request_id]
        self._finished_since_schedule.append(request.request_id)
