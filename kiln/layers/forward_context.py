"""Attention metadata: how one flat batch of tokens maps onto sequences and the paged KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Describes a flat batch of T new tokens from B sequences (no padding between them).

    Sequence b owns new tokens ``query_start_loc[b] : query_start_loc[b+1]``; they sit at the end of
    its context of ``seq_lens[b]`` tokens, so the first new token's position is
    ``seq_lens[b] - query_len_b``. Every new token's K/V is written to cache slot
    ``slot_mapping[t]`` (block_id * block_size + offset; -1 means do not write, for padding).
    ``block_tables[b, i]`` is the i-th block of sequence b.

    KV cache of one layer: a tensor [2, num_blocks, block_size, num_kv_heads, head_dim]
    (index 0 keys, 1 values).

    The ``*_cpu`` lists are host copies, so that code needing per-sequence sizes (the torch
    reference, kernel launch grids) never reads device memory.
    """

    slot_mapping: torch.Tensor  # [T] int64
    query_start_loc: torch.Tensor  # [B+1] int32
    seq_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks_per_seq] int32
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    max_query_len: int
    max_seq_len: int

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(sum(self.query_lens_cpu))

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1
