"""A decode graph's inputs from one staged copy: the first kernel of every captured decode step.

Before a replay the host writes one row of STAGED_FIELDS int64 values per sequence of the bucket
(input id, position, KV slot, sequence length, fill row) into pinned memory and copies the rows
to the device in one transfer. Inside the graph this kernel spreads them into the buffers the
model reads. A fill row >= 0 takes the input id from the previous step's sampled ids (the token
was sampled on the device and never came to the host); -1 keeps the staged id. Rows past the
step's sequences carry PAD_ROW: slot -1 writes nothing, one cached token is read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kiln.kernels import use_triton

# Per sequence: input id, position, slot, sequence length, fill row.
STAGED_FIELDS = 5
PAD_ROW = (0, 0, -1, 1, -1)


def scatter_step_inputs_ref(staged: torch.Tensor, last_tokens: torch.Tensor,
                            input_ids: torch.Tensor, positions: torch.Tensor,
                            slot_mapping: torch.Tensor, seq_lens: torch.Tensor) -> None:
    """Reference: staged int64 [b, STAGED_FIELDS] into input_ids, positions, slot_mapping (int64
    [b]) and seq_lens (int32 [b]); ids of rows with a fill row from last_tokens. No host sync."""
    fill = staged[:, 4]
    prev = last_tokens.index_select(0, fill.clamp(min=0))
    input_ids.copy_(torch.where(fill >= 0, prev, staged[:, 0]))
    positions.copy_(staged[:, 1])
    slot_mapping.copy_(staged[:, 2])
    seq_lens.copy_(staged[:, 3])


@triton.jit
def _scatter_kernel(staged_ptr, last_ptr, ids_ptr, pos_ptr, slot_ptr, lens_ptr, B,
                    FIELDS: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < B
    row = staged_ptr + i * FIELDS
    tok = tl.load(row, mask=m, other=0)
    fill = tl.load(row + 4, mask=m, other=-1)
    prev = tl.load(last_ptr + fill, mask=m & (fill >= 0), other=0)
    tl.store(ids_ptr + i, tl.where(fill >= 0, prev, tok), mask=m)
    tl.store(pos_ptr + i, tl.load(row + 1, mask=m, other=0), mask=m)
    tl.store(slot_ptr + i, tl.load(row + 2, mask=m, other=-1), mask=m)
    tl.store(lens_ptr + i, tl.load(row + 3, mask=m, other=1).to(tl.int32), mask=m)


def scatter_step_inputs(staged: torch.Tensor, last_tokens: torch.Tensor, input_ids: torch.Tensor,
                        positions: torch.Tensor, slot_mapping: torch.Tensor,
                        seq_lens: torch.Tensor) -> None:
    """Dispatcher of scatter_step_inputs_ref: one Triton launch on CUDA (capturable), the
    reference elsewhere. Every tensor contiguous; b = input_ids.shape[0] rows of staged."""
    b = input_ids.shape[0]
    if staged.shape != (b, STAGED_FIELDS) or staged.dtype != torch.int64:
        raise ValueError(f"staged must be int64 [{b}, {STAGED_FIELDS}], got "
                         f"{staged.dtype} {tuple(staged.shape)}")
    if not use_triton(input_ids):
        scatter_step_inputs_ref(staged, last_tokens, input_ids, positions, slot_mapping, seq_lens)
        return
    block = min(1024, triton.next_power_of_2(max(b, 16)))
    _scatter_kernel[(triton.cdiv(b, block),)](staged, last_tokens, input_ids, positions,
                                              slot_mapping, seq_lens, b, FIELDS=STAGED_FIELDS,
                                              BLOCK=block, num_warps=4)
