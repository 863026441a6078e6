"""The Gluon int4 GEMV (kiln.kernels.int4_gluon) without a GPU: it compiles for sm_90 (so its
unpacked weights and x become the mma operands without moving data: the kernel asks for that with
assert_trivial conversions, which fail at compile time otherwise), and its k permutation,
replayed in numpy step by step as the kernel builds the operands, gives the reference product.
Its results on the GPU: tests/gpu/test_int4_gluon_gpu.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kiln.kernels import int4_gluon
from kiln.kernels.quant_matmul import int4_wo_linear, int4_wo_linear_ref

_COMPILE = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from kiln.kernels import int4_gluon

out = {}
fn = int4_gluon.int4_mma_gemv_kernel
for rows, stages, has_bias in json.loads(sys.argv[1]):
    constexprs = {"ROWS": rows, "STAGES": stages, "HAS_BIAS": has_bias, "PDL": True}
    ptrs = {"x_ptr": "*bf16", "w_ptr": "*u8", "s_ptr": "*fp32", "bias_ptr": "*bf16",
            "out_ptr": "*bf16"}
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        signature[name] = ptrs.get(name, "i32")
        if name != "M":  # 16-divisible, as the 8B shapes' launches give them
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = GluonASTSource(fn, signature,
                         {(fn.arg_names.index(k),): v for k, v in constexprs.items()}, attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": 1, "num_stages": 1})
    out[f"{rows},{stages},{has_bias}"] = {"shared": kernel.metadata.shared,
                                          "ptx": kernel.asm["ptx"]}
print(json.dumps(out))
"""
TILES = [(16, 12, False), (32, 6, True), (64, 4, False), (16, 2, True)]


def test_int4_mma_gemv_compiles_for_sm90_with_trivial_operand_layouts():
    # In a fresh interpreter: this folder's conftest turns Triton's own helpers into interpreted
    # ones, which the compiler cannot take.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE, json.dumps(TILES)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    kernels = json.loads(done.stdout.strip().splitlines()[-1])
    for rows, stages, has_bias in TILES:
        k = kernels[f"{rows},{stages},{has_bias}"]
        assert k["shared"] == stages * rows * 64  # one group's 64 bytes a row per ring slot
        ptx = k["ptx"]
        assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx
        assert "sub.bf16x2" in ptx and "lop3.b32" in ptx
        assert "cp.async.cg.shared.global" in ptx and "griddepcontrol.wait" in ptx


def _join(a, b):
    """gl.join: a new last dim of size 2."""
    return np.stack([a, b], axis=-1)


def _a_operand(words):
    """int4_gluon._weights_operand in numpy: a group's words [rows, 16] (int64 holding uint32)
    -> A [rows, 128] of n - 8, as the asm and the joins, reshape and permute build it."""
    # the asm: output 2 s + e is the nibble at bits 4 s + 16 e, minus 8
    o = [((words >> (4 * s + 16 * e)) & 15) - 8 for s in range(4) for e in range(2)]
    w = _join(_join(_join(o[0], o[1]), _join(o[2], o[3])),
              _join(_join(o[4], o[5]), _join(o[6], o[7])))
    w = w.reshape(words.shape[0], *int4_gluon.W_SPLIT).transpose(int4_gluon.W_PERM)
    return w.reshape(words.shape[0], int4_gluon.GROUP)


def _b_operand(xg):
    """int4_gluon._x_operand in numpy: x rows [8, 128] of a group -> B [128, 8]."""
    x = xg.reshape(8, 4, 32).reshape(int4_gluon.X_SPLIT).transpose(int4_gluon.X_PERM)
    return x.reshape(int4_gluon.GROUP, 8)


@pytest.mark.parametrize("m", [1, 3, 8])
def test_permuted_operands_give_the_reference_product(m):
    gen = torch.Generator().manual_seed(m)
    n, k = 48, 384
    qweight = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
    scales = torch.rand(n, k // 128, generator=gen) * 0.05 + 0.005
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    words = qweight.numpy().view("<u4").astype(np.int64)           # [n, k // 8]
    xs = np.zeros((8, k))
    xs[:m] = x.float().numpy()
    acc = np.zeros((n, 8))
    for g in range(k // 128):
        a = _a_operand(words[:, 16 * g:16 * g + 16])
        b = _b_operand(xs[:, 128 * g:128 * g + 128])
        acc += (a @ b) * scales[:, g].double().numpy()[:, None]
    ref = (x.double() @ int4_wo_dequant(qweight, scales).T).numpy()  # [m, n]
    np.testing.assert_allclose(acc[:, :m].T, ref, rtol=1e-9, atol=1e-9)
    # and the module's float32 reference agrees
    np.testing.assert_allclose(int4_wo_linear_ref(x.float(), qweight, scales, 128).numpy(), ref,
                               rtol=1e-4, atol=1e-4)


def int4_wo_dequant(qweight, scales):
    """float64 dequantization of packed int4 (byte b: k = 2 b low nibble, 2 b + 1 high)."""
    q = torch.stack([(qweight & 15).double() - 8, (qweight >> 4).double() - 8], dim=-1)
    return q.reshape(qweight.shape[0], -1) * scales.double().repeat_interleave(128, dim=1)


def test_off_cuda_and_off_by_default(monkeypatch):
    monkeypatch.delenv("KILN_INT4_MMA", raising=False)
    assert not int4_gluon.int4_mma_enabled()
    monkeypatch.setenv("KILN_INT4_MMA", "1")
    assert int4_gluon.int4_mma_enabled()
    x = torch.randn(2, 256).to(torch.bfloat16)
    qweight = torch.randint(0, 256, (32, 128), dtype=torch.uint8)
    scales = torch.rand(32, 2) * 0.01
    assert not int4_gluon.int4_mma_ok(x, qweight, 128)  # a CPU tensor
    # the CPU dispatcher still takes the reference path with the switch on
    torch.testing.assert_close(int4_wo_linear(x, qweight, scales, 128),
                               int4_wo_linear_ref(x, qweight, scales, 128))
