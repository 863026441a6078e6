"""Flat step inputs built with array operations equal a token-by-token construction."""

import random

import numpy as np
import pytest
import torch

from kiln.layers.forward_context import build_attention_metadata, build_step_inputs


def by_hand(seqs, block_size):
    """The plain per-token construction: slots, positions, query starts, padded tables."""
    slots, positions, qsl = [], [], [0]
    for start, n, table in seqs:
        for p in range(start, start + n):
            slots.append(table[p // block_size] * block_size + p % block_size)
            positions.append(p)
        qsl.append(qsl[-1] + n)
    width = max((len(t) for _, _, t in seqs), default=0) or 1
    tables = [list(t) + [0] * (width - len(t)) for _, _, t in seqs]
    return slots, positions, qsl, tables


@pytest.mark.parametrize("seed", range(6))
def test_step_inputs_match_a_token_by_token_construction(seed):
    rng = random.Random(seed)
    block_size = rng.choice([1, 4, 16])
    seqs = []
    for _ in range(rng.randint(1, 9)):
        start, n = rng.randint(0, 60), rng.choice([0, 1, 1, rng.randint(1, 40)])
        need = -(-(start + n) // block_size) or 1
        seqs.append((start, n, rng.sample(range(500), need)))
    ids = np.array([rng.randrange(1000) for _ in range(sum(n for _, n, _ in seqs))])
    rows = np.array([3, 0, 1])
    meta, positions, (ids_t, rows_t) = build_step_inputs(seqs, block_size, extra=(ids, rows))
    slots, pos, qsl, tables = by_hand(seqs, block_size)
    assert meta.slot_mapping.tolist() == slots and meta.slot_mapping.dtype == torch.int64
    assert positions.tolist() == pos and positions.dtype == torch.int64
    assert meta.query_start_loc.tolist() == qsl and meta.query_start_loc.dtype == torch.int32
    assert meta.seq_lens.tolist() == [s + n for s, n, _ in seqs]
    assert meta.block_tables.tolist() == tables and meta.block_tables.dtype == torch.int32
    assert ids_t.tolist() == ids.tolist() and rows_t.tolist() == [3, 0, 1]
    assert meta.max_query_len == max(n for _, n, _ in seqs)
    # Every int64 field starts on a 16-byte boundary (kernels specialize on pointer alignment).
    for t in (meta.slot_mapping, positions, ids_t, rows_t):
        assert t.data_ptr() % 16 == 0


def test_empty_batch():
    meta = build_attention_metadata([], 16)
    assert meta.num_seqs == 0 and meta.slot_mapping.numel() == 0 and meta.block_tables.shape == (0, 1)
