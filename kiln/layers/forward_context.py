"""Attention metadata: how one flat batch of tokens maps onto sequences and the paged KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

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

    def rows(self, lo: int, hi: int) -> AttentionMetadata:
        """The metadata of sequences lo .. hi - 1 alone (device fields are views). Their token
        offsets stay those of the whole batch, so a kernel given it reads q and writes its output
        at the same rows; slot_mapping stays whole (attention does not read it)."""
        query_lens, seq_lens = self.query_lens_cpu[lo:hi], self.seq_lens_cpu[lo:hi]
        return AttentionMetadata(
            slot_mapping=self.slot_mapping, query_start_loc=self.query_start_loc[lo:hi + 1],
            seq_lens=self.seq_lens[lo:hi], block_tables=self.block_tables[lo:hi],
            query_lens_cpu=query_lens, seq_lens_cpu=seq_lens,
            max_query_len=max(query_lens, default=0), max_seq_len=max(seq_lens, default=0))

    @cached_property
    def decode_split(self) -> tuple[AttentionMetadata, AttentionMetadata] | None:
        """(leading decode rows, the rest) of a mixed batch, or None.

        The scheduler puts running requests first, so a mixed step is usually many one-token
        decodes followed by prefill chunks. The tiled causal kernel would give each decode row a
        whole query tile; the decode kernel suits them. Computed once per step (every layer
        asks).
        """
        if self.max_query_len <= 1:
            return None
        d = 0
        for n in self.query_lens_cpu:
            if n > 1:
                break
            d += 1
        if d == 0:
            return None
        return self.rows(0, d), self.rows(d, self.num_seqs)

    @cached_property
    def fresh_from(self) -> int:
        """Index of the first sequence of the trailing run of fresh prompts (chunks with no
        context before them: seq_len == query_len > 0); num_seqs when the last sequence is not one.

        New prompts are scheduled after running requests, so a step's fresh prompts usually
        close the batch; attention can read their keys from the step's own tensors.
        """
        i = self.num_seqs
        while i > 0 and self.seq_lens_cpu[i - 1] == self.query_lens_cpu[i - 1] > 0:
            i -= 1
        return i


def build_attention_metadata(seqs: list[tuple[int, int, list[int]]], block_size: int,
                             device: torch.device | str = "cpu") -> AttentionMetadata:
    """Metadata for a flat batch from host-side descriptions.

    ``seqs`` holds, per sequence in batch order, (start_pos, num_new_tokens, block_table): the new
    tokens occupy positions start_pos .. start_pos + num_new_tokens - 1 and ``block_table`` lists the
    sequence's blocks (enough of them to hold every position up to the last new one).
    """
    query_lens = [n for _, n, _ in seqs]
    seq_lens = [start + n for start, n, _ in seqs]
    slots: list[int] = []
    for start, n, table in seqs:
        slots.extend(table[p // block_size] * block_size + p % block_size
                     for p in range(start, start + n))
    max_blocks = max((len(t) for _, _, t in seqs), default=0) or 1
    padded = [list(t) + [0] * (max_blocks - len(t)) for _, _, t in seqs]
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    dev = torch.device(device)

    def put(values, dtype: torch.dtype) -> torch.Tensor:
        # Built on the host, copied without waiting: the host never reads device memory here.
        return torch.tensor(values, dtype=dtype).to(dev, non_blocking=True)

    return AttentionMetadata(
        slot_mapping=put(slots, torch.int64),
        query_start_loc=put(qsl, torch.int32),
        seq_lens=put(seq_lens, torch.int32),
        block_tables=put(padded, torch.int32).view(len(seqs), max_blocks),
        query_lens_cpu=query_lens,
        seq_lens_cpu=seq_lens,
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
    )
