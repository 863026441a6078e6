"""Prototype: decode attention over an fp8 cache with the next tile's keys prefetched into
registers by the program itself (no pipeliner stages), at large batches (one partition per
sequence and kv head, no window).

The engine's large-batch fp8 decode tile (64 keys, 2 warps, 3 stages; keys the dot's wide
operand, values after the softmax) copies each tile's keys and values into shared memory with
cp.async and waits for them at the top of the next tile (sm_90 SASS): a whole memory latency per
tile that the program itself does not overlap. Triton's five-stage pipeline double-buffers them,
but doubles the shared memory and so halves the programs per SM. Here the loads are plain
register loads issued a tile (keys) or a softmax (values) ahead:

  PIPE 0: no prefetch (the loads where the tile uses them; num_stages 1), a baseline;
  PIPE 1: this tile's values and the next tile's keys are loaded at the top of the tile, the
          block-table entries two tiles ahead, so no load waits on another.

TAIL: a last tile of at most BLOCK_N / 2 keys runs as a half tile (every other tile is whole).

    PYTHONPATH=. python benchmarks/kernels/proto_decode_pipe.py [--compile-only] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(__file__))
from kiln.kernels.attention_tiles import (_LOG2E, _NEG_START, _fp8_dot_q, _kv_offsets,  # noqa: E402
                                          _widen_fp8, _words)


@triton.jit
def _tile(q, m, l, acc, kw, vw, valid, qk_scale):
    """Online-softmax update with one tile's key and value words (int32, four e4m3 codes each)."""
    k = _widen_fp8(kw)
    s = tl.trans(tl.dot(k, tl.trans(q))) * qk_scale
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    v = _widen_fp8(vw)
    acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
    return m_new, l, acc


@triton.jit
def _pipe_kernel(q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr,
                 q_tok_stride, q_head_stride, cache_kv_stride, cache_block_stride,
                 cache_slot_stride, cache_head_stride, block_table_stride, qk_scale, group,
                 BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                 BLOCK_N: tl.constexpr, PIPE: tl.constexpr, TAIL: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    g = tl.arange(0, BLOCK_G)
    heads = kv_head * group + g
    row_ok = g < group
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + seq.to(tl.int64) * q_tok_stride + heads[:, None] * q_head_stride
                + dims[None, :], mask=row_ok[:, None], other=0.0)
    q = _fp8_dot_q(q)
    m = tl.full([BLOCK_G], _NEG_START, tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    row = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    v_base = cache_ptr + cache_kv_stride
    main_hi = seq_len
    if TAIL:
        # whole tiles up to the last BLOCK_N / 2 keys or fewer; those run as one half tile
        rem = seq_len % BLOCK_N
        main_hi = tl.where((rem > 0) & (rem <= BLOCK_N // 2), seq_len - rem, seq_len)
    ar = tl.arange(0, BLOCK_N)
    if PIPE == 0:
        for start in range(0, main_hi, BLOCK_N):
            toks = start + ar
            valid = toks < seq_len
            offs = _kv_offsets(row, toks, valid, kv_head, cache_block_stride, cache_slot_stride,
                               cache_head_stride, BLOCK_SIZE)
            kw = tl.load(_words(cache_ptr, offs, HEAD_DIM), mask=valid[:, None], other=0)
            vw = tl.load(_words(v_base, offs, HEAD_DIM), mask=valid[:, None], other=0)
            m, l, acc = _tile(q, m, l, acc, kw, vw, valid, qk_scale)
    else:
        valid = ar < main_hi
        offs = _kv_offsets(row, ar, valid, kv_head, cache_block_stride, cache_slot_stride,
                           cache_head_stride, BLOCK_SIZE)
        kw = tl.load(_words(cache_ptr, offs, HEAD_DIM), mask=valid[:, None], other=0)
        nvalid = ar + BLOCK_N < main_hi
        noffs = _kv_offsets(row, ar + BLOCK_N, nvalid, kv_head, cache_block_stride,
                            cache_slot_stride, cache_head_stride, BLOCK_SIZE)
        for start in tl.range(0, main_hi, BLOCK_N, num_stages=1):
            vw = tl.load(_words(v_base, offs, HEAD_DIM), mask=valid[:, None], other=0)
            nkw = tl.load(_words(cache_ptr, noffs, HEAD_DIM), mask=nvalid[:, None], other=0)
            toks2 = start + 2 * BLOCK_N + ar
            valid2 = toks2 < main_hi
            offs2 = _kv_offsets(row, toks2, valid2, kv_head, cache_block_stride, cache_slot_stride,
                                cache_head_stride, BLOCK_SIZE)
            m, l, acc = _tile(q, m, l, acc, kw, vw, valid, qk_scale)
            kw = nkw
            offs = noffs
            valid = nvalid
            noffs = offs2
            nvalid = valid2
    if TAIL:
        HALF: tl.constexpr = BLOCK_N // 2
        for start in range(main_hi, seq_len, HALF):
            t_toks = start + tl.arange(0, HALF)
            t_valid = t_toks < seq_len
            t_offs = _kv_offsets(row, t_toks, t_valid, kv_head, cache_block_stride,
                                 cache_slot_stride, cache_head_stride, BLOCK_SIZE)
            t_kw = tl.load(_words(cache_ptr, t_offs, HEAD_DIM), mask=t_valid[:, None], other=0)
            t_vw = tl.load(_words(v_base, t_offs, HEAD_DIM), mask=t_valid[:, None], other=0)
            m, l, acc = _tile(q, m, l, acc, t_kw, t_vw, t_valid, qk_scale)
    l = tl.where(l > 0.0, l, 1.0)
    tl.store(out_ptr + seq.to(tl.int64) * q_tok_stride + heads[:, None] * q_head_stride
             + dims[None, :], (acc / l[:, None]).to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None])


def launch(q, cache, meta, qk_scale, pipe, tail=False, block_n=64, num_warps=2, num_stages=1,
           maxnreg=0):
    _, _, block_size, hk, head_dim = cache.shape
    out = torch.empty_like(q)
    group = q.shape[1] // hk
    _pipe_kernel[(meta.num_seqs, hk)](
        q, cache, meta.block_tables, meta.seq_lens, out, q.stride(0), q.stride(1),
        cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3),
        meta.block_tables.stride(0), qk_scale, group,
        BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_N=block_n, PIPE=pipe, TAIL=tail, num_warps=num_warps, num_stages=num_stages,
        **({"maxnreg": maxnreg} if maxnreg else {}))
    return out


# (PIPE, TAIL, block_n, warps, stages, maxnreg or 0)
VARIANTS = [(0, False, 64, 2, 1, 0), (0, False, 64, 2, 3, 0), (1, False, 64, 2, 1, 0),
            (1, True, 64, 2, 1, 0), (1, False, 64, 2, 1, 200), (1, False, 64, 2, 1, 168),
            (1, False, 64, 4, 1, 0), (1, True, 64, 4, 1, 0), (1, False, 32, 2, 1, 0),
            (1, False, 32, 4, 1, 0), (1, False, 128, 4, 1, 0), (1, False, 128, 8, 1, 0),
            (0, True, 64, 2, 3, 0)]


def compile_only():
    """sm_90 SASS statistics of each variant (no GPU needed; SASS_DIR as compile_sm90's)."""
    from compile_sm90 import report  # noqa: PLC0415
    for pipe, tail, bn, nw, ns, mr in VARIANTS:
        if mr:
            continue  # compile_sm90 takes no register cap
        report(f"pipe{pipe} tail={tail} N{bn} w{nw} s{ns}", _pipe_kernel,
               {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_N": bn, "PIPE": pipe,
                "TAIL": tail, "_ptrs": {"cache_ptr": "*fp8e4nv"}}, "bf16", nw, ns)


def mixed_setup(batch, lo, hi, copies, fp8=True):
    """`copies` sets of `batch` sequences whose contexts run evenly over lo..hi (one new token
    each, as a decode step of a batch that started together gives them), fragmented blocks."""
    from bench_kernels import BLOCK, HEAD_DIM, HK, HQ  # noqa: PLC0415
    from kiln.layers.forward_context import build_attention_metadata  # noqa: PLC0415
    lens = [lo + (b * (hi - lo + 1)) // batch for b in range(batch)]
    per = [-(-n // BLOCK) for n in lens]
    num_blocks = sum(per) * copies
    cache = torch.randn(2, num_blocks, BLOCK, HK, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    if fp8:
        cache = cache.to(torch.float8_e4m3fn)
    perm = torch.randperm(num_blocks).tolist()
    sets, at = [], 0
    for _ in range(copies):
        seqs = []
        for n, k in zip(lens, per):
            seqs.append((n - 1, 1, perm[at:at + k]))
            at += k
        meta = build_attention_metadata(seqs, BLOCK, device="cuda")
        sets.append((torch.randn(batch, HQ, HEAD_DIM, device="cuda", dtype=torch.bfloat16), meta))
    return cache, sets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--engine-only", action="store_true",
                    help="the engine's kernel and the no-prefetch prototype (3 stages) alone")
    args = ap.parse_args()
    if args.compile_only:
        compile_only()
        return
    from bench_kernels import HEAD_DIM, n_sets, paged_setup  # noqa: PLC0415
    from kiln.kernels import attention_ref  # noqa: PLC0415
    from proto_fp8_decode import _engine_calls, _record, _write  # noqa: PLC0415
    qk_scale = HEAD_DIM ** -0.5 * _LOG2E
    rows = []
    cases = [("1000x192", None), ("1000x129-256", (129, 256)), ("1000x256", None),
             ("1000x128", None), ("1000x193", None)]
    for label, span in cases:
        if span:
            cache, sets = mixed_setup(1000, span[0], span[1], 8)
        else:
            ctx = int(label.split("x")[1])
            cache, sets = paged_setup(1000, ctx, 1, n_sets(1000 * ctx * 8 * HEAD_DIM * 2))
            cache = cache.to(torch.float8_e4m3fn)
        q0, m0 = sets[0]
        ref = attention_ref.paged_attention_ref(q0, cache, m0, HEAD_DIM ** -0.5).float()
        calls, outs = _engine_calls(cache, sets, {"partitions": 1})
        _record(rows, f"engine {label}", calls, lambda c=calls[0], o=outs[0]: (c(), o)[1], ref)
        variants = [(0, False, 64, 2, 3, 0)] if args.engine_only else VARIANTS
        for pipe, tail, bn, nw, ns, mr in variants:
            _record(rows, f"pipe{pipe} tail={tail} N{bn} w{nw} s{ns} mr{mr} {label}",
                    [lambda q=q, m=m, c=cache: launch(q, c, m, qk_scale, pipe, tail, bn, nw, ns,
                                                      mr) for q, m in sets],
                    lambda c=cache: launch(q0, c, m0, qk_scale, pipe, tail, bn, nw, ns, mr), ref)
        del cache, sets
        torch.cuda.empty_cache()
    _write(rows, args.json)


if __name__ == "__main__":
    main()
