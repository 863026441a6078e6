"""Kernel tuning records: what `kiln build` stores in engine.json, and seeding the autotuners from it."""

from __future__ import annotations

import pytest
import torch
import triton

from build_helpers import write_calib_file, write_tiny_checkpoint

from kiln.build.tuning import _quantized_layers, apply_kernel_tuning, tune_quant_kernels
from kiln.kernels import quant_matmul as qm
from kiln.kernels import fma_gemv, quant_gemm
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
    gemv.cache[key_v] = fma_gemv.GEMV_CONFIGS[3]
    gemm.cache[key_m] = quant_gemm.GEMM_CONFIGS_BY_BUCKET[64][1]
    entries = qm.export_tuning()
    assert len(entries) == 2 and {e["kernel"] for e in entries} == {"gemv", "gemm"}
    gemv.cache.clear()
    gemm.cache.clear()
    assert qm.import_tuning(entries) == 2
    assert gemv.cache[key_v] is fma_gemv.GEMV_CONFIGS[3]
    assert gemm.cache[key_m] is quant_gemm.GEMM_CONFIGS_BY_BUCKET[64][1]


def test_import_skips_unknown_kernels_and_foreign_configs(clean_caches):
    first = fma_gemv.GEMV_CONFIGS[0]
    good = {"kernel": "gemv", "key": [1, 2], "config": dict(first.kwargs),
            "num_warps": first.num_warps, "num_stages": first.num_stages}
    foreign = {**good, "key": [3, 4], "config": {"BLOCK_N": 4096, "UNROLL": 9}}
    other_warps = {**good, "key": [5, 6], "num_warps": 32}
    unknown = {**good, "kernel": "nope"}
    no_key = {k: v for k, v in good.items() if k != "key"}
    assert qm.import_tuning([good, foreign, other_warps, unknown, no_key]) == 1
    assert list(clean_caches["gemv"].cache) == [(1, 2)]


def test_register_capped_choices_round_trip_only_where_they_are_candidates(clean_caches,
                                                                           monkeypatch):
    """A stored choice with a register cap (maxnreg) is taken only where a candidate with that
    cap is tuned; it never stands in for the uncapped configuration of the same tile, and it
    exports with its cap."""
    twin = qm.GEMV_CONFIGS[0]
    capped = triton.Config(dict(twin.kwargs), num_warps=twin.num_warps,
                           num_stages=twin.num_stages, maxnreg=64)
    entry = {"kernel": "gemv", "key": [9], "config": dict(capped.kwargs),
             "num_warps": capped.num_warps, "num_stages": capped.num_stages, "maxnreg": 64}
    assert any(qm._same_config(c, {**entry, "maxnreg": None}) for c in qm.GEMV_CONFIGS)
    assert qm.import_tuning([entry]) == 0
    monkeypatch.setattr(qm, "GEMV_CONFIGS", qm.GEMV_CONFIGS + [capped])
    assert qm.import_tuning([entry]) == 1
    assert clean_caches["gemv"].cache[(9,)] is capped
    assert qm.export_tuning() == [entry]


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
    second = fma_gemv.GEMV_CONFIGS[1]
    entry = {"kernel": "gemv", "key": [7], "config": dict(second.kwargs),
             "num_warps": second.num_warps, "num_stages": second.num_stages}
    tuned = {"kernel_tuning": {"status": "tuned", "triton": triton.__version__, "results": [entry]}}
    assert apply_kernel_tuning(tuned, "cpu") == 0
    assert apply_kernel_tuning({"kernel_tuning": {"status": "not-tuned", "results": [entry]}},
                               "cuda") == 0
    other = {"kernel_tuning": {**tuned["kernel_tuning"], "triton": "0.0.1"}}
    assert apply_kernel_tuning(other, "cuda") == 0
    assert not clean_caches["gemv"].cache


@pytest.mark.parametrize("text,want", [("1", (1,)), ("1,4,16", (1, 4, 16)), ("none", ()), ("", ())])
def test_step_tuning_batch_sizes_flag(text, want):
    import argparse

    from kiln.build.cli import add_build_parser, options_from_args

    parser = argparse.ArgumentParser(prog="kiln")
    add_build_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", "m", "-o", "e", "--step-tuning-batch-sizes", text])
    assert options_from_args(args).step_tuning_batch_sizes == want
    assert options_from_args(parser.parse_args(["build", "m", "-o", "e"])).step_tuning_batch_sizes == (1,)


@pytest.mark.parametrize("text", ["0", "1,x", "-2"])
def test_step_tuning_batch_sizes_flag_refuses_bad_values(text, capsys):
    import argparse

    from kiln.build.cli import add_build_parser

    parser = argparse.ArgumentParser(prog="kiln")
    add_build_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "m", "-o", "e", "--step-tuning-batch-sizes", text])
    assert "--step-tuning-batch-sizes" in capsys.readouterr().err


def test_cpu_build_records_no_step_tuning_and_the_step_tuning_engine_fits(tmp_path):
    """A build without the target GPU stores no tuning, so the decode-step tuning does not run;
    the engine that tuning loads holds the KV blocks its widest step needs (each row its own
    run of blocks at the context) with room for the tuner's graphs' block tables."""
    import math
    from kiln.build.builder import BuildOptions, build_engine
    from kiln.build.tuning import step_tuning_engine
    from kiln.quant.config import QuantConfig
    from kiln.tune.in_situ import decode_graphs

    src = write_tiny_checkpoint(tmp_path / "model")
    calib = write_calib_file(tmp_path / "calib.txt")
    info = build_engine(BuildOptions(str(src), str(tmp_path / "e"), quant=QuantConfig("int8-wo"),
                                     calib_data=str(calib), calib_samples=2, calib_seq_len=32,
                                     eval_tokens=0, target_gpu="cpu", device="cpu", progress=False,
                                     step_tuning_batch_sizes=(1, 4)))
    assert info["kernel_tuning"]["status"] == "not-tuned" and "in_situ" not in info["kernel_tuning"]
    engine = step_tuning_engine(info["path"], torch.device("cpu"), (1, 4), 256)
    runner = engine.runner
    assert runner.num_kv_blocks >= 4 * math.ceil(256 / runner.block_size)
    g = decode_graphs(runner, 4, 256, engine.max_model_len)  # fills the inputs, captures nothing
    assert g.seq_lens[:4].tolist() == [256] * 4
    assert len(set(g.block_tables[:4, :16].flatten().tolist())) == 4 * 16


def test_float_layers_a_triton_gemv_serves_are_tuned_on_cuda_only(monkeypatch):
    """Unquantized layers whose decode rows take the tensor-core GEMV are tuned by a build on
    the GPU, one per distinct shape (K a multiple of 32); a CPU build still needs none."""
    from kiln.build.tuning import _float_gemv_layers

    a = Linear(256, 128, bias=False, dtype=torch.float32, device="cpu")
    b = Linear(256, 128, bias=False, dtype=torch.float32, device="cpu")  # same shape as a
    c = Linear(128, 256, bias=True, dtype=torch.float32, device="cpu")
    odd = Linear(100, 64, bias=False, dtype=torch.float32, device="cpu")  # K not a multiple of 32
    q = Linear(256, 128, bias=False, dtype=torch.float32, device="cpu",
               method=Int4WeightOnlyLinearMethod(group_size=128))
    model = torch.nn.Sequential(a, b, c, odd, q)
    monkeypatch.setenv("KILN_TC_GEMV", "1")
    assert _float_gemv_layers(model) == [a, c]
    monkeypatch.setenv("KILN_TC_GEMV", "fp8")
    assert _float_gemv_layers(model) == []
    monkeypatch.setenv("KILN_TRITON_GEMV", "1")
    assert _float_gemv_layers(model) == [a, c]
    monkeypatch.setenv("KILN_TC_GEMV", "1")
    plain = torch.nn.Sequential(a, c)
    assert tune_quant_kernels(plain, torch.device("cpu"), torch.float32)["status"] == "not-needed"


def test_build_stores_the_step_tuning_and_survives_its_failure(tmp_path, monkeypatch, capsys):
    """The builder's wiring, with the GPU parts stood in for: a tuned record goes through the
    decode-step tuning at the asked batch sizes, and what it returns is what engine.json keeps and
    `kiln build` prints; when that tuning raises, the build still succeeds with the per-kernel
    tuning and records the error."""
    import json
    from pathlib import Path

    import kiln.build.builder as builder
    from kiln.cli import main

    src = write_tiny_checkpoint(tmp_path / "model")
    calib = write_calib_file(tmp_path / "calib.txt")
    record = {"status": "tuned", "triton": triton.__version__, "results": []}
    monkeypatch.setattr(builder, "tune_quant_kernels", lambda *a, **k: dict(record))
    calls = []

    def fake_steps(engine_dir, device, sizes, tuning, progress=None):
        calls.append((Path(engine_dir).name, tuple(sizes)))
        assert json.loads((Path(engine_dir) / "engine.json").read_text())["kernel_tuning"] == tuning
        return {**tuning, "in_situ": [{"batch_size": 1, "slots": 4, "changed": 2,
                                       "step_ms_before": [2.7, 2.8, 2.7],
                                       "step_ms_after": [2.6, 2.6, 2.6]}],
                "in_situ_seconds": {"engine_start": 12.5, "total": 40.25}}

    monkeypatch.setattr(builder, "tune_decode_steps", fake_steps)
    args = ["build", str(src), "-o", str(tmp_path / "e"), "--quant", "int8-wo", "--target-gpu", "cpu",
            "--device", "cpu", "--calib-data", str(calib), "--calib-samples", "2",
            "--calib-seq-len", "32", "--eval-tokens", "0", "--no-progress"]
    assert main(args + ["--step-tuning-batch-sizes", "4,1"]) == 0
    assert calls and calls[0][1] == (4, 1) and calls[0][0].startswith(".e.building-")
    stored = json.loads((tmp_path / "e" / "engine.json").read_text())["kernel_tuning"]
    assert stored["in_situ"][0]["changed"] == 2
    printed = capsys.readouterr().out
    assert "decode step at batch 1: 2.700 -> 2.600 ms after step tuning (2 of 4" in printed
    assert "step tuning took 40.2 s (12.5 s starting its engine)" in printed
    calls.clear()
    assert main(args + ["--overwrite", "--step-tuning-batch-sizes", "none"]) == 0
    assert not calls and "in_situ" not in json.loads((tmp_path / "e" / "engine.json").read_text())["kernel_tuning"]

    def broken(*a, **k):
        raise RuntimeError("graph capture failed")

    monkeypatch.setattr(builder, "tune_decode_steps", broken)
    assert main(args + ["--overwrite"]) == 0
    stored = json.loads((tmp_path / "e" / "engine.json").read_text())["kernel_tuning"]
    assert stored["status"] == "tuned" and "graph capture failed" in stored["in_situ_error"]
    assert "decode-step tuning failed" in capsys.readouterr().out
