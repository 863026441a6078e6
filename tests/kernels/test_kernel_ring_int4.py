"""The int4 ring GEMV (kiln.kernels.ring_int4) without a GPU: its configurations and switches,
its refusal of CPU tensors, and its compile for sm_90 (shared memory for two programs an SM,
the tensor-core products, 16-byte copies, the PDL wait)."""

from __future__ import annotations

import re

import pytest
import torch
from gluon_sm90 import compile_sm90

from kiln.kernels import ring_int4 as ri


def test_configurations_of_the_8b_shapes_and_the_ones_it_refuses():
    # (BLOCK_N, BLOCK_K = 128 x chunks a unit, warps, stages, programs an SM)
    assert ri.ring_int4_config(6144, 4096) == (16, 2048, 4, 5, 2)
    assert ri.ring_int4_config(4096, 14336) == (16, 2048, 4, 4, 2)  # x's pairs take 28 KB
    assert ri.ring_int4_config(128256, 4096) == (16, 2048, 4, 5, 2)
    assert ri.ring_int4_config(4096, 2048) == (16, 1024, 4, 5, 2)  # units of 8 chunks
    assert ri.ring_int4_config(4096, 3072) == (16, 1024, 4, 5, 2)
    assert ri.ring_int4_config(4096, 1024) is None  # one unit a row block
    assert ri.ring_int4_config(4096, 3200) is None  # 25 groups
    assert ri.ring_int4_config(4104, 4096) is None  # rows not a multiple of 16
    assert ri.ring_int4_config(4096, 32768) is None  # x's pairs would not fit two programs an SM
    for n, k in ((6144, 4096), (4096, 14336), (4096, 2048)):
        _, block_k, _, stages, per_sm = ri.ring_int4_config(n, k)
        ch = block_k // 128
        smem = stages * (ch * 1024 + 16 * ch * 4) + 2 * k + 4 * (k // 128)
        assert per_sm * (smem + 1024) <= 228 * 1024


def test_switches(monkeypatch):
    monkeypatch.delenv("KILN_RING_INT4", raising=False)
    monkeypatch.setenv("KILN_RING_GEMV", "1")
    assert not ri.ring_int4_enabled()  # off by default, even with the ring path on
    monkeypatch.setenv("KILN_RING_INT4", "1")
    assert ri.ring_int4_enabled()
    monkeypatch.delenv("KILN_RING_INT4_MIN_MB", raising=False)
    assert ri.ring_int4_worth(28672, 4096) and ri.ring_int4_worth(128256, 4096)
    assert not ri.ring_int4_worth(4096, 14336) and not ri.ring_int4_worth(6144, 4096)
    monkeypatch.setenv("KILN_RING_INT4_MIN_MB", "0")
    assert ri.ring_int4_worth(16, 2048)
    monkeypatch.setenv("KILN_RING_STAGES", "3")
    assert ri.ring_int4_config(6144, 4096)[3] == 3


def test_cpu_tensors_are_refused():
    x = torch.zeros(1, 4096, dtype=torch.bfloat16)
    q = torch.zeros(64, 2048, dtype=torch.uint8)
    s = torch.ones(64, 32)
    assert not ri.ring_int4_ok(x, q, s, 128, 16)
    with pytest.raises(ValueError, match="ring_int4_gemv takes one bfloat16 row"):
        ri.ring_int4_gemv(x, q, s)


@pytest.mark.parametrize("k", [4096, 14336, 2048])
def test_compiles_for_sm90(k):
    n_, block_k, warps, stages, _ = ri.ring_int4_config(4096, k)
    ch = block_k // 128
    types = {"w_ptr": "*i32", "s_ptr": "*fp32", "part_ptr": "*fp32", "count_ptr": "*i32"}
    aligned = {"x_ptr", "w_ptr", "s_ptr", "bias_ptr", "y_ptr", "part_ptr", "N", "K"}
    (got,) = compile_sm90([(ri._ring_int4_kernel,
                            {"HAS_BIAS": True, "CH": ch, "STEPS": k // block_k, "STAGES": stages,
                             "MAX_SEGS": 3, "PDL": 1, "EARLY": stages - 1}, types, aligned)],
                          num_warps=warps)
    ring = stages * (ch * 1024 + 16 * ch * 4)
    assert ring + 2 * k <= got["shared"] <= 112 * 1024  # two programs an SM
    ptx = got["ptx"]
    # a thread's chunks (CH / 4) x 4 words x 2 mma steps
    assert ptx.count("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == ch // 4 * 4 * 2
    # the weights' 16-byte runs: CH KB a unit over 128 threads, each issue of the ring
    runs = re.findall(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 0x10,", ptx)
    assert len(runs) >= ch * 1024 // 128 // 16
    assert "griddepcontrol.wait" in ptx and "lop3.b32" in ptx
