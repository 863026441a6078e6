"""The Gluon decode kernel (kiln.kernels.decode_gluon) without a GPU: it compiles for sm_90, so its
chosen register layouts turn into the tensor-core operands without moving data (the kernel asks
for that with assert_trivial conversions, which fail at compile time otherwise), and its
shared-memory ring is the size its tiles need. Its results are tested on the GPU
(tests/gpu/test_fp8_kv_gpu.py, test_engine_gpu.py)."""

from __future__ import annotations

from gluon_sm90 import compile_sm90

from kiln.kernels import decode_gluon


TILES = [(32, 3, False, 0), (16, 4, False, 0), (32, 2, True, 0), (16, 4, True, 0),
         (32, 3, True, 4096), (32, 3, False, 4096)]


def test_gluon_decode_compiles_for_sm90_with_trivial_operand_layouts():
    types = {"cache_ptr": "*fp8e4nv", "block_tables_ptr": "*i32", "seq_lens_ptr": "*i32",
             "query_start_ptr": "*i32", "lock_ptr": "*i32", "codes_ptr": "*fp8e4nv",
             "scales_ptr": "*fp32", "qk_scale": "fp32", "v_scale": "fp32"}
    # 16-divisible as launches give them: the tensors' addresses, and the quantized rows' stride
    aligned = {"q_ptr", "cache_ptr", "out_ptr", "lock_ptr", "codes_ptr", "scales_ptr",
               "codes_stride"}
    compiled = compile_sm90([
        (decode_gluon.decode_fp8_keys_m_kernel if keys_m else decode_gluon.decode_fp8_kernel,
         {"BLOCK_N": block_n, "BLOCK_SIZE": 16, "STAGES": stages, "PDL": True,
          "QUANT_ROW": quant_row}, types, aligned)
        for block_n, stages, keys_m, quant_row in TILES])
    kernels = {f"{block_n},{stages},{keys_m},{quant_row}": k
               for (block_n, stages, keys_m, quant_row), k in zip(TILES, compiled)}
    for block_n, stages, keys_m, quant_row in TILES:
        k = kernels[f"{block_n},{stages},{keys_m},{quant_row}"]
        # keys and values: `stages` slots of block_n rows x 128 one-byte codes each (the ring's
        # space is reused by the row quantization's reduction)
        assert k["shared"] == 2 * stages * block_n * 128
        assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in k["ptx"]
        assert "cvt.rn.f16x2.e4m3x2" in k["ptx"] and "prmt.b32" in k["ptx"]
        assert "cp.async" in k["ptx"] and "griddepcontrol.wait" in k["ptx"]
        # the row quantization: an acq_rel arrival count, the row read from L2, e4m3 codes
        quantizes = ("atom.global.gpu.acq_rel.add" in k["ptx"] and "ld.global.cg.v4" in k["ptx"]
                     and "cvt.rn.satfinite.e4m3x2.f32" in k["ptx"])
        assert quantizes == bool(quant_row), (block_n, stages, keys_m, quant_row)


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
