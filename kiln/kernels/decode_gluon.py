"""Decode attention over an fp8 KV cache for large batches, written in Gluon (Triton's
explicit-layout dialect) so that every register layout is chosen rather than inferred.

One program is one warp: one (sequence, kv head) and all of the sequence's keys, tile by tile,
with the tiles' e4m3 keys and values copied into a ring of shared-memory slots STAGES - 1 tiles
ahead (cp.async). Two kernels:
- decode_fp8_keys_m_kernel (up to 8 query heads per kv head, the default): keys and head dims
  are the rows of the tensor-core tiles and the query heads their 8 columns, S^T = K Q^T and
  O^T = V^T P^T; P^T changes layout once a tile (accumulator to B operand);
- decode_fp8_kernel (up to 16): the query heads are the rows (padded to 16), S = Q K^T and
  O = P V, and P stays in registers (the accumulator layout of S is the A operand layout of P).

Why not the Triton kernel (kiln.kernels.attention): there the widened values and the
probabilities pass through shared memory every tile, the operands of the matrix instructions are
gathered with register moves, and both warps of a program widen and multiply the same keys (the
compiler splits the score tile's 16 padded query columns between them). Here:
- keys: each thread reads 32 contiguous bytes of a key row and widens them to float16 straight
  into the key operand. The head dims are permuted so that those bytes are the operand's
  elements (and q is loaded under the same permutation, so the dot is unchanged): MMA k index
  16 s + 8 h + 2 t + j holds dim 32 t + 4 s + 2 h + j;
- values: each thread reads 16 bytes of four key rows (keys 2t, 2t+1, 2t+8, 2t+9 of each
  16-key step), pairs the two keys' bytes (prmt) and widens each pair, which gives the value
  operand directly (its registers hold two keys of one dim). Output dim index n (a column of O,
  a row of O^T) holds dim 16 (n mod 8) + 4 (n div 32) + (n div 8) mod 4.

The cache is read as int32 words (four e4m3 codes each), so the cache must be 4-byte aligned
and the head dim 128 (32 words). CUDA sm_89+ (cvt e4m3x2); the dispatcher is
kiln.kernels.attention's paged_attention, the reference its paged_attention_ref.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from kiln.kernels import E4M3X4_F16_PTX
from kiln.kernels.pdl import pdl_start_gluon

_E4M3X4_ASM = gl.constexpr(E4M3X4_F16_PTX)  # four e4m3 codes of a word -> float16

# Words of keys 2p ($8) and 2p + 1 ($9) at the same four dims -> dim c of key 2p, then of key
# 2p + 1, for c = 0..3 ($0..$7): bytes paired across the keys first, so each conversion gives
# one dim's two keys.
_E4M3_KEY_PAIRS_ASM = gl.constexpr("""
{
.reg .b32 lo, hi, r0, r1, r2, r3;
.reg .b16 h0, h1, h2, h3;
prmt.b32 lo, $8, $9, 0x5140;
prmt.b32 hi, $8, $9, 0x7362;
mov.b32 {h0, h1}, lo;
mov.b32 {h2, h3}, hi;
cvt.rn.f16x2.e4m3x2 r0, h0;
cvt.rn.f16x2.e4m3x2 r1, h1;
cvt.rn.f16x2.e4m3x2 r2, h2;
cvt.rn.f16x2.e4m3x2 r3, h3;
mov.b32 {$0, $1}, r0;
mov.b32 {$2, $3}, r1;
mov.b32 {$4, $5}, r2;
mov.b32 {$6, $7}, r3;
}
""")

HEAD_DIM = gl.constexpr(128)
# The copies' layout (16-byte vectors, 8 lanes a 128-byte row); the ring's slots (16-byte chunks
# XOR-swizzled by row); one warp's mma.sync m16n8k16 tiles (accumulators) and their A and B
# operands (16-bit elements).
_COPY = gl.constexpr(gl.BlockedLayout([1, 4], [4, 8], [1, 1], [1, 0]))
_SMEM = gl.constexpr(gl.SwizzledSharedLayout(vec=4, per_phase=1, max_phase=8, order=[1, 0]))
_MMA = gl.constexpr(gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1],
                                              instr_shape=[16, 8]))
_A_OP = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=_MMA.value, k_width=2))
_B_OP = gl.constexpr(gl.DotOperandLayout(operand_index=1, parent=_MMA.value, k_width=2))



@gluon.constexpr_function
def word_layouts(block_n):
    """The register layouts of a tile's key and value words [block_n, 32] (block_n 16 or 32):
    keys: lane 4 g + t holds rows 8 n + g and words 8 t .. 8 t + 7 (two 16-byte reads a row);
    values: rows 2 t + {0, 1, 8, 9} of each 16 and words 4 g .. 4 g + 3 (one 16-byte read)."""
    steps = [[8, 0], [16, 0]][:block_n // 16]
    keys = gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 2], [0, 4]] + steps,
        lane_bases=[[0, 8], [0, 16], [1, 0], [2, 0], [4, 0]], warp_bases=[], block_bases=[],
        shape=[block_n, 32])
    values = gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 2], [1, 0]] + steps,
        lane_bases=[[2, 0], [4, 0], [0, 4], [0, 8], [0, 16]], warp_bases=[], block_bases=[],
        shape=[block_n, 32])
    return keys, values


# The kernels build these from BLOCK_N rather than take them as arguments: launch arguments
# must serialize to JSON for the engine's compile watch (kiln.engine.compile_watch).
@gluon.constexpr_function
def _key_words(block_n):
    return word_layouts(block_n)[0]


@gluon.constexpr_function
def _value_words(block_n):
    return word_layouts(block_n)[1]


@gluon.jit
def _sequence(seq_lens_ptr, query_start_ptr, PDL: gl.constexpr):
    """This program's (sequence, kv head) and the sequence's length, first query row and query
    count, read after the previous kernel (PDL)."""
    pdl_start_gluon(PDL)
    seq = gl.program_id(0)
    kv_head = gl.program_id(1)
    seq_len = gl.load(seq_lens_ptr + seq)
    q_start = gl.load(query_start_ptr + seq)
    q_len = gl.load(query_start_ptr + seq + 1) - q_start
    return seq, kv_head, seq_len, q_start, q_len


@gluon.jit
def _key_dims(kk):
    """The head dim at MMA k index kk of the key operands (and of q): 32 t + 4 s + 2 h + j for
    kk = 16 s + 8 h + 2 t + j."""
    return 32 * ((kk // 2) % 4) + 4 * (kk // 16) + 2 * ((kk // 8) % 2) + kk % 2


@gluon.jit
def _value_dims(n):
    """The head dim at output index n (a column of O, a row of O^T)."""
    return 16 * (n % 8) + 4 * (n // 32) + (n // 8) % 4


@gluon.jit
def _tile_blocks(tile, seq_len, table_row, BLOCK_N: gl.constexpr, BLOCK_SIZE: gl.constexpr):
    """The cache blocks of tile `tile`'s rows (0 past the context), in the copy layout's rows."""
    toks = tile * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, _COPY))
    return gl.load(table_row + toks // BLOCK_SIZE, mask=toks < seq_len, other=0)


@gluon.jit
def _issue_tile(k_slot, v_slot, tile, blk, seq_len, kv_words, v_words, block_words, slot_words,
                BLOCK_N: gl.constexpr, BLOCK_SIZE: gl.constexpr):
    """Start copying tile `tile`'s key and value rows (int32 words; their cache blocks `blk`)
    into one ring slot; rows past the context are zero-filled. One commit group per tile."""
    toks = tile * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, _COPY))
    ok = toks < seq_len
    row = blk.to(gl.int64) * block_words + (toks % BLOCK_SIZE) * slot_words
    cols = gl.arange(0, 32, layout=gl.SliceLayout(0, _COPY))
    ptrs = kv_words + row[:, None] + cols[None, :]
    mask = ok[:, None] & (cols < 32)[None, :]
    async_copy.async_copy_global_to_shared(k_slot, ptrs, mask=mask)
    async_copy.async_copy_global_to_shared(v_slot, ptrs + v_words, mask=mask)
    async_copy.commit_group()


@gluon.jit
def _ring_start(k_ring, v_ring, seq_len, table_row, kv_words, v_words, block_words, slot_words,
                BLOCK_N: gl.constexpr, BLOCK_SIZE: gl.constexpr, STAGES: gl.constexpr):
    """Start copying tiles 0 .. STAGES - 2 into the ring; returns the cache blocks of the next
    tile to copy (its block-table entries are read a tile ahead of its copy)."""
    for i in gl.static_range(STAGES - 1):
        _issue_tile(k_ring.index(i), v_ring.index(i), i,
                    _tile_blocks(i, seq_len, table_row, BLOCK_N, BLOCK_SIZE), seq_len,
                    kv_words, v_words, block_words, slot_words, BLOCK_N, BLOCK_SIZE)
    return _tile_blocks(STAGES - 1, seq_len, table_row, BLOCK_N, BLOCK_SIZE)


@gluon.jit
def _ring_open(cache_ptr, block_tables_ptr, seq, kv_head, seq_len, block_table_stride,
               cache_kv_words, cache_block_words, cache_slot_words, cache_head_words,
               BLOCK_N: gl.constexpr, BLOCK_SIZE: gl.constexpr, STAGES: gl.constexpr):
    """The key and value rings of this program's (sequence, kv head), its block-table row, its
    cache words, its tile count, and the ring started (_ring_start; the blocks it returns)."""
    k_ring = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, 32], _SMEM)
    v_ring = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, 32], _SMEM)
    table_row = block_tables_ptr + seq.to(gl.int64) * block_table_stride
    kv_words = cache_ptr.to(gl.pointer_type(gl.int32)) + kv_head * cache_head_words
    num_tiles = (seq_len + BLOCK_N - 1) // BLOCK_N
    blk = _ring_start(k_ring, v_ring, seq_len, table_row, kv_words, cache_kv_words,
                      cache_block_words, cache_slot_words, BLOCK_N, BLOCK_SIZE, STAGES)
    return k_ring, v_ring, table_row, kv_words, num_tiles, blk


@gluon.jit
def _ring_next(k_ring, v_ring, i, blk, seq_len, table_row, kv_words, v_words, block_words,
               slot_words, BLOCK_N: gl.constexpr, BLOCK_SIZE: gl.constexpr,
               STAGES: gl.constexpr):
    """Wait for tile i's copies, start tile i + STAGES - 1's into the slot tile i - 1 left (blk:
    its cache blocks); returns the blocks of the tile after it."""
    async_copy.wait_group(STAGES - 2)
    gl.thread_barrier()  # every lane's copies of tile i landed; slot i - 1 is free
    nxt = i + STAGES - 1
    _issue_tile(k_ring.index(nxt % STAGES), v_ring.index(nxt % STAGES), nxt, blk, seq_len,
                kv_words, v_words, block_words, slot_words, BLOCK_N, BLOCK_SIZE)
    return _tile_blocks(nxt + 1, seq_len, table_row, BLOCK_N, BLOCK_SIZE)


@gluon.jit
def _widened_keys(kw, BLOCK_N: gl.constexpr):
    """Key words [BLOCK_N, 32] -> float16 [key, t, s, j, h]: the code of byte 2 h + j of word
    8 t + s of the key's row (the operands' layouts start from this one)."""
    b0, b1, b2, b3 = gl.inline_asm_elementwise(_E4M3X4_ASM, "=h,=h,=h,=h,r", [kw],
                                               dtype=(gl.float16,) * 4, is_pure=True, pack=1)
    x = gl.join(gl.join(b0, b1), gl.join(b2, b3))          # [key, word, j, h]
    return gl.reshape(x, [BLOCK_N, 4, 8, 2, 2])


@gluon.jit
def _widened_value_pairs(vw, BLOCK_N: gl.constexpr):
    """Value words [BLOCK_N, 32] -> float16 [p, g, u, a, i, j]: key 2 p + a at dim
    4 (4 g + u) + 2 i + j, each conversion giving a key pair (keys 2 p and 2 p + 1 are split
    apart first, then their bytes paired by _E4M3_KEY_PAIRS_ASM)."""
    pairs = gl.permute(gl.reshape(vw, [BLOCK_N // 2, 2, 32]), [0, 2, 1])
    even, odd = gl.split(pairs)                             # keys 2 p and 2 p + 1: [p, word]
    o0, o1, o2, o3, o4, o5, o6, o7 = gl.inline_asm_elementwise(
        _E4M3_KEY_PAIRS_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [even, odd],
        dtype=(gl.float16,) * 8, is_pure=True, pack=1)
    x = gl.join(gl.join(gl.join(o0, o1), gl.join(o4, o5)),
                gl.join(gl.join(o2, o3), gl.join(o6, o7)))   # [p, word, a, i, j]
    return gl.reshape(x, [BLOCK_N // 2, 8, 4, 2, 2, 2])


@gluon.jit
def _keys_operand(kw, BLOCK_N: gl.constexpr):
    """Key words [BLOCK_N, 32] (thread (g, t): rows 8 n + g, words 8 t .. 8 t + 7) -> the B
    operand K^T [128 permuted dims, BLOCK_N] of S = Q K^T, float16, no data movement."""
    x = gl.permute(_widened_keys(kw, BLOCK_N), [2, 4, 1, 3, 0])  # [s, h, t, j, key]
    x = gl.reshape(x, [HEAD_DIM, BLOCK_N])
    return gl.convert_layout(x, _B_OP, assert_trivial=True)


@gluon.jit
def _values_operand(vw, BLOCK_N: gl.constexpr):
    """Value words [BLOCK_N, 32] (thread (g, t): rows 2 t, 2 t + 1, 2 t + 8, 2 t + 9 of each 16,
    words 4 g .. 4 g + 3) -> the B operand V [BLOCK_N, 128 permuted dims] of O = P V."""
    x = _widened_value_pairs(vw, BLOCK_N)                   # [p, g, u, a, i, j]
    x = gl.permute(x, [0, 3, 2, 4, 5, 1])                   # [p, a, u, i, j, g]
    x = gl.reshape(x, [BLOCK_N, HEAD_DIM])
    return gl.convert_layout(x, _B_OP, assert_trivial=True)


@gluon.jit
def _keys_rows_operand(kw, BLOCK_N: gl.constexpr):
    """Key words [BLOCK_N, 32] in the same thread layout as _keys_operand -> the A operand
    K [BLOCK_N, 128 permuted dims] of S^T = K Q^T (rows g and g + 8 of each 16 are the
    fragment's two row halves)."""
    x = gl.permute(_widened_keys(kw, BLOCK_N), [0, 2, 4, 1, 3])  # [key, s, h, t, j]
    x = gl.reshape(x, [BLOCK_N, HEAD_DIM])
    return gl.convert_layout(x, _A_OP, assert_trivial=True)


@gluon.jit
def _values_rows_operand(vw, BLOCK_N: gl.constexpr):
    """Value words [BLOCK_N, 32] in _values_operand's thread layout -> the A operand
    V^T [128 permuted dims, BLOCK_N] of O^T = V^T P^T. Row m holds dim
    16 (m mod 8) + 4 (m div 32) + (m div 8) mod 4, as _values_operand's column m."""
    x = _widened_value_pairs(vw, BLOCK_N)                   # [p, g, u, a, i, j]
    x = gl.permute(x, [2, 4, 5, 1, 0, 3])                   # [u, i, j, g, p, a]
    x = gl.reshape(x, [HEAD_DIM, BLOCK_N])
    return gl.convert_layout(x, _A_OP, assert_trivial=True)


@gluon.jit(do_not_specialize=["block_table_stride", "group"],
           do_not_specialize_on_alignment=["block_tables_ptr", "seq_lens_ptr", "query_start_ptr"])
def decode_fp8_keys_m_kernel(q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr,
                             out_ptr, q_tok_stride, q_head_stride, out_tok_stride,
                             out_head_stride, cache_kv_words, cache_block_words,
                             cache_slot_words, cache_head_words, block_table_stride, qk_scale,
                             v_scale, group, BLOCK_N: gl.constexpr, BLOCK_SIZE: gl.constexpr,
                             STAGES: gl.constexpr, PDL: gl.constexpr = False):
    # decode_fp8_kernel transposed, for at most 8 query heads per kv head: keys and head dims are
    # the rows of the tensor-core tiles (no padding there) and the query heads their 8 columns,
    # S^T = K Q^T and O^T = V^T P^T. Half the matrix instructions and accumulator registers;
    # P^T changes layout (C fragment to B operand) once a tile.
    KW: gl.constexpr = _key_words(BLOCK_N)
    VW: gl.constexpr = _value_words(BLOCK_N)
    seq, kv_head, seq_len, q_start, q_len = _sequence(seq_lens_ptr, query_start_ptr, PDL)
    if q_len > 0:
        kk = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(1, _B_OP))
        cols = gl.arange(0, 8, layout=gl.SliceLayout(0, _B_OP))
        dims = _key_dims(kk)
        heads = kv_head * group + cols
        qt = gl.load(q_ptr + q_start.to(gl.int64) * q_tok_stride + heads[None, :] * q_head_stride
                     + dims[:, None], mask=(cols < group)[None, :], other=0.0)
        qt = gl.minimum(gl.maximum(qt.to(gl.float32), -65504.0), 65504.0).to(gl.float16)

        k_ring, v_ring, table_row, kv_words, num_tiles, blk = _ring_open(
            cache_ptr, block_tables_ptr, seq, kv_head, seq_len, block_table_stride,
            cache_kv_words, cache_block_words, cache_slot_words, cache_head_words, BLOCK_N,
            BLOCK_SIZE, STAGES)

        m = gl.full([8], -1.0e30, gl.float32, layout=gl.SliceLayout(0, _MMA))
        l = gl.zeros([8], gl.float32, layout=gl.SliceLayout(0, _MMA))
        acc = gl.zeros([HEAD_DIM, 8], gl.float32, layout=_MMA)
        keys = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, _MMA))
        for i in range(num_tiles):
            blk = _ring_next(k_ring, v_ring, i, blk, seq_len, table_row, kv_words, cache_kv_words,
                             cache_block_words, cache_slot_words, BLOCK_N, BLOCK_SIZE, STAGES)
            ka = _keys_rows_operand(k_ring.index(i % STAGES).load(KW), BLOCK_N)
            st = mma_v2(ka, qt, gl.zeros([BLOCK_N, 8], gl.float32, layout=_MMA)) * qk_scale
            st = gl.where((i * BLOCK_N + keys < seq_len)[:, None], st, float("-inf"))
            m_new = gl.maximum(m, gl.max(st, axis=0))
            alpha = gl.exp2(m - m_new)
            pt = gl.exp2(st - m_new[None, :])
            l = l * alpha + gl.sum(pt, axis=0)
            va = _values_rows_operand(v_ring.index(i % STAGES).load(VW), BLOCK_N)
            pb = gl.convert_layout(pt.to(gl.float16), _B_OP)
            acc = mma_v2(va, pb, acc * alpha[None, :])
            m = m_new
        async_copy.wait_group(0)

        out = acc * (v_scale / l)[None, :]
        mrow = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(1, _MMA))
        ocol = gl.arange(0, 8, layout=gl.SliceLayout(0, _MMA))
        odim = _value_dims(mrow)
        oheads = kv_head * group + ocol
        gl.store(out_ptr + q_start.to(gl.int64) * out_tok_stride + oheads[None, :] * out_head_stride
                 + odim[:, None], out.to(out_ptr.dtype.element_ty), mask=(ocol < group)[None, :])


# The metadata change from step to step: no specialization on their values or alignment (a
# variant compiled while serving).
@gluon.jit(do_not_specialize=["block_table_stride", "group"],
           do_not_specialize_on_alignment=["block_tables_ptr", "seq_lens_ptr", "query_start_ptr"])
def decode_fp8_kernel(q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr, out_ptr,
                      q_tok_stride, q_head_stride, out_tok_stride, out_head_stride,
                      cache_kv_words, cache_block_words, cache_slot_words, cache_head_words,
                      block_table_stride, qk_scale, v_scale, group,
                      BLOCK_N: gl.constexpr, BLOCK_SIZE: gl.constexpr, STAGES: gl.constexpr,
                      PDL: gl.constexpr = False):
    # Program (sequence, kv head); one warp. qk_scale folds the key scale and log2(e).
    KW: gl.constexpr = _key_words(BLOCK_N)
    VW: gl.constexpr = _value_words(BLOCK_N)
    seq, kv_head, seq_len, q_start, q_len = _sequence(seq_lens_ptr, query_start_ptr, PDL)
    if q_len > 0:
        rows = gl.arange(0, 16, layout=gl.SliceLayout(1, _A_OP))
        kk = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, _A_OP))
        dims = _key_dims(kk)
        heads = kv_head * group + rows
        q = gl.load(q_ptr + q_start.to(gl.int64) * q_tok_stride + heads[:, None] * q_head_stride
                    + dims[None, :], mask=(rows < group)[:, None], other=0.0)
        q = gl.minimum(gl.maximum(q.to(gl.float32), -65504.0), 65504.0).to(gl.float16)

        k_ring, v_ring, table_row, kv_words, num_tiles, blk = _ring_open(
            cache_ptr, block_tables_ptr, seq, kv_head, seq_len, block_table_stride,
            cache_kv_words, cache_block_words, cache_slot_words, cache_head_words, BLOCK_N,
            BLOCK_SIZE, STAGES)

        m = gl.full([16], -1.0e30, gl.float32, layout=gl.SliceLayout(1, _MMA))
        l = gl.zeros([16], gl.float32, layout=gl.SliceLayout(1, _MMA))
        acc = gl.zeros([16, HEAD_DIM], gl.float32, layout=_MMA)
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, _MMA))
        for i in range(num_tiles):
            blk = _ring_next(k_ring, v_ring, i, blk, seq_len, table_row, kv_words, cache_kv_words,
                             cache_block_words, cache_slot_words, BLOCK_N, BLOCK_SIZE, STAGES)
            kw = k_ring.index(i % STAGES).load(KW)
            kt = _keys_operand(kw, BLOCK_N)
            s = mma_v2(q, kt, gl.zeros([16, BLOCK_N], gl.float32, layout=_MMA)) * qk_scale
            s = gl.where((i * BLOCK_N + cols < seq_len)[None, :], s, float("-inf"))
            m_new = gl.maximum(m, gl.max(s, axis=1))
            alpha = gl.exp2(m - m_new)
            p = gl.exp2(s - m_new[:, None])
            l = l * alpha + gl.sum(p, axis=1)
            vw = v_ring.index(i % STAGES).load(VW)
            vb = _values_operand(vw, BLOCK_N)
            pa = gl.convert_layout(p.to(gl.float16), _A_OP)
            acc = mma_v2(pa, vb, acc * alpha[:, None])
            m = m_new
        async_copy.wait_group(0)

        out = acc * (v_scale / l)[:, None]
        orow = gl.arange(0, 16, layout=gl.SliceLayout(1, _MMA))
        n = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, _MMA))
        odim = _value_dims(n)
        oheads = kv_head * group + orow
        gl.store(out_ptr + q_start.to(gl.int64) * out_tok_stride + oheads[:, None] * out_head_stride
                 + odim[None, :], out.to(out_ptr.dtype.element_ty), mask=(orow < group)[:, None])


# (block_n, stages, keys_m) of the launch: 32-key tiles, three ring slots (two tiles in flight),
# keys and head dims as the tile rows (decode_fp8_keys_m_kernel) where the group allows. On an
# H200, us at 1000 sequences over 129..256 keys: 111.6 against 127.9 with the query heads as rows
# (benchmarks/h200-quant/README.md, run-w call 3).
DEFAULT_TILE = (32, 3, True)


def decode_fp8(q, kv_cache, meta, out, qk_scale: float, v_scale: float, block_n: int = 32,
               stages: int = 3, keys_m: bool = False, pdl: dict | None = None) -> None:
    """out[t] = attention of decode token t (one per sequence of meta) over its sequence's keys
    in the fp8 cache, without a sliding window. q, out: [num_seqs, Hq, 128] (rows may be
    strided); kv_cache: float8_e4m3fn [2, blocks, block_size, Hk, 128], 4-byte aligned;
    qk_scale: softmax scale x log2(e) x k_scale. Hq / Hk must be at most 16 (at most 8 with
    keys_m, which launches decode_fp8_keys_m_kernel)."""
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    group = q.shape[1] // num_kv_heads
    assert head_dim == 128 and group <= (8 if keys_m else 16)
    pdl = pdl or {}
    kernel = decode_fp8_keys_m_kernel if keys_m else decode_fp8_kernel
    kernel[(meta.num_seqs, num_kv_heads)](
        q, kv_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, out,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_cache.stride(0) // 4, kv_cache.stride(1) // 4, kv_cache.stride(2) // 4,
        kv_cache.stride(3) // 4, meta.block_tables.stride(0), qk_scale, v_scale, group,
        BLOCK_N=block_n, BLOCK_SIZE=block_size, STAGES=stages, PDL=pdl.get("PDL", False),
        num_warps=1,
        **({"launch_pdl": True} if pdl.get("launch_pdl") else {}))
