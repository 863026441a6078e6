"""Row-granular dependencies (kiln.kernels.dataflow) under the interpreter: the gated MLP's
gate_up -> down with ready flags and SiLU-mul folded into down's loads gives the bits of the
three separate launches, and marks every row granule of gate_up ready for the step's epoch."""

import pytest
import torch

from kiln.kernels import dataflow, mma_gemv
from kiln.models.llama import GatedMLP


def _mlp(hidden, inter, bias, seed):
    gen = torch.Generator().manual_seed(seed)
    mlp = GatedMLP(hidden, inter, bias, torch.float16, "cpu")
    for p in mlp.parameters():
        p.data.copy_((torch.randn(p.shape, generator=gen) * 0.2).to(p.dtype))
    return mlp


@pytest.mark.parametrize("rows,hidden,inter,bias", [(1, 64, 128, False), (3, 96, 160, True)])
def test_flowing_mlp_gives_the_launches_bits(rows, hidden, inter, bias):
    mlp = _mlp(hidden, inter, bias, seed=rows)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(rows, hidden, generator=gen).to(torch.float16)
    want = mlp(x)
    flags = dataflow.RowFlags(2, 2 * inter, "cpu")
    for step in (1, 2):
        flags.begin()
        assert mlp._flows(x)
        got = mlp(x, flags.slot(1))
        assert torch.equal(got, want)
        granules = -(-2 * inter // dataflow.FLAG_ROWS)
        assert torch.equal(flags.flags[1, :granules], torch.full((granules,), step,
                                                                 dtype=torch.int32))
        assert int(flags.flags[0].abs().sum()) == 0 and int(flags.errors) == 0


def test_gate_up_signals_each_granule_once_split():
    """A split-K gate_up (partials summed by the last program of each tile) signals too, and the
    consumer reads the summed rows."""
    mlp = _mlp(256, 64, False, seed=3)
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    want = mlp.down_proj(mlp.act(mlp.gate_up_proj(x)))
    flags = dataflow.RowFlags(1, 128, "cpu")
    flags.begin()
    slot = flags.slot(0)
    gate_up = mma_gemv.tc_gemv(x, None, mlp.gate_up_proj.weight, None, None, x.dtype, split_k=4,
                               signal=slot)
    assert torch.equal(flags.flags[0], torch.ones(8, dtype=torch.int32))
    out = mma_gemv.tc_gemv(gate_up, None, mlp.down_proj.weight, None, None, x.dtype, split_k=2,
                           wait=slot, silu=True)
    plain = mma_gemv.tc_gemv(mlp.act(gate_up), None, mlp.down_proj.weight, None, None, x.dtype,
                             split_k=2)
    assert torch.equal(out, plain)
    assert (out.float() - want.float()).abs().max() < 2e-2 * want.float().abs().max()


def test_flowing_refuses_what_it_cannot_do(monkeypatch):
    mlp = _mlp(64, 128, False, seed=1)
    x = torch.randn(1, 64).to(torch.float16)
    with pytest.raises(ValueError, match="2K columns"):
        mma_gemv.tc_gemv(x, None, mlp.down_proj.weight, None, None, x.dtype, silu=True)
    monkeypatch.setenv("KILN_TC_STREAM_K", "1")
    assert not mlp._flows(x)
    flags = dataflow.RowFlags(1, 256, "cpu")
    with pytest.raises(ValueError, match="split-K"):
        mma_gemv.tc_gemv(x, None, mlp.gate_up_proj.weight, None, None, x.dtype,
                         signal=flags.slot(0))
    monkeypatch.delenv("KILN_TC_STREAM_K")
    mlp.act.quant_dtype = torch.float8_e4m3fn
    assert not mlp._flows(x)
