"""The only types that cross between the scheduler and the model runner."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.sampling_params import SamplingParams


@dataclass
class ScheduledRequest:
    """One request's share of a step.

    The runner computes ``token_ids`` at positions ``start_pos .. start_pos + len(token_ids) - 1``,
    writing their K/V into the slots given by ``block_table``, and, when ``sample`` is true, samples
    the next token from the logits of the last one. ``output_token_ids`` and ``prompt_token_ids``
    are the request's own lists (read them, never change them): penalties need them.
    """

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    sample: bool
    sampling_params: SamplingParams
    seed: int
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    # Index of the token this step samples among the request's outputs (the sampler's RNG
    # counter); ``output_token_ids`` may lag it by a token still in flight.
    output_index: int = 0
    # True when the last input token is the one the previous step sampled and the host has not
    # seen yet: ``token_ids[-1]`` is then a placeholder (-1) that the runner fills on the device.
    last_token_in_flight: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def seq_len(self) -> int:
        """Context length once this step's tokens are in the cache."""
        return self.start_pos + len(self.token_ids)


@dataclass
class SchedulerOutput:
    """Everything the runner needs for one step; decided by the scheduler alone."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    finished_request_ids: list[str] = field(default_factory=list)
    preempted_request_ids: list[str] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def is_decode_only(self) -> bool:
        """True when every scheduled request computes exactly one token (CUDA-graph friendly)."""
        return bool(self.scheduled) and all(s.num_tokens == 1 for s in self.scheduled)


@dataclass
class TokenLogprobs:
    """Logprobs at one sampled position: the sampled token's and the top-N."""

    sampled_logprob: float
    sampled_rank: int
    top_token_ids: list[int]
    top_logprobs: list[float]


@dataclass
class ModelOutput:
    """What the runner returns: one sampled token per request that sampled this step."""

    request_ids: list[str] = field(default_factory=list)
    sampled_token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs | None] | None = None
