"""Reads before the PDL wait (KILN_PDL_PREWAIT): the switches, and where the sm_90 code of the
RMSNorm and decode attention kernels puts its loads relative to griddepcontrol.wait."""

from __future__ import annotations

import pytest
from gluon_sm90 import compile_sm90

from kiln import kernels
from kiln.kernels import decode_attention, rmsnorm


def test_switches(monkeypatch):
    monkeypatch.delenv("KILN_PDL_PREWAIT", raising=False)
    monkeypatch.delenv("KILN_PDL_EARLY", raising=False)
    assert kernels.weight_prewait() and kernels.pdl_prewait()
    monkeypatch.setenv("KILN_PDL_EARLY", "1")  # no kernel before is known to be done
    assert kernels.weight_prewait() and not kernels.pdl_prewait()
    monkeypatch.setenv("KILN_PDL_EARLY", "0")
    monkeypatch.setenv("KILN_PDL_PREWAIT", "0")
    assert not kernels.weight_prewait() and not kernels.pdl_prewait()


def _before_wait(ptx: str) -> str:
    head, sep, _ = ptx.partition("griddepcontrol.wait")
    assert sep, "no PDL wait in the kernel"
    return head


@pytest.mark.parametrize("kernel", ["add+norm", "norm+quant"])
def test_norm_weight_loads_before_the_wait_only_with_prewait(kernel):
    cases = []
    for pre in (True, False):
        if kernel == "add+norm":
            cases.append((rmsnorm._rms_norm_kernel,
                          {"HAS_RESIDUAL": True, "BLOCK": 4096, "PDL": 2, "PRE_WAIT": pre},
                          {"eps": "fp32"}, {"x_ptr", "res_ptr", "w_ptr", "out_ptr"}))
        else:
            cases.append((rmsnorm._rms_norm_quant_kernel,
                          {"HAS_RESIDUAL": True, "IS_INT8": False, "BLOCK": 4096, "PDL": 2,
                           "PRE_WAIT": pre, "out_ty": "tl.bfloat16"},
                          {"eps": "fp32", "q_ptr": "*fp8e4nv", "s_ptr": "*fp32"},
                          {"x_ptr", "res_ptr", "w_ptr", "q_ptr"}))
    with_pre, without = compile_sm90(cases, num_warps=8)
    assert "ld.global" in _before_wait(with_pre["ptx"])  # the weight
    assert "ld.global" not in _before_wait(without["ptx"])


def test_decode_reads_the_step_and_asks_l2_before_the_wait():
    types = {"block_tables_ptr": "*i32", "seq_lens_ptr": "*i32", "query_start_ptr": "*i32",
             "pos_ptr": "*i64", "slot_ptr": "*i64", "cos_sin_ptr": "*fp32", "lock_ptr": "*i32",
             "part_acc_ptr": "*fp32", "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32",
             "qk_scale": "fp32", "v_scale": "fp32", "k_scale_w": "fp32", "v_scale_w": "fp32",
             "codes_ptr": "*fp8e4nv", "scales_ptr": "*fp32"}
    aligned = {"q_ptr", "cache_ptr", "out_ptr", "k_new_ptr", "v_new_ptr"}
    tile = decode_attention.SMALL_DECODE_TILE
    cases = [(decode_attention._decode_partition_kernel,
              {"BLOCK_G": 16, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "BLOCK_N": tile["block_n"],
               "SINGLE": False, "USE_WINDOW": False, "DOT_PREC": "tf32", "KV_FP8": False,
               "PDL": 2, "FUSED_REDUCE": True, "GROUP_P2": 4, "MERGE_P": 16, "ROPE": True,
               "PRE_WAIT": pre, "PREFETCH_KV": pre}, types, aligned) for pre in (True, False)]
    with_pre, without = compile_sm90(cases, num_warps=tile["num_warps"])
    head = _before_wait(with_pre["ptx"])
    assert "ld.global" in head and "cp.async.bulk.prefetch.L2" in head
    assert "ld.global" not in _before_wait(without["ptx"])
    assert "cp.async.bulk.prefetch.L2" not in without["ptx"]
