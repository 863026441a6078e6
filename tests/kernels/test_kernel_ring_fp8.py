"""The fp8 ring GEMV (kiln.kernels.ring_fp8) without a GPU: its configurations and switch, its
refusal of CPU tensors, and its compile for sm_90 (shared memory for two programs an SM, the
e4m3 tensor-core products, 16-byte copies, the PDL wait)."""

from __future__ import annotations

import re

import pytest
import torch
from gluon_sm90 import compile_sm90

from kiln.kernels import ring_fp8 as rf


def test_configurations_of_the_8b_shapes_and_the_ones_it_refuses():
    # (BLOCK_N, BLOCK_K = 64 x chunks a unit, warps, stages, programs an SM)
    assert rf.ring_fp8_config(6144, 4096) == (16, 1024, 4, 5, 2)
    assert rf.ring_fp8_config(4096, 14336) == (16, 1024, 4, 5, 2)
    assert rf.ring_fp8_config(128256, 4096) == (16, 1024, 4, 5, 2)
    assert rf.ring_fp8_config(4096, 1024) == (16, 512, 4, 5, 2)  # units of 8 chunks
    assert rf.ring_fp8_config(4096, 512) is None  # one unit a row block
    assert rf.ring_fp8_config(4096, 4160) is None  # 65 chunks
    assert rf.ring_fp8_config(4104, 4096) is None  # rows not a multiple of 16
    assert rf.ring_fp8_config(4096, 32768) is None  # x's codes would not fit two programs an SM
    for n, k in ((6144, 4096), (4096, 14336), (4096, 16384), (4096, 1024)):
        _, block_k, _, stages, per_sm = rf.ring_fp8_config(n, k)
        assert per_sm * (stages * 16 * block_k + k + 1024) <= 228 * 1024


def test_switch(monkeypatch):
    monkeypatch.delenv("KILN_RING_FP8", raising=False)
    monkeypatch.setenv("KILN_RING_GEMV", "1")
    assert not rf.ring_fp8_enabled()  # off by default, even with the ring path on
    monkeypatch.setenv("KILN_RING_FP8", "1")
    assert rf.ring_fp8_enabled()
    monkeypatch.setenv("KILN_RING_STAGES", "3")
    assert rf.ring_fp8_config(6144, 4096)[3] == 3


def test_cpu_tensors_are_refused():
    xq = torch.zeros(1, 4096).to(torch.float8_e4m3fn)
    w = torch.zeros(64, 4096).to(torch.float8_e4m3fn)
    sx, ws = torch.ones(1, 1), torch.ones(64)
    assert not rf.ring_fp8_ok(xq, sx, w, ws)
    with pytest.raises(ValueError, match="ring_fp8_gemv takes one row"):
        rf.ring_fp8_gemv(xq, sx, w, ws)


def test_reference_is_the_scaled_product():
    gen = torch.Generator().manual_seed(0)
    xq = torch.randn(1, 256, generator=gen).to(torch.float8_e4m3fn)
    w = torch.randn(32, 256, generator=gen).to(torch.float8_e4m3fn)
    sx, ws = torch.tensor([[0.5]]), torch.rand(32, generator=gen)
    bias = torch.randn(32, generator=gen).to(torch.bfloat16)
    want = ((xq.double() @ w.double().t()) * 0.5 * ws.double() + bias.double()).to(torch.bfloat16)
    assert torch.equal(rf.ring_fp8_ref(xq, sx, w, ws, bias), want)


@pytest.mark.parametrize("k", [4096, 14336, 1024])
def test_compiles_for_sm90(k):
    _, block_k, warps, stages, _ = rf.ring_fp8_config(4096, k)
    ch = block_k // 64
    types = {"x_ptr": "*fp8e4nv", "xs_ptr": "*fp32", "w_ptr": "*i32", "ws_ptr": "*fp32",
             "part_ptr": "*fp32", "count_ptr": "*i32"}
    aligned = {"x_ptr", "w_ptr", "ws_ptr", "bias_ptr", "y_ptr", "part_ptr", "N", "K"}
    (got,) = compile_sm90([(rf._ring_fp8_kernel,
                            {"HAS_BIAS": True, "CH": ch, "STEPS": k // block_k, "STAGES": stages,
                             "MAX_SEGS": 3, "PDL": 1, "EARLY": stages - 1}, types, aligned)],
                          num_warps=warps)
    ring = stages * 16 * block_k
    assert ring + k <= got["shared"] <= 112 * 1024  # two programs an SM
    ptx = got["ptx"]
    # a thread's chunks (CH / 4) x 2 mmas of 32 k
    assert ptx.count("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32") == ch // 4 * 2
    # the weights' 16-byte runs: 16 x CH x 64 bytes a unit over 128 threads, each issue of the ring
    runs = re.findall(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 0x10,", ptx)
    assert len(runs) >= 16 * ch * 64 // 128 // 16
    assert "griddepcontrol.wait" in ptx
