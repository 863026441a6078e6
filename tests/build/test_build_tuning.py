"""Kernel tuning records: what `kiln build` stores in engine.json, and seeding the autotuners from it."""

from __future__ import annotations

import pytest
import torch
import triton

from kiln.build.tuning import _quantized_layers, apply_kernel_tuning, tune_quant_kernels
from kiln.kernels import quant_matmul as qm
from kiln.layers.linear import Linear
from kiln.quant.int4 import Int4WeightOnlyLinearMethod


@pytest.fixture
def clean_caches():
    """Empty autotuner caches before and after (the tests below write into them)."""
    saved = {name: dict(k.cache) for name, k in qm.tuned_kernels().items()}
    for k in qm.tuned_kernels().values():
        k.cache.clear()
    yield qm.tuned_kernels()
    for name, k in qm.tuned_kernels().items():
        k.cache.clear()
        k.cache.update(saved[name])


def test_export_then_import_restores_the_choices(clean_caches):
    gemv, gemm = clean_caches["gemv"], clean_caches["gemm"]
    key_v = (4096, 14336, qm.W_FP8, True, 128, 0, False, 1, "torch.bfloat16", "torch.float32")
    key_m = (6144, 4096, qm.W_INT4, False, 128, 0, True, 64, "torch.float16")
    gemv.cache[key_v] = qm.GEMV_CONFIGS[3]
    gemm.cache[key_m] = qm.GEMM_CONFIGS_BY_BUCKET[64][1]
    entries = qm.export_tuning()
    assert len(entries) == 2 and {e["kernel"] for e in entries} == {"gemv", "gemm"}
    gemv.cache.clear()
    gemm.cache.clear()
    assert qm.import_tuning(entries) == 2
    assert gemv.cache[key_v] is qm.GEMV_CONFIGS[3]
    assert gemm.cache[key_m] is qm.GEMM_CONFIGS_BY_BUCKET[64][1]


def test_import_skips_unknown_kernels_and_foreign_configs(clean_caches):
    good = {"kernel": "gemv", "key": [1, 2], "config": dict(qm.GEMV_CONFIGS[0].kwargs),
            "num_warps": qm.GEMV_CONFIGS[0].num_warps, "num_stages": qm.GEMV_CONFIGS[0].num_stages}
    foreign = {**good, "key": [3, 4], "config": {"BLOCK_N": 4096, "UNROLL": 9}}
    other_warps = {**good, "key": [5, 6], "num_warps": 32}
    unknown = {**good, "kernel": "nope"}
    no_key = {k: v for k, v in good.items() if k != "key"}
    assert qm.import_tuning([good, foreign, other_warps, unknown, no_key]) == 1
    assert list(clean_caches["gemv"].cache) == [(1, 2)]


def test_records_without_a_gpu_or_without_quantized_layers():
    layer = Linear(256, 128, bias=False, dtype=torch.float32, device="cpu",
                   method=Int4WeightOnlyLinearMethod(group_size=128))
    model = torch.nn.Sequential(layer, Linear(128, 64, bias=False, dtype=torch.float32, device="cpu"))
    assert _quantized_layers(model) == [layer]
    rec = tune_quant_kernels(model, torch.device("cpu"), torch.float32)
    assert rec["status"] == "not-tuned" and "without the target GPU" in rec["reason"]
    plain = torch.nn.Sequential(Linear(128, 64, bias=False, dtype=torch.float32, device="cpu"))
    assert tune_quant_kernels(plain, torch.device("cpu"), torch.float32)["status"] == "not-needed"


def test_apply_only_takes_tuned_records_for_cuda_and_the_same_triton(clean_caches):
    entry = {"kernel": "gemv", "key": [7], "config": dict(qm.GEMV_CONFIGS[1].kwargs),
             "num_warps": qm.GEMV_CONFIGS[1].num_warps, "num_stages": qm.GEMV_CONFIGS[1].num_stages}
    tuned = {"kernel_tuning": {"status": "tuned", "triton": triton.__version__, "results": [entry]}}
    assert apply_kernel_tuning(tuned, "cpu") == 0
    assert apply_kernel_tuning({"kernel_tuning": {"status": "not-tuned", "results": [entry]}},
                               "cuda") == 0
    other = {"kernel_tuning": {**tuned["kernel_tuning"], "triton": "0.0.1"}}
    assert apply_kernel_tuning(other, "cuda") == 0
    assert not clean_caches["gemv"].cache
