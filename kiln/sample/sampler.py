"""The batched sampler: per-row parameters, one pass over the batch, no host synchronisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kiln.kernels.argmax import argmax
from kiln.sample.filters import apply_min_p, apply_top_k, apply_top_k_top_p
from kiln.sample.logprobs import gather_logprobs
from kiln.sample.metadata import SamplingBatch
from kiln.sample.penalties import apply_penalties
from kiln.sample.rng import exponential


@dataclass
class SamplerOutput:
    """Sampled tokens of a batch and, when any row asked, their logprobs.

    ``logprobs``/``logprob_token_ids`` are ``[B, 1 + max_num_logprobs]``: column 0 is the sampled
    token, then the top-N by raw logprob; rows that asked for fewer use a prefix.
    """

    token_ids: Tensor
    logprobs: Tensor | None = None
    logprob_token_ids: Tensor | None = None
    sampled_ranks: Tensor | None = None


class Sampler:
    """Samples one token per row of ``[B, V]`` logits under each row's own parameters.

    Order (as vLLM): penalties; greedy rows take the argmax; other rows divide by temperature,
    apply min-p, top-k, top-p and draw by the exponential race ``argmax(probs / E)`` with E from
    the counter-based hash in ``kiln.sample.rng``. Every decision stays in device tensors; the
    batch's host flags only skip work that no row needs. The same code runs on CPU and CUDA.
    """

    def __call__(self, logits: Tensor, batch: SamplingBatch) -> SamplerOutput:
        """Sample ``[B]`` token ids (int64, on the logits' device) from ``logits`` ``[B, V]``."""
        raw_logits = logits.float()
        logits = raw_logits
        if batch.any_penalties:
            logits = apply_penalties(
                logits, batch.prompt_token_ids, batch.output_token_ids, batch.repetition_penalty,
                batch.frequency_penalty, batch.presence_penalty)
        if batch.all_greedy:
            token_ids = argmax(logits)
        else:
            token_ids = self._sample_random(logits, batch)
        if batch.max_num_logprobs is None:
            return SamplerOutput(token_ids=token_ids)
        logprobs, logprob_ids, ranks = gather_logprobs(raw_logits, token_ids, batch.max_num_logprobs)
        return SamplerOutput(token_ids, logprobs, logprob_ids, ranks)

    @staticmethod
    def _sample_random(logits: Tensor, batch: SamplingBatch) -> Tensor:
        """Temperature, filters and the exponential race; greedy rows (if any) take the argmax."""
        greedy = batch.temperature == 0.0
        # Greedy rows divide by 1 so that no inf/nan appears; their draw is replaced below.
        temperature = torch.where(greedy, 1.0, batch.temperature)
        scaled = logits / temperature[:, None]
        if batch.any_min_p:
            scaled = apply_min_p(scaled, batch.min_p)
        if batch.any_top_p:
            scaled = apply_top_k_top_p(scaled, batch.top_k, batch.top_p)
        elif batch.any_top_k:
            scaled = apply_top_k(scaled, batch.top_k, batch.max_top_k)
        probs = scaled.softmax(dim=-1)
        noise = exponential(batch.seeds, batch.output_index, logits.shape[1])
        sampled = (probs / noise).argmax(dim=-1)
        if batch.any_greedy:
            sampled = torch.where(greedy, argmax(logits), sampled)
        return sampled
