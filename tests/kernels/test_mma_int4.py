"""The tensor-core int4 GEMV's weight order (kiln.kernels.mma_int4), on the CPU: packing round
trip, and the kernel's arithmetic emulated fragment by fragment from the documented mma.m16n8k16
register layout (A words, B words, C), against the float32 reference product. The kernel itself
runs on the GPU only (tests/gpu/test_mma_int4_gpu.py)."""

import pytest
import torch

from kiln.kernels.mma_int4 import (int4_mma_enabled, int4_mma_ok, pack_int4_mma,
                                   unpack_int4_mma)
from kiln.kernels.quant_ref import int4_wo_linear_ref


def _random(n, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen)
    s = torch.rand(n, k // 128, generator=gen) * 0.02 + 1e-3
    return q, s


@pytest.mark.parametrize("n,k,r", [(64, 128, 4), (128, 512, 4), (96, 256, 2), (64, 384, 1)])
def test_pack_round_trip(n, k, r):
    q, s = _random(n, k)
    words, sp = pack_int4_mma(q, s, r)
    assert words.shape == (n // (16 * r), k // 128, 8, 32, r) and words.dtype == torch.int32
    assert sp.shape == (n // (16 * r), k // 128, 2, 8, r)
    q2, s2 = unpack_int4_mma(words, sp)
    assert torch.equal(q2, q) and torch.equal(s2, s)


def _emulate(x: torch.Tensor, words: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
    """out [M, N] as _int4_mma_kernel computes it: per lane (g, t), its A fragment from its word
    (pairs (nibble p, nibble p + 4) at the fragment places of register p, each 128 + nibble),
    its B words (x row g at k = 32 t + 4 s + 0, 1 and + 2, 3), D = A B per step, and the group's
    sum minus 136 times the column sums of B, times the row's scale."""
    blocks, groups, steps, _, r = words.shape
    m = x.shape[0]
    w = words.to(torch.int64) & 0xFFFFFFFF
    a = torch.zeros(blocks, groups, steps, r, 16, 16)  # A[row, slot] of each tile and step
    b = torch.zeros(groups, steps, 16, 8)               # B[slot, column]
    xg = torch.zeros(8, x.shape[1])
    xg[:m] = x.float()
    xg = xg.reshape(8, groups, 128)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        wl = w[:, :, :, lane, :]  # (block, group, s, j)
        for p, (row, col) in enumerate(((g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8))):
            a[..., row, col] = (128 + ((wl >> (4 * p)) & 15)).float()
            a[..., row, col + 1] = (128 + ((wl >> (4 * (p + 4))) & 15)).float()
        for s in range(steps):
            for e in range(2):
                b[:, s, 2 * t + e, g] = xg[g, :, 32 * t + 4 * s + e]
                b[:, s, 2 * t + 8 + e, g] = xg[g, :, 32 * t + 4 * s + 2 + e]
    d = torch.einsum("bgsjrk,gskc->bgjrc", a, b)          # (block, group, j, row, column)
    colsum = b.sum(dim=(1, 2))                             # (group, column)
    q = d - 136 * colsum[None, :, None, None, :]
    # scales (block, group, h, g, j) -> (block, group, j, row = 8 h + g)
    sc = sp.permute(0, 1, 4, 2, 3).reshape(blocks, groups, r, 16)
    out = (q * sc[..., None]).sum(dim=1)                   # (block, j, row, column)
    return out.reshape(blocks * r * 16, 8)[:, :m].t()


@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("n,k,r", [(64, 256, 4), (32, 384, 2)])
def test_emulated_kernel_matches_reference(m, n, k, r):
    q, s = _random(n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    words, sp = pack_int4_mma(q, s, r)
    got = _emulate(x, words, sp)
    ref = int4_wo_linear_ref(x.float(), q, s, 128)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-5


def test_shapes_and_flag(monkeypatch):
    assert int4_mma_ok(128256, 4096, 128) and int4_mma_ok(4096, 14336, 128)
    assert not int4_mma_ok(4096, 4096, 64) and not int4_mma_ok(4008, 4096, 128)
    with pytest.raises(ValueError, match="multiple of 32"):
        pack_int4_mma(*_random(48, 128))
    monkeypatch.delenv("KILN_INT4_MMA", raising=False)
    assert not int4_mma_enabled()
    monkeypatch.setenv("KILN_INT4_MMA", "1")
    assert int4_mma_enabled()
