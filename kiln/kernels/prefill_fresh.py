"""Causal attention of prompts with no cached prefix, reading K/V from the step's own contiguous
tensors instead of the paged cache.

A fresh prompt's keys and values are all new: they are in this step's projection output, rows in
token order, so whole [BLOCK_N, head_dim] tiles can be fetched by the tensor-memory accelerator
(host-side tensor descriptors) instead of one paged gather per token. The paged kernel
(kiln.kernels.attention) stays the one for chunks with a cached prefix and decodes; this one is
its faster special case, equal to the same reference (paged_attention_ref). With an fp8 cache
it reads the codes the RoPE kernel wrote beside the cache (as float16), so it attends the same
quantized values later steps will read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.pdl import pdl_start

# A finite start for the running max, so that an all-masked row never makes NaN.
_NEG_START = tl.constexpr(-1.0e30)


@triton.jit
def _attend_tiles(q, m, l, acc, k_desc, v_desc, qk_scale, rows, row0, kv_col, lo, hi,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    """Online-softmax update of (m, l, acc) with the keys and values of tokens lo .. hi - 1
    (sequence positions; the tensors' rows are row0 + position). Without MASKED every key in
    the range must be visible to every row."""
    for n0 in range(lo, hi, BLOCK_N):
        k = k_desc.load([row0 + n0, kv_col])
        v = v_desc.load([row0 + n0, kv_col])
        s = tl.dot(q, tl.trans(k)) * qk_scale
        if MASKED:
            cols = n0 + tl.arange(0, BLOCK_N)
            s = tl.where(cols[None, :] <= rows[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    return m, l, acc


@triton.jit(do_not_specialize_on_alignment=["query_start_ptr"])
def _fresh_prefill_kernel(q_desc, k_desc, v_desc, query_start_ptr, out_ptr, out_tok_stride,
                          out_head_stride, qk_scale, group, HEAD_DIM: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr = False,
                          v_scale=1.0, CODES: tl.constexpr = False):
    # Program (query tile, query head, sequence); tiles run largest-first (the causal triangle
    # makes the last tiles the longest). Rows past the sequence's end read the next sequence's
    # (or zero-filled) tokens: they are never stored, and every kept row sees its own key.
    # CODES: k and v hold an fp8 cache's e4m3 codes as float16, q (16-bit) enters the dots as
    # float16 as in the paged kernels (kiln.kernels.attention_tiles._fp8_dot_q); qk_scale carries
    # the key scale and the output is multiplied by v_scale.
    pdl_start(PDL)
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    m0 = tile * BLOCK_M
    if m0 >= q_len:
        return
    kv_col = (head // group) * HEAD_DIM
    q = q_desc.load([q_start + m0, head * HEAD_DIM])
    if CODES:
        q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)
    rows = m0 + tl.arange(0, BLOCK_M)
    m = tl.full([BLOCK_M], _NEG_START, tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # Keys before the tile's first row are visible to all of its rows: no mask there.
    m, l, acc = _attend_tiles(q, m, l, acc, k_desc, v_desc, qk_scale, rows, q_start, kv_col, 0, m0,
                              BLOCK_N, False)
    m, l, acc = _attend_tiles(q, m, l, acc, k_desc, v_desc, qk_scale, rows, q_start, kv_col, m0,
                              tl.minimum(m0 + BLOCK_M, q_len), BLOCK_N, True)
    if CODES:
        acc = acc * v_scale
    out = acc / l[:, None]
    dims = tl.arange(0, HEAD_DIM)
    ptrs = (out_ptr + (q_start + rows).to(tl.int64)[:, None] * out_tok_stride
            + head * out_head_stride + dims[None, :])
    tl.store(ptrs, out.to(out_ptr.dtype.element_ty), mask=(rows < q_len)[:, None])


def _rows_2d(t: torch.Tensor) -> torch.Tensor:
    """[T, H, D] with unit stride on D and heads adjacent -> a [T, H * D] view."""
    return t.as_strided((t.shape[0], t.shape[1] * t.shape[2]), (t.stride(0), 1))


def fresh_prefill_supports(q: torch.Tensor) -> bool:
    """Whether the kernel takes queries like q at all: a Triton device, a half type, head_dim 64
    or 128 (the layouts are checked by fresh_prefill_ok)."""
    return (use_triton(q) and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] in (64, 128))


def fresh_prefill_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     codes: bool = False) -> bool:
    """Whether the tensors suit the kernel: fresh_prefill_supports(q), k and v of q's dtype
    (float16 with ``codes``: an fp8 cache's codes), each token's heads laid out back to back,
    row strides and starts on 16-byte boundaries (TMA's rules)."""
    head_dim = q.shape[-1]
    if not fresh_prefill_supports(q):
        return False
    kv_dtype = torch.float16 if codes else q.dtype
    for t in (q, k, v):
        if (t.dtype != (q.dtype if t is q else kv_dtype) or t.stride(2) != 1
                or t.stride(1) != head_dim):
            return False
        if (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
            return False
    return True


def fresh_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            query_start_loc: torch.Tensor, max_query_len: int, scale: float,
                            out: torch.Tensor, config: dict | None = None,
                            fp8_scales: tuple[float, float] | None = None) -> torch.Tensor:
    """Causal attention of whole prompts (no cached prefix) into ``out`` [T, Hq, D].

    q: [T, Hq, D] rotated queries, k/v: [T, Hk, D] rotated keys and values of the same tokens,
    ``query_start_loc`` [B+1] int32 on the device, every sequence's context being its new tokens.
    ``fp8_scales`` (k_scale, v_scale): k and v are an fp8 cache's e4m3 codes as float16
    (rotary_and_write_kv's k_out / v_out), attended as the paged kernels attend that cache.
    Check fresh_prefill_ok first. ``config`` (benchmarks) overrides block_m/block_n/warps/stages.
    """
    config = config or {}
    num_tokens, num_q_heads, head_dim = q.shape
    group = num_q_heads // k.shape[1]
    # 64 x 64 tiles, 4 warps, 3 stages: the fastest setting at 1 x 2048, 1 x 4096, 64 x 128 and
    # 16 x 512 tokens on the H200 (benchmarks/kernels/bench_prefill_fresh.py), level with cuDNN.
    block_m = config.get("block_m", 64)
    block_n = config.get("block_n", 64)
    if block_m % block_n:
        raise ValueError(f"block_n {block_n} must divide block_m {block_m} (the causal split)")
    q_desc = TensorDescriptor.from_tensor(_rows_2d(q), [block_m, head_dim])
    k_desc = TensorDescriptor.from_tensor(_rows_2d(k), [block_n, head_dim])
    v_desc = TensorDescriptor.from_tensor(_rows_2d(v), [block_n, head_dim])
    num_seqs = query_start_loc.shape[0] - 1
    grid = (triton.cdiv(max_query_len, block_m), num_q_heads, num_seqs)
    qk_scale = float(scale) * 1.4426950408889634
    codes = {}
    if fp8_scales is not None:
        # q . (k8 * k_scale) == (q . k8) * k_scale, as in the paged kernels
        qk_scale *= float(fp8_scales[0])
        codes = dict(v_scale=float(fp8_scales[1]), CODES=True)
    _fresh_prefill_kernel[grid](
        q_desc, k_desc, v_desc, query_start_loc, out, out.stride(0), out.stride(1),
        qk_scale, group, HEAD_DIM=head_dim, BLOCK_M=block_m,
        BLOCK_N=block_n, num_warps=config.get("num_warps", 4),
        num_stages=config.get("num_stages", 3), **codes, **pdl_args(q))
    return out
