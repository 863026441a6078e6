"""Prototype: where an fp8 KV cache's decode attention spends its time, and what other operand
paths and program shapes give (one partition per sequence, no window; 1000 sequences).

The engine's fp8 decode kernel widens the cached e4m3 values to float16 in registers and moves
the values into the matrix operand through shared memory: at 1000 x 192 it read 2.1 TB/s of fp8
bytes where the bf16 kernel reads 3.9 TB/s (ncu, run-s). Every variant is checked against
paged_attention_ref. Results: benchmarks/h200-quant/README.md, run-t.

``_proto_kernel`` (1000 x 192):
  K: widen (the engine's PTX widening) | own (Triton's conversion) | mma8 (e4m3 dots through
     wgmma, 64 rows and 4 warps, q split into two e4m3 parts, hi + lo / 16)
  V: widen (engine) | t-own / t-widen / t-mma8: values stored transposed per cache block
     ([block, kv head, dim, slot]) and read as [block, dim, slot] then permuted | t2-widen: the
     same layout read as a 2-D tile of words [dim, 4 slots], which widens straight into the
     operand (no shared-memory transposition; 22.8 KB of shared memory instead of 39)
``_proto_heads_kernel``: several kv heads of a sequence per program, one loop per head or one
flat loop over (head, tile).
``_proto_swap_kernel``: the scores as K Q^T (keys the dot's wide operand): e4m3 keys into wgmma
with q split hi + lo, or keys widened to float16 (K_F16; what the engine's KEYS_WIDE became),
with P V as the engine's or transposed too (SWAP_PV). --swap-only times these (run-u).
Without --prototype-only it also times the engine's kernel (decode_attention._paged_decode) with
launch
settings (tiles, maxnreg, late or early values) at 128 / 192 / 256 keys, and at small batches.

    PYTHONPATH=. python benchmarks/kernels/proto_fp8_decode.py [--compile-only] [--prototype-only]
        [--engine-only] [--swap-only] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))
from kiln.kernels.attention_tiles import (_LOG2E, _NEG_START, _fp8_dot_q, _widen_fp8,  # noqa: E402
                                          _widened_tile)

K_MODES = {"widen": 0, "own": 1, "mma8": 2}
V_MODES = {"widen": 0, "t-own": 1, "t-widen": 2, "t-mma8": 3, "t2-widen": 4}


@triton.jit
def _split_e4m3(x, scale):
    """x (float32) / scale -> (hi, lo) e4m3 with x / scale ~ hi + lo / 16."""
    y = x / scale
    hi = y.to(tl.float8e4nv)
    lo = ((y - hi.to(tl.float32)) * 16.0).to(tl.float8e4nv)
    return hi, lo


@triton.jit
def _proto_kernel(q_ptr, cache_ptr, vt_ptr, block_tables_ptr, seq_lens_ptr, out_ptr,
                  q_tok_stride, q_head_stride, cache_kv_stride, cache_block_stride,
                  cache_slot_stride, cache_head_stride, vt_block_stride, vt_head_stride,
                  block_table_stride, qk_scale, group,
                  BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                  BLOCK_N: tl.constexpr, K_MODE: tl.constexpr, V_MODE: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    g = tl.arange(0, BLOCK_G)
    heads = kv_head * group + g
    row_ok = g < group
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + seq.to(tl.int64) * q_tok_stride + heads[:, None] * q_head_stride
                + dims[None, :], mask=row_ok[:, None], other=0.0)
    if K_MODE == 2:
        q32 = q.to(tl.float32)
        q_amax = tl.maximum(tl.max(tl.abs(q32), axis=1), 1e-30)
        q_scale = q_amax / 448.0
        q_hi, q_lo = _split_e4m3(q32, q_scale[:, None])
    else:
        q = _fp8_dot_q(q)
    m = tl.full([BLOCK_G], _NEG_START, tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    row = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    for start in range(0, seq_len, BLOCK_N):
        toks = start + tl.arange(0, BLOCK_N)
        valid = toks < seq_len
        blocks = tl.load(row + toks // BLOCK_SIZE, mask=valid).to(tl.int64)
        offs = blocks * cache_block_stride + (toks % BLOCK_SIZE) * cache_slot_stride \
            + kv_head * cache_head_stride
        if K_MODE == 0:
            k = _widen_fp8(tl.load((cache_ptr + offs).to(tl.pointer_type(tl.int32))[:, None]
                                   + tl.arange(0, HEAD_DIM // 4)[None, :], mask=valid[:, None],
                                   other=0))
            s = tl.dot(q, tl.trans(k))
        elif K_MODE == 1:
            k = tl.load(cache_ptr + offs[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k.to(tl.float16)))
        else:
            k = tl.load(cache_ptr + offs[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
            kt = tl.trans(k)
            s = (tl.dot(q_hi, kt) + tl.dot(q_lo, kt) * 0.0625) * q_scale[:, None]
        s = s * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        if V_MODE == 4:
            # transposed values as a 2-D tile of words [dim, word]: a word holds 4 slots of one
            # dim, so the widened tile is [dim, token] in memory order, keys along the rows
            wt = start + 4 * tl.arange(0, BLOCK_N // 4)
            wblocks = tl.load(row + wt // BLOCK_SIZE, mask=wt < seq_len).to(tl.int64)
            wptr = (vt_ptr + wblocks * vt_block_stride + kv_head * vt_head_stride
                    + wt % BLOCK_SIZE).to(tl.pointer_type(tl.int32))
            wok = (wt < seq_len)[None, :] & (dims >= 0)[:, None]
            vt = _widen_fp8(tl.load(wptr[None, :] + (dims * (BLOCK_SIZE // 4))[:, None], mask=wok,
                                    other=0))
            pv = tl.dot(p.to(tl.float16), tl.trans(vt))
        elif V_MODE == 0:
            v = _widen_fp8(tl.load((cache_ptr + cache_kv_stride + offs).to(tl.pointer_type(tl.int32))[:, None]
                                   + tl.arange(0, HEAD_DIM // 4)[None, :], mask=valid[:, None],
                                   other=0))
            pv = tl.dot(p.to(tl.float16), v)
        else:
            # transposed values, read per cache block ([blocks of the tile, dim, slot], slots
            # contiguous) and permuted to [dim, token]; tokens past the context are zeroed
            # after the (unmasked, vectorized) read
            NB: tl.constexpr = BLOCK_N // BLOCK_SIZE
            btoks = start + tl.arange(0, NB) * BLOCK_SIZE
            vblocks = tl.load(row + btoks // BLOCK_SIZE, mask=btoks < seq_len).to(tl.int64)
            base = vblocks * vt_block_stride + kv_head * vt_head_stride
            tok_ok = tl.reshape(tl.permute(((btoks[:, None] + tl.arange(0, BLOCK_SIZE)[None, :])
                                            < seq_len)[:, None, :] & (dims >= 0)[None, :, None],
                                           (1, 0, 2)), (HEAD_DIM, BLOCK_N))
            if V_MODE == 2:
                WB: tl.constexpr = BLOCK_SIZE // 4
                wptr = (vt_ptr + base).to(tl.pointer_type(tl.int32))[:, None, None] \
                    + (dims * WB)[None, :, None] + tl.arange(0, WB)[None, None, :]
                words = tl.reshape(tl.permute(tl.load(wptr), (1, 0, 2)), (HEAD_DIM, BLOCK_N // 4))
                vt = tl.where(tok_ok, _widen_fp8(words), 0.0)
                pv = tl.dot(p.to(tl.float16), tl.trans(vt))
            else:
                vptr = vt_ptr + base[:, None, None] + (dims * BLOCK_SIZE)[None, :, None] \
                    + tl.arange(0, BLOCK_SIZE)[None, None, :]
                vt = tl.reshape(tl.permute(tl.load(vptr), (1, 0, 2)), (HEAD_DIM, BLOCK_N))
                vt = tl.where(tok_ok, vt, tl.zeros_like(vt))
                if V_MODE == 1:
                    pv = tl.dot(p.to(tl.float16), tl.trans(vt.to(tl.float16)))
                else:
                    p_hi, p_lo = _split_e4m3(p, 1.0 / 256.0)
                    v8 = tl.trans(vt)
                    pv = (tl.dot(p_hi, v8) + tl.dot(p_lo, v8) * 0.0625) * (1.0 / 256.0)
        acc = acc * alpha[:, None] + pv
        m = m_new
    out = acc / l[:, None]
    tl.store(out_ptr + seq.to(tl.int64) * q_tok_stride + heads[:, None] * q_head_stride
             + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _late_values_tile(q, m, l, acc, toks, seq_len, row, kv_head, cache_ptr, qk_scale,
                      cache_kv_stride, cache_block_stride, cache_slot_stride, cache_head_stride,
                      HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """One tile's online-softmax update, values read after the softmax (as the engine's LATE_V)."""
    valid = toks < seq_len
    blocks = tl.load(row + toks // BLOCK_SIZE, mask=valid).to(tl.int64)
    offs = blocks * cache_block_stride + (toks % BLOCK_SIZE) * cache_slot_stride \
        + kv_head * cache_head_stride
    k = _widened_tile(cache_ptr, offs, valid, True, HEAD_DIM)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    v = _widened_tile(cache_ptr + cache_kv_stride, offs, valid, True, HEAD_DIM)
    acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
    return m_new, l, acc


@triton.jit
def _proto_heads_kernel(q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr,
                        q_tok_stride, q_head_stride, cache_kv_stride, cache_block_stride,
                        cache_slot_stride, cache_head_stride, block_table_stride, qk_scale, group,
                        BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                        BLOCK_N: tl.constexpr, HPP: tl.constexpr, FLAT: tl.constexpr):
    """HPP kv heads of one sequence per program (engine widening, values read late): FLAT runs
    one loop over (head, tile) so the pipeliner can fetch the next head's first tile during the
    last tile of the head before; otherwise a loop over tiles per head."""
    seq = tl.program_id(0)
    head0 = tl.program_id(1) * HPP
    seq_len = tl.load(seq_lens_ptr + seq)
    g = tl.arange(0, BLOCK_G)
    row_ok = g < group
    dims = tl.arange(0, HEAD_DIM)
    row = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    q_base = q_ptr + seq.to(tl.int64) * q_tok_stride
    out_base = out_ptr + seq.to(tl.int64) * q_tok_stride
    if FLAT:
        n_tiles = tl.cdiv(seq_len, BLOCK_N)
        m = tl.full([BLOCK_G], _NEG_START, tl.float32)
        l = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        for it in range(0, HPP * n_tiles):
            h = it // n_tiles
            t = it - h * n_tiles
            kv_head = head0 + h
            heads = kv_head * group + g
            q = _fp8_dot_q(tl.load(q_base + heads[:, None] * q_head_stride + dims[None, :],
                                   mask=row_ok[:, None], other=0.0))
            first = t == 0
            m = tl.where(first, _NEG_START, m)
            l = tl.where(first, 0.0, l)
            acc = tl.where(first, 0.0, acc)
            m, l, acc = _late_values_tile(q, m, l, acc, t * BLOCK_N + tl.arange(0, BLOCK_N), seq_len,
                                          row, kv_head, cache_ptr, qk_scale, cache_kv_stride,
                                          cache_block_stride, cache_slot_stride, cache_head_stride,
                                          HEAD_DIM, BLOCK_SIZE)
            tl.store(out_base + heads[:, None] * q_head_stride + dims[None, :],
                     (acc / l[:, None]).to(out_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & (t == n_tiles - 1))
    else:
        for h in tl.static_range(HPP):
            kv_head = head0 + h
            heads = kv_head * group + g
            q = _fp8_dot_q(tl.load(q_base + heads[:, None] * q_head_stride + dims[None, :],
                                   mask=row_ok[:, None], other=0.0))
            m = tl.full([BLOCK_G], _NEG_START, tl.float32)
            l = tl.zeros([BLOCK_G], tl.float32)
            acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
            for start in range(0, seq_len, BLOCK_N):
                m, l, acc = _late_values_tile(q, m, l, acc, start + tl.arange(0, BLOCK_N), seq_len,
                                              row, kv_head, cache_ptr, qk_scale, cache_kv_stride,
                                              cache_block_stride, cache_slot_stride,
                                              cache_head_stride, HEAD_DIM, BLOCK_SIZE)
            tl.store(out_base + heads[:, None] * q_head_stride + dims[None, :],
                     (acc / l[:, None]).to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _proto_swap_kernel(q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr,
                       q_tok_stride, q_head_stride, cache_kv_stride, cache_block_stride,
                       cache_slot_stride, cache_head_stride, block_table_stride, qk_scale, group,
                       BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                       BLOCK_N: tl.constexpr, SWAP_PV: tl.constexpr, K_F16: tl.constexpr = False):
    """Keys as the wide operand: S^T = K Q^T with the e4m3 key tile straight from shared memory
    (BLOCK_N >= 64 rows, one warpgroup) and q split into two e4m3 parts (hi + lo / 16) as the
    narrow one, so keys are never widened. Values are widened after the softmax (the engine's
    late values); SWAP_PV keeps the transposed orientation for them too (acc^T += V^T P^T, the
    softmax reduced along the keys), otherwise S^T is transposed back and P V runs as the engine's."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    g = tl.arange(0, BLOCK_G)
    heads = kv_head * group + g
    row_ok = g < group
    dims = tl.arange(0, HEAD_DIM)
    q32 = tl.load(q_ptr + seq.to(tl.int64) * q_tok_stride + heads[:, None] * q_head_stride
                  + dims[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    q_scale = tl.maximum(tl.max(tl.abs(q32), axis=1), 1e-30) / 448.0
    q_hi, q_lo = _split_e4m3(q32, q_scale[:, None])
    qs = q_scale * qk_scale
    if K_F16:  # keys widened to float16 (the engine's widening), q float16: mma.sync operands
        q16 = tl.clamp(q32, -65504.0, 65504.0).to(tl.float16)
        qs = tl.full([BLOCK_G], 1.0, tl.float32) * qk_scale
    m = tl.full([BLOCK_G], _NEG_START, tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    if SWAP_PV:
        acc = tl.zeros([HEAD_DIM, BLOCK_G], tl.float32)
    else:
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    row = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    for start in range(0, seq_len, BLOCK_N):
        toks = start + tl.arange(0, BLOCK_N)
        valid = toks < seq_len
        blocks = tl.load(row + toks // BLOCK_SIZE, mask=valid).to(tl.int64)
        offs = blocks * cache_block_stride + (toks % BLOCK_SIZE) * cache_slot_stride \
            + kv_head * cache_head_stride
        if K_F16:
            k = _widened_tile(cache_ptr, offs, valid, True, HEAD_DIM)
            st = tl.dot(k, tl.trans(q16)) * qs[None, :]
        else:
            k = tl.load(cache_ptr + offs[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
            st = (tl.dot(k, tl.trans(q_hi)) + tl.dot(k, tl.trans(q_lo)) * 0.0625) * qs[None, :]
        if SWAP_PV:
            st = tl.where(valid[:, None], st, float("-inf"))
            m_new = tl.maximum(m, tl.max(st, axis=0))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(st - m_new[None, :])
            l = l * alpha + tl.sum(p, axis=0)
            v = _widened_tile(cache_ptr + cache_kv_stride, offs, valid, True, HEAD_DIM)
            acc = acc * alpha[None, :] + tl.dot(tl.trans(v), p.to(tl.float16))
        else:
            s = tl.where(valid[None, :], tl.trans(st), float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)
            v = _widened_tile(cache_ptr + cache_kv_stride, offs, valid, True, HEAD_DIM)
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        m = m_new
    out_base = out_ptr + seq.to(tl.int64) * q_tok_stride
    if SWAP_PV:
        tl.store(out_base + heads[None, :] * q_head_stride + dims[:, None],
                 (acc / l[None, :]).to(out_ptr.dtype.element_ty), mask=row_ok[None, :])
    else:
        tl.store(out_base + heads[:, None] * q_head_stride + dims[None, :],
                 (acc / l[:, None]).to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


# (SWAP_PV, block_n, warps, stages, K_F16); call 1 of run-u timed the e4m3 ones (K_F16 False)
SWAP_VARIANTS = [(True, 64, 4, 2, False), (True, 64, 4, 3, True), (True, 64, 4, 2, True),
                 (False, 64, 4, 3, True), (False, 64, 2, 3, True), (False, 32, 2, 3, True),
                 (True, 64, 2, 3, True)]


def launch_swap(q, cache, meta, qk_scale, swap_pv, block_n=64, num_warps=4, num_stages=3,
                k_f16=False):
    _, _, block_size, hk, head_dim = cache.shape
    out = torch.empty_like(q)
    group = q.shape[1] // hk
    _proto_swap_kernel[(meta.num_seqs, hk)](
        q, cache, meta.block_tables, meta.seq_lens, out, q.stride(0), q.stride(1), cache.stride(0),
        cache.stride(1), cache.stride(2), cache.stride(3), meta.block_tables.stride(0), qk_scale,
        group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, SWAP_PV=swap_pv, K_F16=k_f16, num_warps=num_warps,
        num_stages=num_stages)
    return out


# (heads per program, flat loop, block_n, warps, stages)
HEAD_VARIANTS = [(1, False, 64, 2, 3), (2, False, 64, 2, 3), (4, False, 64, 2, 3),
                 (8, False, 64, 2, 3), (1, True, 64, 2, 3), (2, True, 64, 2, 3),
                 (4, True, 64, 2, 3), (8, True, 64, 2, 3), (2, True, 64, 2, 5),
                 (4, True, 64, 2, 5), (8, True, 64, 2, 5), (4, True, 32, 2, 3),
                 (4, True, 32, 2, 5), (8, True, 32, 2, 5)]


def launch_heads(q, cache, meta, qk_scale, hpp, flat, block_n=64, num_warps=2, num_stages=3):
    _, _, block_size, hk, head_dim = cache.shape
    out = torch.empty_like(q)
    group = q.shape[1] // hk
    _proto_heads_kernel[(meta.num_seqs, hk // hpp)](
        q, cache, meta.block_tables, meta.seq_lens, out, q.stride(0), q.stride(1), cache.stride(0),
        cache.stride(1), cache.stride(2), cache.stride(3), meta.block_tables.stride(0), qk_scale,
        group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, HPP=hpp, FLAT=flat, num_warps=num_warps,
        num_stages=num_stages)
    return out


def transposed_values(cache: torch.Tensor) -> torch.Tensor:
    """The value half of a [2, blocks, slots, kv heads, dim] cache as [blocks, kv heads, dim, slots]."""
    return cache[1].permute(0, 2, 3, 1).contiguous()


# (K mode, V mode, BLOCK_G, block_n, warps, stages); e4m3 dots need wgmma: 64 rows, 4 warps.
VARIANTS = [("widen", "widen", 16, 64, 2, 3, 0), ("widen", "t2-widen", 16, 64, 2, 3, 0),
            ("widen", "t2-widen", 16, 64, 2, 3, 168), ("widen", "t2-widen", 16, 64, 2, 2, 0),
            ("widen", "t2-widen", 16, 32, 2, 3, 0), ("widen", "t2-widen", 16, 32, 2, 3, 128),
            ("widen", "t2-widen", 16, 64, 4, 3, 0), ("widen", "t2-widen", 16, 64, 4, 2, 0),
            ("widen", "t2-widen", 16, 64, 4, 3, 128), ("widen", "t2-widen", 16, 128, 4, 2, 0),
            ("widen", "t2-widen", 16, 128, 8, 3, 0), ("widen", "t2-widen", 16, 32, 2, 5, 0)]


# The engine's kernel with launch settings (tuning of decode_attention._paged_decode) at 1000 x ctx.
ENGINE = [({"late_v": False}, "early-v"), ({}, "default"), ({"keys_wide": True}, "keys-wide"),
          ({"keys_wide": True, "late_v": False}, "keys-wide early-v"),
          ({"keys_wide": True, "block_n": 64, "num_warps": 4, "num_stages": 3}, "keys-wide w4 s3"),
          ({"keys_wide": True, "block_n": 32, "num_warps": 2, "num_stages": 3}, "keys-wide N32"),
          ({"keys_wide": True, "block_n": 128, "num_warps": 4, "num_stages": 2}, "keys-wide N128 w4 s2"),
          ({"block_n": 64, "num_warps": 2, "num_stages": 2}, "s2"),
          ({"block_n": 64, "num_warps": 2, "num_stages": 3, "late_v": False, "maxnreg": 168},
           "early-v mr168"),
          ({"block_n": 32, "num_warps": 2, "num_stages": 3}, "N32"),
          ({"block_n": 32, "num_warps": 2, "num_stages": 3, "maxnreg": 128}, "N32 mr128"),
          ({"block_n": 32, "num_warps": 2, "num_stages": 5}, "N32 s5"),
          ({"block_n": 64, "num_warps": 4, "num_stages": 2}, "w4 s2"),
          ({"block_n": 64, "num_warps": 4, "num_stages": 3}, "w4 s3")]
# Smaller batches (the dispatcher's partitions, max_seq_len as a decode graph fixes it).
SMALL = [(1, 400), (1, 2000), (32, 1000), (128, 512)]


def launch(q, cache, vt, meta, qk_scale, k_mode, v_mode, block_g=16, block_n=64, num_warps=2,
           num_stages=3, maxnreg=0):
    _, _, block_size, hk, head_dim = cache.shape
    out = torch.empty_like(q)
    group = q.shape[1] // hk
    _proto_kernel[(meta.num_seqs, hk)](
        q, cache, vt, meta.block_tables, meta.seq_lens, out,
        q.stride(0), q.stride(1), cache.stride(0), cache.stride(1), cache.stride(2),
        cache.stride(3), vt.stride(0), vt.stride(1), meta.block_tables.stride(0), qk_scale, group,
        BLOCK_G=max(block_g, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_N=block_n, K_MODE=K_MODES[k_mode], V_MODE=V_MODES[v_mode],
        num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg else {}))
    return out


def compile_only():
    """sm_90 SASS statistics of each variant (no GPU needed; SASS_DIR as compile_sm90's)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from compile_sm90 import report  # noqa: PLC0415
    for swap, bn, nw, ns, kf in SWAP_VARIANTS:
        report(f"swap pv={swap} N{bn} w{nw} s{ns} k16={kf}", _proto_swap_kernel,
               {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_N": bn, "SWAP_PV": swap,
                "K_F16": kf, "_ptrs": {"cache_ptr": "*fp8e4nv"}}, "bf16", nw, ns)
    for hpp, flat, bn, nw, ns in HEAD_VARIANTS:
        report(f"heads {hpp} flat={flat} N{bn} w{nw} s{ns}", _proto_heads_kernel,
               {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_N": bn, "HPP": hpp,
                "FLAT": flat, "_ptrs": {"cache_ptr": "*fp8e4nv"}}, "bf16", nw, ns)
    for km, vm, bg, bn, nw, ns, _ in VARIANTS:
        report(f"K={km} V={vm} G{bg} N{bn} w{nw} s{ns}", _proto_kernel,
               {"BLOCK_G": bg, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_N": bn,
                "K_MODE": K_MODES[km], "V_MODE": V_MODES[vm],
                "_ptrs": {"cache_ptr": "*fp8e4nv", "vt_ptr": "*fp8e4nv"}}, "bf16", nw, ns)


def _record(rows, name, calls, check=None, ref=None, nbytes=0, bytes_key="fp8_TBps"):
    """Time `calls` (time_calls, 15 reps) and append the row {variant, us[, bytes_key], rel_err}:
    rel_err of check()'s output against ref when check is given. An exception becomes the row's
    error. The row is printed as it is added."""
    from bench_kernels import time_calls  # noqa: PLC0415
    try:
        err = None
        if check is not None:
            out = check()
            err = float((out.float() - ref).norm() / ref.norm())
        us = time_calls(calls, reps=15)
        row = {"variant": name, "us": round(us, 2)}
        if nbytes:
            row[bytes_key] = round(nbytes / us / 1e6, 2)
        if err is not None:
            row["rel_err"] = err
    except Exception as exc:  # noqa: BLE001
        row = {"variant": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
    rows.append(row)
    print(json.dumps(row), flush=True)


def _case(batch, ctx, fp8=True):
    """paged_setup's sets at batch x ctx (fp8 cache unless fp8 is false), and the reference output
    of the first set: (cache, sets, ref)."""
    from bench_kernels import HEAD_DIM, n_sets, paged_setup  # noqa: PLC0415
    from kiln.kernels import attention_ref  # noqa: PLC0415
    cache, sets = paged_setup(batch, ctx, 1, n_sets(batch * ctx * 8 * HEAD_DIM * 2))
    if fp8:
        cache = cache.to(torch.float8_e4m3fn)
    q0, m0 = sets[0]
    return cache, sets, attention_ref.paged_attention_ref(q0, cache, m0, HEAD_DIM ** -0.5).float()


def _engine_calls(cache, sets, tuning=None):
    """One decode_attention._paged_decode call per set, each into its own output."""
    from bench_kernels import HEAD_DIM  # noqa: PLC0415
    from kiln.kernels import decode_attention  # noqa: PLC0415
    qk_scale = HEAD_DIM ** -0.5 * _LOG2E
    outs = [torch.empty_like(q) for q, _ in sets]
    return [lambda q=q, m=m, o=o: decode_attention._paged_decode(q, cache, m, o, qk_scale, 0, tuning)
            for (q, m), o in zip(sets, outs)], outs


def _write(rows, path):
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--prototype-only", action="store_true", help="skip the engine's launches")
    ap.add_argument("--engine-only", action="store_true",
                    help="only the engine's kernel with launch settings at 1000 sequences")
    ap.add_argument("--swap-only", action="store_true",
                    help="with --prototype-only: the keys-as-wide-operand kernels and the engine's")
    args = ap.parse_args()
    if args.compile_only:
        compile_only()
        return
    from bench_kernels import HEAD_DIM, n_sets, paged_setup  # noqa: PLC0415
    from kiln.kernels import attention  # noqa: PLC0415
    qk_scale = HEAD_DIM ** -0.5 * _LOG2E
    rows = []
    for ctx in () if args.prototype_only else (192, 256, 128):
        for kv in ("fp8", "bf16"):
            cache, sets, ref = _case(1000, ctx, kv == "fp8")
            for tuning, label in ENGINE if kv == "fp8" else ENGINE[1:4]:
                calls, outs = _engine_calls(cache, sets, dict(tuning, partitions=1))
                _record(rows, f"engine {kv} 1000x{ctx} {label}", calls,
                        lambda c=calls[0], o=outs[0]: (c(), o)[1], ref)
            del cache, sets
            torch.cuda.empty_cache()
    import dataclasses  # noqa: PLC0415
    for batch, ctx in () if args.prototype_only else SMALL:
        cache, sets = paged_setup(batch, ctx, 1, n_sets(batch * ctx * 8 * HEAD_DIM * 2))
        cache = cache.to(torch.float8_e4m3fn)
        sets = [(q, dataclasses.replace(m, max_seq_len=8192)) for q, m in sets]
        for tun in ({"late_v": False}, {"late_v": True}, {"keys_wide": True},
                    {"keys_wide": True, "late_v": True}):
            _record(rows, f"engine fp8 {batch}x{ctx} graph {json.dumps(tun)}",
                    _engine_calls(cache, sets, tun)[0])
        del cache, sets
    if args.engine_only:
        _write(rows, args.json)
        return
    batch, ctx = 1000, 192
    nbytes = batch * ctx * 8 * HEAD_DIM * 2
    cache, sets, ref = _case(batch, ctx)
    _record(rows, f"engine fp8 {batch}x{ctx} default", _engine_calls(cache, sets)[0])
    # the same fp8 bytes as a bf16 cache of half the context: what bandwidth alone would give
    cache16, sets16 = paged_setup(batch, ctx // 2, 1, n_sets(nbytes))
    _record(rows, f"engine bf16 cache, {ctx // 2} keys (same bytes)",
            [lambda q=q, m=m: attention.paged_attention(q, cache16, m, HEAD_DIM ** -0.5)
             for q, m in sets16], nbytes=nbytes, bytes_key="TBps")
    for sctx in (192, 128, 256):
        if sctx != ctx:
            cache, sets, ref = _case(batch, sctx)
            _record(rows, f"engine fp8 1000x{sctx} default", _engine_calls(cache, sets)[0])
        q0, m0 = sets[0]
        for swap, bn, nw, ns, kf in SWAP_VARIANTS:
            _record(rows, f"swap pv={swap} N{bn} w{nw} s{ns} k16={kf} 1000x{sctx}",
                    [lambda q=q, m=m: launch_swap(q, cache, m, qk_scale, swap, bn, nw, ns, kf)
                     for q, m in sets],
                    lambda: launch_swap(q0, cache, m0, qk_scale, swap, bn, nw, ns, kf), ref)
    if args.swap_only:
        _write(rows, args.json)
        return
    cache, sets, ref = _case(batch, ctx)
    vt = transposed_values(cache)
    q0, m0 = sets[0]
    for km, vm, bg, bn, nw, ns, mr in VARIANTS:
        _record(rows, f"K={km} V={vm} G{bg} N{bn} w{nw} s{ns}" + (f" mr{mr}" if mr else ""),
                [lambda q=q, m=m: launch(q, cache, vt, m, qk_scale, km, vm, bg, bn, nw, ns, mr)
                 for q, m in sets],
                lambda: launch(q0, cache, vt, m0, qk_scale, km, vm, bg, bn, nw, ns, mr), ref,
                nbytes=nbytes)
    for hctx in (128, 192, 256):
        cache, sets, ref = _case(1000, hctx)
        q0, m0 = sets[0]
        _record(rows, f"engine fp8 1000x{hctx} default", _engine_calls(cache, sets)[0])
        for hpp, flat, bn, nw, ns in HEAD_VARIANTS:
            _record(rows, f"heads {hpp} flat={flat} N{bn} w{nw} s{ns} 1000x{hctx}",
                    [lambda q=q, m=m: launch_heads(q, cache, m, qk_scale, hpp, flat, bn, nw, ns)
                     for q, m in sets],
                    lambda: launch_heads(q0, cache, m0, qk_scale, hpp, flat, bn, nw, ns), ref)
    _write(rows, args.json)


if __name__ == "__main__":
    main()
