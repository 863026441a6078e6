"""Logprobs of the sampled tokens and the top-N, from the raw model logits."""

from __future__ import annotations

import torch
from torch import Tensor


def gather_logprobs(raw_logits: Tensor, token_ids: Tensor, num_top: int) -> tuple[Tensor, Tensor, Tensor]:
    """Logprobs as vLLM reports them by default: from ``log_softmax`` of the unprocessed logits.

    Returns ``(logprobs [B, 1 + num_top] float32, ids [B, 1 + num_top] int64, ranks [B] int64)``:
    column 0 is the sampled token, then the ``num_top`` most likely tokens in order. The rank is
    1 + the number of tokens with a strictly larger logprob, so the argmax has rank 1.
    """
    logprobs = torch.log_softmax(raw_logits, dim=-1)
    sampled_ids = token_ids[:, None]
    sampled = logprobs.gather(1, sampled_ids)
    ranks = (logprobs > sampled).sum(dim=-1) + 1
    if num_top > 0:
        top = logprobs.topk(num_top, dim=-1)
        return torch.cat([sampled, top.values], dim=1), torch.cat([sampled_ids, top.indices], dim=1), ranks
    return sampled, sampled_ids, ranks
