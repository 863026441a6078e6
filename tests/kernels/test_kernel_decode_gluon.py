"""The Gluon decode kernel (kiln.kernels.decode_gluon) without a GPU: it compiles for sm_90, so its
chosen register layouts turn into the tensor-core operands without moving data (the kernel asks
for that with assert_trivial conversions, which fail at compile time otherwise), and its
shared-memory ring is the size its tiles need. Its results are tested on the GPU
(tests/gpu/test_fp8_kv_gpu.py, test_engine_gpu.py)."""

from __future__ import annotations

from gluon_sm90 import compile_sm90

from kiln.kernels import decode_gluon


TILES = [(32, 3, False), (16, 4, False), (32, 2, True), (16, 4, True)]


def test_gluon_decode_compiles_for_sm90_with_trivial_operand_layouts():
    types = {"cache_ptr": "*fp8e4nv", "block_tables_ptr": "*i32", "seq_lens_ptr": "*i32",
             "query_start_ptr": "*i32", "qk_scale": "fp32", "v_scale": "fp32"}
    aligned = {"q_ptr", "cache_ptr", "out_ptr"}  # 16-divisible addresses, as launches give them
    compiled = compile_sm90([
        (decode_gluon.decode_fp8_keys_m_kernel if keys_m else decode_gluon.decode_fp8_kernel,
         {"BLOCK_N": block_n, "BLOCK_SIZE": 16, "STAGES": stages, "PDL": True}, types, aligned)
        for block_n, stages, keys_m in TILES])
    for (block_n, stages, keys_m), k in zip(TILES, compiled):
        # keys and values: `stages` slots of block_n rows x 128 one-byte codes each
        assert k["shared"] == 2 * stages * block_n * 128
        assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in k["ptx"]
        assert "cvt.rn.f16x2.e4m3x2" in k["ptx"] and "prmt.b32" in k["ptx"]
        assert "cp.async" in k["ptx"] and "griddepcontrol.wait" in k["ptx"]
        assert "atom.global" not in k["ptx"], (block_n, stages, keys_m)  # no arrival counting


def test_word_layouts_cover_each_word_once():
    for block_n in (16, 32):
        for layout in decode_gluon.word_layouts(block_n):
            # 32 lanes x 2^regs elements = the tile, and every basis distinct (a bijection)
            bases = layout.reg_bases + layout.lane_bases
            assert 2 ** len(bases) == block_n * 32
            seen = {(0, 0)}
            for b in bases:
                seen |= {(r ^ b[0], c ^ b[1]) for r, c in seen}
            assert len(seen) == block_n * 32
