"""min-p, top-k and top-p filters: set the logits of dropped tokens to -inf, per row, on device."""

from __future__ import annotations

import torch
from torch import Tensor


def apply_min_p(logits: Tensor, min_p: Tensor) -> Tensor:
    """Drop tokens whose probability is below ``min_p`` times the row's top probability.

    Done in logit space (p_i < min_p * p_max  <=>  l_i < l_max + log(min_p)), which saves a
    softmax; a row with min_p 0 gets a threshold of -inf and keeps everything.
    """
    threshold = logits.amax(dim=-1, keepdim=True) + torch.log(min_p)[:, None]
    return logits.masked_fill(logits < threshold, float("-inf"))


def _effective_top_k(top_k: Tensor, vocab_size: int) -> Tensor:
    """top_k with 0 (off) and anything above the vocabulary mapped to ``vocab_size``."""
    return torch.where((top_k <= 0) | (top_k > vocab_size), vocab_size, top_k)


def apply_top_k(logits: Tensor, top_k: Tensor, max_top_k: int) -> Tensor:
    """Keep each row's ``top_k`` largest logits (ties at the cut are all kept); 0 means off.

    Uses ``topk(max_top_k)`` rather than a full sort: ``max_top_k`` is the host-known largest k in
    use, usually far below the vocabulary size.
    """
    vocab_size = logits.shape[1]
    width = min(max(max_top_k, 1), vocab_size)
    top_values = logits.topk(width, dim=-1).values
    k = _effective_top_k(top_k, vocab_size)
    kth = top_values.gather(1, (k.clamp(max=width) - 1)[:, None])
    # Rows with k off keep everything. (k beyond the computed width only happens on rows that are off
    # or greedy; a greedy row's sample is discarded anyway.)
    kth = torch.where((k >= vocab_size)[:, None], float("-inf"), kth)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_k_top_p(logits: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """Top-k then top-p with one descending sort.

    Top-p keeps the smallest set of most likely tokens (after top-k) whose mass reaches ``top_p``;
    the top token is always kept. The kept set is a prefix of the sorted row, so the row is cut at
    the value of its last kept token (ties with it are kept too) instead of scattering a mask back.
    Rows with top_p 1 keep the whole top-k set: float rounding of the cumulative sum could
    otherwise shave off a tail of tiny probabilities.
    """
    vocab_size = logits.shape[1]
    sorted_logits = logits.sort(dim=-1, descending=True).values
    k = _effective_top_k(top_k, vocab_size)
    positions = torch.arange(vocab_size, device=logits.device)
    sorted_logits = sorted_logits.masked_fill(positions[None, :] >= k[:, None], float("-inf"))
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # The cumulative sum never decreases, so tokens before the one that reaches top_p are a prefix.
    num_keep = (cumulative < top_p[:, None]).sum(dim=-1) + 1
    num_keep = torch.where(top_p >= 1.0, k, torch.minimum(num_keep, k))
    cutoff = sorted_logits.gather(1, (num_keep - 1)[:, None])
    return logits.masked_fill(logits < cutoff, float("-inf"))
