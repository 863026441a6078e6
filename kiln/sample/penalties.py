"""Repetition, frequency and presence penalties over a batch, as device ops only."""

from __future__ import annotations

import torch
from torch import Tensor


def token_counts(token_ids: Tensor, vocab_size: int) -> Tensor:
    """How often each token id occurs per row: ``[B, L]`` ids padded with -1 -> ``[B, V]`` float32.

    Padding is counted into a spare column V that is dropped, so no masking or host work is needed.
    Float counts are exact up to 2**24 occurrences, far beyond any sequence.
    """
    rows = token_ids.shape[0]
    counts = torch.zeros(rows, vocab_size + 1, dtype=torch.float32, device=token_ids.device)
    index = torch.where(token_ids < 0, vocab_size, token_ids)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))
    return counts[:, :vocab_size]


def apply_penalties(
    logits: Tensor,
    prompt_token_ids: Tensor,
    output_token_ids: Tensor,
    repetition_penalty: Tensor,
    frequency_penalty: Tensor,
    presence_penalty: Tensor,
) -> Tensor:
    """Return penalised logits (a new tensor; ``logits`` is left alone).

    Repetition (tokens seen in prompt or output): positive logits are divided by the penalty,
    negative ones multiplied. Then, over output tokens only, ``logit -= frequency * count`` and
    ``logit -= presence * (count > 0)``. Rows with neutral values (1, 0, 0) come out unchanged.
    """
    vocab_size = logits.shape[1]
    output_counts = token_counts(output_token_ids, vocab_size)
    in_output = output_counts > 0
    seen = in_output | (token_counts(prompt_token_ids, vocab_size) > 0)
    rep = repetition_penalty[:, None]
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    logits = logits - frequency_penalty[:, None] * output_counts
    return logits - presence_penalty[:, None] * in_output.to(torch.float32)
