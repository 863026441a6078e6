"""The decode graphs' input scatter (kiln.kernels.step_inputs) against its torch reference under
the interpreter: every field, the int32 lengths, fill rows taking the previous samples, padding."""

import pytest
import torch

from kiln.kernels.step_inputs import (PAD_ROW, STAGED_FIELDS, scatter_step_inputs,
                                      scatter_step_inputs_ref)


def _buffers(b):
    return (torch.full((b,), -5, dtype=torch.int64), torch.full((b,), -5, dtype=torch.int64),
            torch.full((b,), -5, dtype=torch.int64), torch.full((b,), -5, dtype=torch.int32))


@pytest.mark.parametrize("b,n", [(1, 1), (16, 11), (37, 37), (1100, 1000)])
def test_scatter_matches_reference(b, n, gen):
    staged = torch.tensor(PAD_ROW, dtype=torch.int64).repeat(b, 1)
    staged[:n, 0] = torch.randint(0, 128256, (n,), generator=gen)
    staged[:n, 1] = torch.randint(0, 8000, (n,), generator=gen)
    staged[:n, 2] = torch.randint(0, 1 << 20, (n,), generator=gen)
    staged[:n, 3] = staged[:n, 1] + 1
    last = torch.randint(0, 128256, (max(n, 4),), generator=gen)
    fill = torch.rand(n, generator=gen) < 0.5
    staged[:n, 4] = torch.where(fill, torch.randperm(last.shape[0], generator=gen)[:n], -1)
    got, ref = _buffers(b), _buffers(b)
    scatter_step_inputs(staged, last, *got)
    scatter_step_inputs_ref(staged, last, *ref)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and torch.equal(g, r)
    ids, pos, slots, lens = got
    assert torch.equal(ids[:n][fill], last[staged[:n, 4][fill]])
    assert torch.equal(ids[:n][~fill], staged[:n, 0][~fill])
    assert lens.dtype == torch.int32 and torch.equal(lens.long(), staged[:, 3])
    assert (slots[n:] == -1).all() and (lens[n:] == 1).all() and (ids[n:] == 0).all()


def test_scatter_refuses_a_wrong_staged_shape():
    with pytest.raises(ValueError, match=f"int64 \\[4, {STAGED_FIELDS}\\]"):
        scatter_step_inputs(torch.zeros(4, 4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64),
                            *_buffers(4))
