"""Attention metadata: how one flat batch of tokens maps onto sequences and the paged KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
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
    return build_step_inputs(seqs, block_size, device)[0]


def build_step_inputs(seqs: list[tuple[int, int, list[int]]], block_size: int,
                      device: torch.device | str = "cpu", extra: Sequence[np.ndarray] = ()
                      ) -> tuple[AttentionMetadata, torch.Tensor, list[torch.Tensor]]:
    """(metadata, positions [T] int64, ``extra`` int64 arrays on the device) for a flat batch.

    Everything is computed with array operations into one host buffer (pinned on CUDA) and sent
    in a single copy that the host does not wait for; the host never reads device memory here.
    ``seqs`` is as for build_attention_metadata.
    """
    dev = torch.device(device)
    num_seqs = len(seqs)
    query_lens = [n for _, n, _ in seqs]
    seq_lens = [start + n for start, n, _ in seqs]
    q = np.array(query_lens, dtype=np.int64)
    starts = np.array([start for start, _, _ in seqs], dtype=np.int64)
    num_tokens = int(q.sum())
    width = max((len(t) for _, _, t in seqs), default=0) or 1
    # One int64 buffer: slots, positions, query starts, seq lens, block tables, then the extras,
    # each starting on a 16-byte boundary (Triton specializes kernels on pointer alignment).
    sizes = [num_tokens, num_tokens, num_seqs + 1, num_seqs, num_seqs * width]
    sizes += [len(e) for e in extra]
    starts_at = np.cumsum([0] + [n + n % 2 for n in sizes]).tolist()
    host = torch.empty(starts_at[-1], dtype=torch.int64, pin_memory=dev.type == "cuda")
    part = [host.numpy()[a:a + n] for a, n in zip(starts_at, sizes)]
    slots, positions, qsl, lens, tables = part[:5]
    tables = tables.reshape(num_seqs, width)
    tables.fill(0)
    for i, (_, _, table) in enumerate(seqs):
        tables[i, :len(table)] = table
    qsl[0] = 0
    np.cumsum(q, out=qsl[1:])
    lens[:] = starts + q
    owner = np.repeat(np.arange(num_seqs), q)  # the sequence of each token
    positions[:] = np.arange(num_tokens) - qsl[owner] + starts[owner]
    slots[:] = tables[owner, positions // block_size] * block_size + positions % block_size
    for dst, values in zip(part[5:], extra):
        dst[:] = values
    dev_buf = host.to(dev, non_blocking=True)
    views = [dev_buf[a:a + n] for a, n in zip(starts_at, sizes)]
    # The int32 fields (query starts, seq lens, block tables) are adjacent: one cast.
    ints32 = dev_buf[starts_at[2]:starts_at[5]].to(torch.int32)
    at = [a - starts_at[2] for a in starts_at[2:5]]
    meta = AttentionMetadata(
        slot_mapping=views[0],
        query_start_loc=ints32[at[0]:at[0] + num_seqs + 1],
        seq_lens=ints32[at[1]:at[1] + num_seqs],
        block_tables=ints32[at[2]:at[2] + num_seqs * width].view(num_seqs, width),
        query_lens_cpu=query_lens,
        seq_lens_cpu=seq_lens,
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
    )
    return meta, views[1], views[5:]
