"""The register-direct tensor-core GEMV's weight order (kiln.kernels.mma_direct), on the CPU:
packing round trip, and the kernel's arithmetic emulated fragment by fragment from the documented
mma.m16n8k32 (e4m3) and m16n8k16 (bf16) register layouts (A words, B words, C), and fp8's
written-out form (two m16n8k16 f16 mmas on converted halves), against the float32 reference
product. The kernel itself runs on the GPU only
(tests/gpu/test_mma_direct_gpu.py)."""

import pytest
import torch

from kiln.kernels.mma_direct import (chunk_k, mma_direct_enabled, mma_direct_ok, pack_mma_direct,
                                     unpack_mma_direct)

FP8 = torch.float8_e4m3fn
BF16 = torch.bfloat16


def _weights(n, k, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    if dtype == FP8:
        ws = w.abs().amax(dim=1) / 448.0
        return (w / ws[:, None]).to(FP8), ws
    return w.to(BF16), None


@pytest.mark.parametrize("dtype", [FP8, BF16])
@pytest.mark.parametrize("n,k,r", [(32, 256, 2), (64, 512, 4), (16, 768, 1)])
def test_pack_round_trip(dtype, n, k, r):
    w, _ = _weights(n, k, dtype)
    words = pack_mma_direct(w, r)
    assert words.shape == (n // (16 * r), k // chunk_k(dtype), 8, 32, r, 4)
    assert words.dtype == torch.int32
    assert torch.equal(unpack_mma_direct(words, dtype).view(torch.uint8), w.view(torch.uint8))


def _emulate(x: torch.Tensor, xs, words: torch.Tensor, ws, dtype) -> torch.Tensor:
    """out [M, N] as _mma_direct_kernel computes it. Per lane (g, t) and step: A register p holds
    E values of row g + 8 (p % 2) at the mma's k = E t + 4 E (p // 2) + i; B register q (word
    16 t + 2 s + q of the chunk, of x row g) holds the mma's k = E t + 4 E q + i, column g; D = A B
    summed over steps and chunks; C register p is row g + 8 (p // 2), column 2 t + p % 2."""
    e = 4 if dtype == FP8 else 2
    ks = 8 * e  # k an mma step
    blocks, chunks, steps, _, r, _ = words.shape
    m, k = x.shape
    vals = words.contiguous().view(dtype).float().reshape(blocks, chunks, steps, 32, r, 4, e)
    xw = torch.zeros(8, k, dtype=x.dtype)
    xw[:m] = x
    xv = xw.float().reshape(8, chunks, 64, e)  # (x row, chunk, word, value)
    a = torch.zeros(blocks, chunks, steps, r, 16, ks)
    b = torch.zeros(chunks, steps, ks, 8)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for p in range(4):
            kk = e * t + 4 * e * (p // 2)
            a[..., g + 8 * (p % 2), kk:kk + e] = vals[:, :, :, lane, :, p, :]
        for s in range(steps):
            for q in range(2):
                kk = e * t + 4 * e * q
                b[:, s, kk:kk + e, g] = xv[g, :, 16 * t + 2 * s + q, :]
    d = torch.einsum("bcsjrk,cskn->bjrn", a, b)  # (block, tile, row, column)
    out = d.reshape(blocks * r * 16, 8)[:, :m].t()
    if dtype == FP8:
        out = out * ws[None, :] * xs.reshape(-1)[:m, None]
    return out


def _emulate_cvt(x: torch.Tensor, xs, words: torch.Tensor, ws) -> torch.Tensor:
    """out [M, N] as _mma_direct_kernel computes fp8 with CVT (_MMA_FP8_CVT), from the PTX's own
    register plumbing: per step, f16 mma h (0, 1) takes A registers (lo A[2h], lo A[2h+1], hi A[2h],
    hi A[2h+1]) and B registers (lo B[h], hi B[h]), each 16-bit half (two e4m3 values, low byte
    first) converted to an f16 pair; in m16n8k16 f16, A register p holds row g + 8 (p % 2) at
    k = 2 t + 8 (p // 2) + i, B register q holds k = 2 t + 8 q + i of column g."""
    blocks, chunks, steps, _, r, _ = words.shape
    m, k = x.shape
    vals = words.contiguous().view(FP8).float().reshape(blocks, chunks, steps, 32, r, 4, 2, 2)
    xw = torch.zeros(8, k, dtype=x.dtype)
    xw[:m] = x
    xv = xw.float().reshape(8, chunks, 64, 2, 2)  # (x row, chunk, word, half, value)
    a = torch.zeros(blocks, chunks, steps, 2, r, 16, 16)
    b = torch.zeros(chunks, steps, 2, 16, 8)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for h in range(2):
            regs_a = [(2 * h, 0), (2 * h + 1, 0), (2 * h, 1), (2 * h + 1, 1)]  # (e4m3 register, half)
            for p, (src, half) in enumerate(regs_a):
                kk = 2 * t + 8 * (p // 2)
                a[:, :, :, h, :, g + 8 * (p % 2), kk:kk + 2] = vals[:, :, :, lane, :, src, half, :]
            for s in range(steps):
                for half in range(2):  # B register q = half
                    kk = 2 * t + 8 * half
                    b[:, s, h, kk:kk + 2, g] = xv[g, :, 16 * t + 2 * s + h, half, :]
    d = torch.einsum("bcshrjk,cshkn->brjn", a, b)
    out = d.reshape(blocks * r * 16, 8)[:, :m].t()
    return out * ws[None, :] * xs.reshape(-1)[:m, None]


@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("dtype", [FP8, BF16, "fp8-cvt"])
@pytest.mark.parametrize("n,k,r", [(32, 512, 2), (64, 256, 4)])
def test_emulated_kernel_matches_reference(m, dtype, n, k, r):
    cvt = dtype == "fp8-cvt"
    dtype = FP8 if cvt else dtype
    w, ws = _weights(n, k, dtype, seed=m)
    gen = torch.Generator().manual_seed(1)
    xf = torch.randn(m, k, generator=gen)
    if dtype == FP8:
        xs = xf.abs().amax(dim=1, keepdim=True) / 448.0
        x = (xf / xs).to(FP8)
        ref = (x.float() @ w.float().t()) * xs * ws[None, :]
    else:
        x, xs = xf.to(BF16), None
        ref = x.float() @ w.float().t()
    words = pack_mma_direct(w, r)
    got = _emulate_cvt(x, xs, words, ws) if cvt else _emulate(x, xs, words, ws, dtype)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-5


def test_shapes_and_flag(monkeypatch):
    assert chunk_k(FP8) == 256 and chunk_k(BF16) == 128
    assert mma_direct_ok(128256, 4096, FP8) and mma_direct_ok(4096, 14336, FP8)
    assert mma_direct_ok(6144, 4096, BF16, r=4)
    assert not mma_direct_ok(4096, 4224, FP8) and not mma_direct_ok(4008, 4096, BF16)
    assert not mma_direct_ok(4096, 4096, torch.float16)
    with pytest.raises(ValueError, match="multiple of 32"):
        pack_mma_direct(_weights(48, 256, FP8)[0], 2)
    with pytest.raises(ValueError, match="float8_e4m3fn or bfloat16"):
        pack_mma_direct(torch.zeros(32, 256, dtype=torch.float16), 2)
    monkeypatch.delenv("KILN_MMA_DIRECT", raising=False)
    assert not mma_direct_enabled("fp8") and not mma_direct_enabled("float")
    monkeypatch.setenv("KILN_MMA_DIRECT", "fp8")
    assert mma_direct_enabled("fp8") and not mma_direct_enabled("float")
    monkeypatch.setenv("KILN_MMA_DIRECT", "1")
    assert mma_direct_enabled("fp8") and mma_direct_enabled("float")
