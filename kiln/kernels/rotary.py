"""Rotary position embedding (rotate-half / NeoX layout) applied to q and k.

Fused with the paged KV-cache write, which quantizes K/V for an fp8 cache (see
kiln.kernels.attention for the fp8 cache format).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kiln.kernels import pdl_args, use_triton
from kiln.kernels.pdl import pdl_start
from kiln.kernels.attention_ref import FP8_E4M3_MAX, is_fp8_kv_cache, quantize_kv_ref, write_kv_ref

_FP8_MAX = tl.constexpr(FP8_E4M3_MAX)
# Compiled kernels rotate 16-bit values through inline PTX (_rotated); the interpreter, which
# cannot run it, rounds with casts (numpy neither contracts nor narrows).
_ROTATE_ASM = tl.constexpr(os.environ.get("TRITON_INTERPRET", "") != "1")

# own * cos + partner * sin for two elements packed in a 32-bit register, each product and the
# sum rounded to the 16-bit type: fma with an addend of -0.0 rounds the exact product once (and
# keeps the sign of a zero product), fma by 1.0 rounds the sum once. Inline PTX, so the compiler
# may neither contract a product into the sum nor widen the arithmetic; fma.rn on bf16x2/f16x2
# runs on sm_80 and later.
_ROTATE_BF16 = tl.constexpr(
    "{ .reg .b32 c, s, nz, one; mov.b32 nz, 0x80008000; mov.b32 one, 0x3F803F80; "
    "fma.rn.bf16x2 c, $1, $2, nz; fma.rn.bf16x2 s, $3, $4, nz; fma.rn.bf16x2 $0, c, one, s; }")
_ROTATE_F16 = tl.constexpr(
    "{ .reg .b32 c, s, nz, one; mov.b32 nz, 0x80008000; mov.b32 one, 0x3C003C00; "
    "fma.rn.f16x2 c, $1, $2, nz; fma.rn.f16x2 s, $3, $4, nz; fma.rn.f16x2 $0, c, one, s; }")


def apply_rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference RoPE.

    q: [T, Hq, D], k: [T, Hk, D], positions: [T] int, cos_sin_cache: [max_pos, D] float32 holding
    cos of the D/2 frequencies in the first half and sin in the second. Rotation uses the
    rotate-half layout (pairs (i, i + D/2)), as Llama/Mistral/Qwen checkpoints in HF format expect.
    cos/sin are cast to q's dtype before use, matching the HF implementation.
    """
    cos_sin = cos_sin_cache.index_select(0, positions.long())
    cos, sin = cos_sin.chunk(2, dim=-1)
    cos = torch.cat([cos, cos], dim=-1).to(q.dtype).unsqueeze(1)
    sin = torch.cat([sin, sin], dim=-1).to(q.dtype).unsqueeze(1)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    return rotate(q), rotate(k)


@triton.jit
def _quantize_fp8(x, scale):
    """clamp(x * (1 / scale), -448, 448) in float32, ready for the store's rounding to e4m3."""
    # The reciprocal correctly rounded once (div_rn; plain / may approximate), as the reference
    # computes it; a division per element would cost a branchy IEEE sequence each.
    q = x.to(tl.float32) * tl.math.div_rn(1.0, scale)
    # NaN stays NaN (as torch.clamp keeps it) instead of saturating to a finite value.
    q = tl.maximum(q, -_FP8_MAX, propagate_nan=tl.PropagateNan.ALL)
    return tl.minimum(q, _FP8_MAX, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def rope_values(own, partner, dims, cs_row, HALF: tl.constexpr):
    """Rotated (rotate-half) values of elements ``own`` at head dims ``dims`` (broadcast beside
    them), whose partners at dims ^ HALF are ``partner``, for the position whose cos/sin row is
    at cs_row: own's dtype, the bits _rotate_heads stores (each product and the sum rounded to
    that dtype, cos/sin cast to it first, as in the reference)."""
    cos, sin = rope_cos_sin(cs_row, dims, HALF, own.dtype)
    return _rotated(own, partner, cos, sin, dims < HALF)


@triton.jit
def rope_cos_sin(cs_row, dims, HALF: tl.constexpr, ty: tl.constexpr):
    """The cos and sin that rope_values applies at head dims ``dims`` for the position whose
    cos/sin row is at cs_row, cast to ty (loaded apart from the rotation, so that a kernel can
    read them before it waits for the values to rotate)."""
    i = dims % HALF
    cos = tl.load(cs_row + i).to(ty)
    sin = tl.load(cs_row + HALF + i).to(ty)
    return cos, sin


@triton.jit
def rope_rotate(own, partner, dims, cos, sin, HALF: tl.constexpr):
    """rope_values with cos and sin already loaded (rope_cos_sin at the same dims)."""
    return _rotated(own, partner, cos, sin, dims < HALF)


@triton.jit
def _rotated(own, partner, cos, sin, lower):
    """own * cos -/+ partner * sin (minus where ``lower``, the first half of the head dims), each
    product and the sum rounded to own's dtype, as the reference's torch ops do; cos and sin
    already in that dtype. The minus goes into sin: -round(p * s) == round(p * -s) and
    round(c - s) == round(c + -s), so one signed sum gives the reference's bits."""
    ty = own.dtype
    sin = tl.where(lower, -sin, sin)
    if _ROTATE_ASM and ty == tl.bfloat16:
        return tl.inline_asm_elementwise(_ROTATE_BF16, "=r,r,r,r,r",
                                         [own, cos.to(ty), partner, sin.to(ty)],
                                         dtype=tl.bfloat16, is_pure=True, pack=2)
    elif _ROTATE_ASM and ty == tl.float16:
        return tl.inline_asm_elementwise(_ROTATE_F16, "=r,r,r,r,r",
                                         [own, cos.to(ty), partner, sin.to(ty)],
                                         dtype=tl.float16, is_pure=True, pack=2)
    else:
        c = (own.to(tl.float32) * cos.to(tl.float32)).to(ty)
        s = (partner.to(tl.float32) * sin.to(tl.float32)).to(ty)
        return (c.to(tl.float32) + s.to(tl.float32)).to(ty)


@triton.jit
def quantize_fp8(x, scale):
    """An fp8 cache's e4m3 codes of x / scale, as the cache write stores them."""
    return _quantize_fp8(x, scale).to(tl.float8e4nv)


@triton.jit
def _rotate_heads(src_ptr, src_head_stride, dst_ptr, dst_head_stride, num_heads,
                  cos, sin, valid, scale, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                  QUANT: tl.constexpr):
    """Rotate num_heads heads of one token from src into dst, BLOCK_H heads at a time (if valid).

    With QUANT the rotated values (rounded to the input dtype first, as in the reference) are
    stored as fp8 of value / scale: the e4m3 codes, widened exactly to dst's dtype if that is a
    wider float (an fp8 cache's codes for attention that reads the step's own keys).
    """
    half = tl.arange(0, HALF)
    for h0 in range(0, num_heads, BLOCK_H):
        heads = h0 + tl.arange(0, BLOCK_H)
        mask = (heads < num_heads)[:, None] & valid
        src = src_ptr + heads[:, None] * src_head_stride + half[None, :]
        x1 = tl.load(src, mask=mask, other=0.0)
        x2 = tl.load(src + HALF, mask=mask, other=0.0)
        dst = dst_ptr + heads[:, None] * dst_head_stride + half[None, :]
        lo = _rotated(x1, x2, cos, sin, True)
        hi = _rotated(x2, x1, cos, sin, False)
        if QUANT:
            lo = quantize_fp8(lo, scale)
            hi = quantize_fp8(hi, scale)
        tl.store(dst, lo.to(dst_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + HALF, hi.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_write_kv_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, cos_sin_ptr, q_out_ptr, cache_ptr, slot_ptr,
                            k_out_ptr, q_tok_stride, q_head_stride, k_tok_stride, k_head_stride,
                            v_tok_stride, v_head_stride, q_out_tok_stride, q_out_head_stride,
                            cos_sin_stride, cache_kv_stride, cache_slot_stride, cache_head_stride,
                            k_out_tok_stride, k_out_head_stride, num_q_heads, num_kv_heads, k_scale,
                            v_scale, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                            WRITE_CACHE: tl.constexpr, KV_FP8: tl.constexpr, K_OUT: tl.constexpr,
                            PDL: tl.constexpr = False, v_out_ptr=None, v_out_tok_stride=0,
                            v_out_head_stride=0):
    # Program (t, 0) rotates token t's query heads; (t, 1) rotates its key heads and writes keys
    # and values to the cache, so q and k/v of one token proceed in parallel. With K_OUT the
    # rotated keys also go to k_out (for attention that reads the step's own keys); with an fp8
    # cache (KV_FP8) k_out gets the cache's codes, and the values' codes go to v_out.
    pdl_start(PDL)
    tok = tl.program_id(0).to(tl.int64)
    which = tl.program_id(1)
    half = tl.arange(0, HALF)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    ty = q_ptr.dtype.element_ty
    # cos/sin are cast to the activations' dtype before use, as in the reference.
    cos = tl.load(cos_sin_ptr + pos * cos_sin_stride + half).to(ty)[None, :]
    sin = tl.load(cos_sin_ptr + pos * cos_sin_stride + HALF + half).to(ty)[None, :]
    if which == 0:
        # Every query token is rotated; `pos >= 0` is just an always-true predicate of the right kind.
        _rotate_heads(q_ptr + tok * q_tok_stride, q_head_stride,
                      q_out_ptr + tok * q_out_tok_stride, q_out_head_stride, num_q_heads,
                      cos, sin, pos >= 0, 1.0, HALF, BLOCK_H, False)
    elif not WRITE_CACHE:
        # Plain RoPE: cache_ptr is the rotated-k output, one "slot" per token.
        _rotate_heads(k_ptr + tok * k_tok_stride, k_head_stride, cache_ptr + tok * cache_slot_stride,
                      cache_head_stride, num_kv_heads, cos, sin, pos >= 0, 1.0, HALF, BLOCK_H,
                      False)
    else:
        slot = tl.load(slot_ptr + tok).to(tl.int64)
        key_dst = cache_ptr + slot * cache_slot_stride
        _rotate_heads(k_ptr + tok * k_tok_stride, k_head_stride, key_dst, cache_head_stride,
                      num_kv_heads, cos, sin, slot >= 0, k_scale, HALF, BLOCK_H, KV_FP8)
        dim = tl.arange(0, 2 * HALF)
        for h0 in range(0, num_kv_heads, BLOCK_H):
            heads = h0 + tl.arange(0, BLOCK_H)
            head_ok = (heads < num_kv_heads)[:, None]
            mask = head_ok & (slot >= 0)
            # (every token's values are read: v_out wants them for padding tokens too)
            val = tl.load(v_ptr + tok * v_tok_stride + heads[:, None] * v_head_stride + dim[None, :],
                          mask=head_ok if K_OUT and KV_FP8 else mask, other=0.0)
            if KV_FP8:
                val = quantize_fp8(val, v_scale)
                if K_OUT:
                    tl.store(v_out_ptr + tok * v_out_tok_stride + heads[:, None] * v_out_head_stride
                             + dim[None, :], val.to(v_out_ptr.dtype.element_ty), mask=head_ok)
            tl.store(key_dst + cache_kv_stride + heads[:, None] * cache_head_stride + dim[None, :],
                     val.to(cache_ptr.dtype.element_ty), mask=mask)
        if K_OUT:
            _rotate_heads(k_ptr + tok * k_tok_stride, k_head_stride,
                          k_out_ptr + tok * k_out_tok_stride, k_out_head_stride, num_kv_heads,
                          cos, sin, pos >= 0, k_scale, HALF, BLOCK_H, KV_FP8)


def _triton_ok(q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor) -> bool:
    """Shapes the kernel handles: unit stride on head_dim, D/2 a power of two, full-width rotation."""
    head_dim = q.shape[-1]
    return (use_triton(q) and q.shape[0] > 0 and head_dim % 2 == 0
            and triton.next_power_of_2(head_dim // 2) == head_dim // 2
            and cos_sin_cache.shape[-1] == head_dim and cos_sin_cache.stride(-1) == 1
            and q.stride(-1) == 1 and k.stride(-1) == 1 and q.dtype == k.dtype)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
            cos_sin_cache: torch.Tensor, q_out: torch.Tensor, dst: torch.Tensor,
            dst_strides: tuple[int, int, int], slot_mapping: torch.Tensor, write_cache: bool,
            k_scale: float = 1.0, v_scale: float = 1.0, k_out: torch.Tensor | None = None,
            v_out: torch.Tensor | None = None) -> None:
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    half = head_dim // 2
    # Keep a head chunk to ~2K elements per half so the registers hold it without spilling.
    block_h = min(triton.next_power_of_2(max(num_q_heads, num_kv_heads)), max(1, 2048 // half))
    k_out_arg = k_out if k_out is not None else k
    kv_fp8 = write_cache and is_fp8_kv_cache(dst)
    codes = {}
    if kv_fp8 and k_out is not None:
        codes = dict(v_out_ptr=v_out, v_out_tok_stride=v_out.stride(0),
                     v_out_head_stride=v_out.stride(1))
    _rotary_write_kv_kernel[(num_tokens, 2)](
        q, k, v, positions, cos_sin_cache, q_out, dst, slot_mapping, k_out_arg,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        q_out.stride(0), q_out.stride(1), cos_sin_cache.stride(0), *dst_strides,
        k_out_arg.stride(0), k_out_arg.stride(1), num_q_heads, num_kv_heads, float(k_scale),
        float(v_scale), HALF=half, BLOCK_H=block_h, WRITE_CACHE=write_cache,
        KV_FP8=kv_fp8, K_OUT=k_out is not None, num_warps=4, **codes, **pdl_args(q, small=True))


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                 cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on q and k (dispatcher); returns new tensors."""
    if not _triton_ok(q, k, cos_sin_cache):
        return apply_rotary_ref(q, k, positions, cos_sin_cache)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    _launch(q, k, k, positions, cos_sin_cache, q_out, k_out, (0, k_out.stride(0), k_out.stride(1)),
            positions, write_cache=False)
    return q_out, k_out


def rotary_and_write_kv_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                            cos_sin_cache: torch.Tensor, kv_cache: torch.Tensor,
                            slot_mapping: torch.Tensor, k_scale: float = 1.0,
                            v_scale: float = 1.0, k_out: torch.Tensor | None = None,
                            v_out: torch.Tensor | None = None,
                            q_out: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: rotate q and k, write rotated k and v into the paged cache (and rotated k into
    ``k_out`` when given; for an fp8 cache the codes of k and v into ``k_out`` and ``v_out``);
    returns rotated q (in ``q_out`` when given).

    The scales quantize k/v for an fp8 cache (see kernels.attention_ref.write_kv_ref).
    """
    q, k = apply_rotary_ref(q, k, positions, cos_sin_cache)
    write_kv_ref(k, v, kv_cache, slot_mapping, k_scale, v_scale)
    if k_out is not None:
        if is_fp8_kv_cache(kv_cache):
            k_out.copy_(quantize_kv_ref(k, k_scale))
            v_out.copy_(quantize_kv_ref(v, v_scale))
        else:
            k_out.copy_(k)
    return q if q_out is None else q_out.copy_(q)


def rotary_and_write_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                        cos_sin_cache: torch.Tensor, kv_cache: torch.Tensor,
                        slot_mapping: torch.Tensor, k_scale: float = 1.0,
                        v_scale: float = 1.0, k_out: torch.Tensor | None = None,
                        v_out: torch.Tensor | None = None,
                        q_out: torch.Tensor | None = None) -> torch.Tensor:
    """RoPE fused with the KV-cache write (dispatcher); returns rotated q [T, Hq, D] (``q_out``
    when given: a tensor of q's shape and dtype, last dimension contiguous).

    q: [T, Hq, D], k/v: [T, Hk, D]; kv_cache: [2, num_blocks, block_size, Hk, D];
    slot_mapping: [T] (-1 = do not write). A float8_e4m3fn cache stores
    clamp(k * (1 / k_scale), -448, 448) and likewise v, rounded to e4m3; other caches
    ignore the scales. ``k_out`` [T, Hk, D] (optional) receives the rotated keys, unscaled; with
    an fp8 cache it receives the keys' e4m3 codes instead, and ``v_out`` (then required) the
    values' codes, both for every token (slot -1 too), in their own dtype (float16 holds every
    code exactly).
    """
    if k_out is not None and is_fp8_kv_cache(kv_cache) and v_out is None:
        raise ValueError("an fp8 cache's codes go to k_out and v_out: v_out is missing")
    if not (_triton_ok(q, k, cos_sin_cache) and kv_cache.is_contiguous() and v.stride(-1) == 1
            and (k_out is None or k_out.stride(-1) == 1)
            and (v_out is None or v_out.stride(-1) == 1)
            and (q_out is None or q_out.stride(-1) == 1)):
        return rotary_and_write_kv_ref(q, k, v, positions, cos_sin_cache, kv_cache, slot_mapping,
                                       k_scale, v_scale, k_out, v_out, q_out)
    if q_out is None:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif q_out.shape != q.shape or q_out.dtype != q.dtype:
        raise ValueError(f"q_out must be {tuple(q.shape)} {q.dtype}, got {tuple(q_out.shape)} "
                         f"{q_out.dtype}")
    # Slots index the flattened (block, offset) dims of the contiguous cache.
    strides = (kv_cache.stride(0), kv_cache.stride(2), kv_cache.stride(3))
    _launch(q, k, v, positions, cos_sin_cache, q_out, kv_cache, strides, slot_mapping,
            write_cache=True, k_scale=k_scale, v_scale=v_scale, k_out=k_out, v_out=v_out)
    return q_out
