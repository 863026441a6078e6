"""The Gluon int4 GEMV (kiln.kernels.int4_gluon) without a GPU: it compiles for sm_90 (so its
unpacked weights and x become the mma operands without moving data: the kernel asks for that with
assert_trivial conversions, which fail at compile time otherwise), and its k permutation,
replayed in numpy step by step as the kernel builds the operands, gives the reference product.
Its results on the GPU: tests/gpu/test_int4_gluon_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gluon_sm90 import compile_sm90

from kiln.kernels import int4_gluon
from kiln.kernels.quant_matmul import int4_wo_linear, int4_wo_linear_ref

# (rows, ring slots, K splits, bias, x dtype)
TILES = [(16, 8, 4, False, "bf16"), (32, 6, 1, True, "bf16"), (64, 4, 1, False, "bf16"),
         (16, 2, 3, True, "bf16"), (16, 12, 1, True, "fp16"), (32, 6, 2, False, "fp16")]


def test_int4_mma_gemv_compiles_for_sm90_with_trivial_operand_layouts():
    fn = int4_gluon.int4_mma_gemv_kernel
    # 16-divisible, as the 8B shapes' launches give them: everything but the row count
    aligned = set(fn.arg_names) - {"M"}
    compiled = compile_sm90([
        (fn, {"ROWS": rows, "STAGES": stages, "SPLIT": split, "HAS_BIAS": has_bias, "PDL": True},
         {"x_ptr": f"*{dt}", "w_ptr": "*u8", "s_ptr": "*fp32", "bias_ptr": f"*{dt}",
          "out_ptr": f"*{dt}", "part_ptr": "*fp32", "lock_ptr": "*i32"}, aligned)
        for rows, stages, split, has_bias, dt in TILES])
    kernels = {f"{rows},{stages},{split},{has_bias},{dt}": k
               for (rows, stages, split, has_bias, dt), k in zip(TILES, compiled)}
    for rows, stages, split, has_bias, dt in TILES:
        k = kernels[f"{rows},{stages},{split},{has_bias},{dt}"]
        assert k["shared"] == stages * rows * 64  # one group's 64 bytes a row per ring slot
        ptx = k["ptx"]
        if dt == "bf16":
            assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx
            assert "fma.rn.bf16x2" in ptx and "f16x2" not in ptx.replace("bf16x2", "")
        else:
            assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in ptx
            assert "sub.f16x2" in ptx and "fma.rn.f16x2" in ptx and "bf16" not in ptx
        assert "lop3.b32" in ptx
        # a split K: partials, an acq_rel arrival count, the last program's reads from L2
        splits = "atom.global.gpu.acq_rel.add" in ptx and "ld.global.cg" in ptx
        assert splits == (split > 1), (rows, stages, split)
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


def _run_ptx(asm: str, word: int, half: str) -> list[float]:
    """A small interpreter for the unpacking asm's PTX (mov, shr, lop3 0xea, packed sub/fma):
    the eight outputs ($0..$7) for input word $8, as floats of `half` (bf16 or f16)."""
    ft = torch.bfloat16 if half == "bf16" else torch.float16

    def halves(v):
        return torch.tensor([v & 0xFFFF, v >> 16], dtype=torch.int32).to(torch.int16).view(ft)

    def pack(t):
        lo, hi = (int(b) & 0xFFFF for b in t.view(torch.int16).tolist())
        return lo | (hi << 16)

    regs, outs = {"$8": word}, {}
    val = (lambda a: int(a, 16) if a.startswith("0x") else
           int(a) if a.isdigit() else regs[a])
    for stmt in asm.replace("\n", " ").split(";"):
        stmt = stmt.strip(" {}")
        if not stmt or stmt.startswith(".reg"):
            continue
        op, args = stmt.split(None, 1)
        if op == "mov.b32" and args.startswith("{"):
            lo, hi, src = (a.strip(" {}") for a in args.replace("}", ",").split(",") if a.strip())
            outs[lo], outs[hi] = halves(regs[src]).float().tolist()
            continue
        a = [x.strip() for x in args.split(",")]
        if op == "mov.b32":
            regs[a[0]] = val(a[1])
        elif op in ("shr.b32", "shr.u32"):
            regs[a[0]] = val(a[1]) >> val(a[2])
        elif op == "lop3.b32":
            assert a[4].lower() == "0xea"  # (a & b) | c
            regs[a[0]] = (val(a[1]) & val(a[2])) | val(a[3])
        elif op in (f"sub.{half}x2",):
            regs[a[0]] = pack((halves(val(a[1])).double() - halves(val(a[2])).double()).to(ft))
        elif op == f"fma.rn.{half}x2":
            r = halves(val(a[1])).double() * halves(val(a[2])).double() + halves(val(a[3])).double()
            regs[a[0]] = pack(r.to(ft))
        else:
            raise AssertionError(f"unknown instruction {op}")
    return [outs[f"${i}"] for i in range(8)]


@pytest.mark.parametrize("half", ["bf16", "f16"])
def test_unpacking_asm_gives_each_nibble_minus_8(half):
    """The asm strings themselves, interpreted: output 2 s + e is nibble s + 4 e minus 8, for
    every nibble value in every position."""
    asm = (int4_gluon._INT4X8_BF16_ASM if half == "bf16" else int4_gluon._INT4X8_F16_ASM).value
    gen = torch.Generator().manual_seed(0)
    words = [0, 0xFFFFFFFF, 0x76543210, 0x89ABCDEF, 0xFEDCBA98]
    words += torch.randint(0, 2 ** 32, (200,), generator=gen, dtype=torch.int64).tolist()
    for w in words:
        want = [((w >> (4 * (s + 4 * e))) & 15) - 8 for s in range(4) for e in range(2)]
        assert _run_ptx(asm, w, half) == want, hex(w)


def test_default_tiles_of_the_8b_layers():
    """About six programs an SM on a 132-SM H200, each K split at least four groups."""
    sms = 132
    assert int4_gluon.default_tile(6144, 4096, sms) == (16, 8, 3)      # qkv
    assert int4_gluon.default_tile(4096, 4096, sms) == (16, 8, 4)      # o
    assert int4_gluon.default_tile(28672, 4096, sms) == (32, 6, 1)     # gate_up
    assert int4_gluon.default_tile(4096, 14336, sms) == (16, 8, 4)     # down
    assert int4_gluon.default_tile(64, 256, sms) == (16, 8, 1)         # too few groups to split
