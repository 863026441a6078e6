"""`kiln build` on a tiny checkpoint: engine directory round trip, schema, failure paths, CLI."""

import argparse
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from kiln.build.builder import BuildOptions, build_engine
from kiln.build.engine_dir import (ENGINE_JSON, WEIGHTS_FILE, is_engine_dir, load_engine_model,
                                   read_engine_info)
from kiln.errors import KilnError
from kiln.models.llama import LlamaFamilyModel
from kiln.models.loader import load_model, load_tokenizer
from kiln.quant.calibration import collect_stats, forward_windows, load_windows
from kiln.quant.config import QuantConfig, linear_method_factory
from kiln.quant.model_quant import quantize_model

from build_helpers import greedy, write_calib_file, write_tiny_checkpoint

SAMPLES, SEQ = 4, 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    src = write_tiny_checkpoint(root / "model")
    return src, write_calib_file(root / "calib.txt")


def _options(src, calib, out, scheme, **kw):
    base = dict(quant=QuantConfig(scheme), calib_data=str(calib), calib_samples=SAMPLES,
                calib_seq_len=SEQ, eval_data=str(calib), eval_tokens=256, eval_seq_len=SEQ,
                target_gpu="h200" if scheme == "fp8" else "cpu", device="cpu", progress=False)
    return BuildOptions(str(src), str(out), **{**base, **kw})


def _in_memory(src, calib, scheme):
    """The same pipeline as the builder, kept in memory: (model, tensors)."""
    model = load_model(src, dtype="float32")
    config = QuantConfig(scheme)
    stats = None
    if config.needs_calibration:
        windows = load_windows(load_tokenizer(src), str(calib), SAMPLES, SEQ)
        stats = collect_stats(model, windows, config.max_calib_rows)
    q = quantize_model(model, config, stats, torch.float32)
    record = {"scheme": scheme, "group_size": 128, "runtime_input_scale": q.runtime_input_scale}
    quant_model = LlamaFamilyModel(model.args, torch.float32, "cpu", linear_method_factory(record))
    params = dict(quant_model.named_parameters())
    assert set(params) == set(q.tensors)
    with torch.no_grad():
        for name, t in q.tensors.items():
            params[name].copy_(t)
    return quant_model.eval(), q.tensors


@pytest.mark.parametrize("scheme", ["none", "int8-wo", "int4-wo", "int4-wo-kept", "int8-sq", "fp8"])
def test_engine_round_trip_is_exact(tiny, tmp_path, scheme, monkeypatch):
    """int4-wo-kept: o_proj's AWQ scale kept as a run-time input_scale (KILN_AWQ_FOLD_O_PROJ=0),
    as engines built before 2026-12-06 hold it."""
    src, calib = tiny
    out = tmp_path / "engine"
    if scheme == "int4-wo-kept":
        scheme = "int4-wo"
        monkeypatch.setenv("KILN_AWQ_FOLD_O_PROJ", "0")
    info = build_engine(_options(src, calib, out, scheme))
    assert is_engine_dir(out) and not is_engine_dir(src)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    engine, loaded = load_engine_model(out, "cpu", check_target=(scheme != "fp8"))
    assert loaded["quantization"]["scheme"] == scheme == info["quantization"]["scheme"]
    memory, tensors = _in_memory(src, calib, scheme)
    stored = load_file(str(out / WEIGHTS_FILE))
    assert set(stored) == set(tensors)
    kept = [n for n in stored if n.endswith("input_scale")]
    assert len(kept) == (2 if os.environ.get("KILN_AWQ_FOLD_O_PROJ") == "0" else 0)
    assert loaded["quantization"].get("runtime_input_scale", []) == [n.rpartition(".")[0] for n in kept]
    for name, t in tensors.items():
        assert stored[name].dtype == t.dtype and torch.equal(stored[name].float(), t.float()), name
    windows = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(0))
    a = next(forward_windows(engine, windows))
    b = next(forward_windows(memory, windows))
    assert torch.equal(a, b)
    if scheme != "none":
        base = load_model(src, dtype="float32")
        ref = next(forward_windows(base, windows))
        assert not torch.equal(a, ref)  # really quantized
        assert (a.argmax(-1) == ref.argmax(-1)).float().mean() > 0.5
    acc = info["accuracy"]
    assert acc["measured"] and acc["num_tokens"] == 4 * (SEQ) and 0.0 <= acc["top1_agreement"] <= 1.0
    if scheme == "none":
        assert acc["top1_agreement"] == 1.0 and acc["mean_kl"] < 1e-9


def test_engine_json_schema(tiny, tmp_path):
    src, calib = tiny
    out = tmp_path / "e"
    build_engine(_options(src, calib, out, "int4-wo", max_batch_size=8, max_seq_len=300,
                          kv_cache_dtype="fp8"))
    info = read_engine_info(out)
    raw = json.loads((out / ENGINE_JSON).read_text())
    assert "path" not in raw and info["path"] == str(out.resolve())
    assert raw["format"] == "kiln-engine" and raw["format_version"] == 1
    assert raw["kiln_version"] and raw["dtype"] == "float32"
    assert raw["source"]["path"] == str(src.resolve()) and len(raw["source"]["sha256"]) == 64
    assert list(raw["source"]["files"]) == ["model.safetensors"]
    assert raw["source"]["architecture"] == "LlamaForCausalLM"
    q = raw["quantization"]
    assert q["scheme"] == "int4-wo" and q["group_size"] == 128
    assert q["calibration"] == {"source": f"file:{calib}", "num_samples": SAMPLES, "seq_len": SEQ,
                                "num_tokens": SAMPLES * SEQ}
    assert q["runtime_input_scale"] == []  # AWQ's o_proj scale folds into the v rows
    assert raw["kv_cache"]["dtype"] == "fp8"
    assert set(raw["kv_cache"]["scales"]) == {"layers.0.self_attn", "layers.1.self_attn"}
    assert raw["target"] == {"name": "cpu", "display_name": "CPU", "compute_capability": None,
                             "sm": "cpu"}
    assert raw["limits"] == {"max_batch_size": 8, "max_seq_len": 300}
    assert raw["kernel_tuning"]["status"] == "not-tuned"
    assert raw["build"]["time_s"] > 0 and raw["accuracy"]["measured"]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file()
    assert load_tokenizer(out).encode("def f():") == load_tokenizer(src).encode("def f():")


def test_accuracy_limit_failure_leaves_nothing(tiny, tmp_path):
    src, calib = tiny
    out = tmp_path / "sub" / "engine"
    with pytest.raises(KilnError) as e:
        build_engine(_options(src, calib, out, "int4-wo", max_accuracy_drop="top1=0,kl=0"))
    msg = str(e.value)
    assert "\n" not in msg and "fails --max-accuracy-drop top1=0,kl=0" in msg
    assert "mean KL" in msg and "nothing was written" in msg
    assert not out.exists() and list((tmp_path / "sub").iterdir()) == []


def test_accuracy_limit_met_builds(tiny, tmp_path):
    src, calib = tiny
    info = build_engine(_options(src, calib, tmp_path / "e", "int8-wo", max_accuracy_drop="0.5"))
    assert info["accuracy"]["top1_agreement"] >= 0.5


def test_bad_inputs(tiny, tmp_path):
    src, calib = tiny
    out = tmp_path / "e"
    with pytest.raises(KilnError, match="FP8 tensor cores.*--target-gpu h200"):
        build_engine(_options(src, calib, out, "fp8", target_gpu="cpu"))
    with pytest.raises(KilnError, match="unknown target GPU 'z80'"):
        build_engine(_options(src, calib, out, "int8-wo", target_gpu="z80"))
    with pytest.raises(KilnError, match="unknown metric 'acc'"):
        build_engine(_options(src, calib, out, "int8-wo", max_accuracy_drop="acc=1"))
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(KilnError, match="--overwrite"):
        build_engine(_options(src, calib, out, "int8-wo"))
    assert (out / "keep.txt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_build(tiny, tmp_path, capsys):
    from kiln.build.cli import add_build_parser

    src, calib = tiny
    parser = argparse.ArgumentParser(prog="kiln")
    add_build_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli-engine"
    args = parser.parse_args(["build", str(src), "--output", str(out), "--quant", "int8-wo",
                              "--calib-data", str(calib), "--eval-data", str(calib),
                              "--eval-tokens", "128", "--target-gpu", "cpu", "--device", "cpu",
                              "--max-accuracy-drop", "top1=0.5,ppl=1", "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"built int8-wo engine for cpu" in printed and str(out) in printed
    assert "top-1 agreement" in printed
    model, info = load_engine_model(out, "cpu")
    tokens = greedy(model, [0, 5, 6, 7], 6)
    assert len(tokens) == 6 and all(0 <= t < 4096 for t in tokens)


@pytest.mark.parametrize("scheme", ["none", "int8-wo", "fp8"])
def test_fp8_lm_head(tiny, tmp_path, scheme):
    # --lm-head-quant fp8 stores the head as fp8 codes + per-channel scales beside any scheme,
    # records it in engine.json, and the loaded head computes the fp8 W8A8 product.
    from kiln.build.cli import add_build_parser, options_from_args
    from kiln.kernels.quant_ref import fp8_linear_ref

    src, calib = tiny
    parser = argparse.ArgumentParser(prog="kiln")
    add_build_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", str(src), "-o", str(tmp_path / "x"), "--quant", scheme,
                              "--lm-head-quant", "fp8"])
    assert options_from_args(args).quant.lm_head == "fp8"
    out = tmp_path / "engine"
    info = build_engine(_options(src, calib, out, scheme, target_gpu="h200",
                                 quant=QuantConfig(scheme, lm_head="fp8")))
    assert info["quantization"]["lm_head"] == "fp8"
    stored = load_file(str(out / WEIGHTS_FILE))
    assert stored["lm_head.weight"].dtype == torch.float8_e4m3fn
    assert stored["lm_head.weight_scale"].shape == (4096,)
    engine, loaded = load_engine_model(out, "cpu", check_target=False)
    assert engine.lm_head.is_quantized and loaded["quantization"]["lm_head"] == "fp8"
    hidden = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    want = fp8_linear_ref(hidden, stored["lm_head.weight"], stored["lm_head.weight_scale"])
    assert torch.equal(engine.compute_logits(hidden), want.float())
    # The rest of the model is what the same build without the option gives.
    plain = tmp_path / "plain"
    build_engine(_options(src, calib, plain, scheme, target_gpu="h200", eval_tokens=0))
    other = load_file(str(plain / WEIGHTS_FILE))
    assert set(stored) - set(other) == {"lm_head.weight_scale"}
    for name in set(other) - {"lm_head.weight"}:
        assert torch.equal(stored[name].float(), other[name].float()), name
    ref = load_model(src, dtype="float32")
    windows = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(0))
    a, b = next(forward_windows(engine, windows)), next(forward_windows(ref, windows))
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.5


@pytest.mark.parametrize("head", ["int8-wo", "int4-wo"])
@pytest.mark.parametrize("scheme", ["none", "int4-wo"])
def test_weight_only_lm_head(tiny, tmp_path, scheme, head):
    # --lm-head-quant int8-wo / int4-wo stores the head weight-only (rounded to nearest, no
    # calibration) beside any scheme, on a CPU target too; engine.json records it (and the int4
    # head's group size), and the loaded head computes the weight-only product.
    from kiln.kernels.quant_ref import int4_wo_linear_ref, int8_wo_linear_ref
    from kiln.quant.int4 import quantize_int4_groupwise

    src, calib = tiny
    out = tmp_path / "engine"
    info = build_engine(_options(src, calib, out, scheme,
                                 quant=QuantConfig(scheme, lm_head=head, group_size=64)))
    assert info["quantization"]["lm_head"] == head
    stored = load_file(str(out / WEIGHTS_FILE))
    ref_model = load_model(src, dtype="float32")
    w = ref_model.lm_head.weight.detach()
    hidden = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    engine, loaded = load_engine_model(out, "cpu")
    assert engine.lm_head.is_quantized and loaded["quantization"]["lm_head"] == head
    if head == "int4-wo":
        assert loaded["quantization"]["lm_head_group_size"] == 64
        packed, scales = quantize_int4_groupwise(w, 64, 1.0)
        assert torch.equal(stored["lm_head.qweight"], packed)
        assert torch.equal(stored["lm_head.scales"], scales)
        want = int4_wo_linear_ref(hidden, packed, scales, 64)
    else:
        assert stored["lm_head.qweight"].dtype == torch.int8
        want = int8_wo_linear_ref(hidden, stored["lm_head.qweight"], stored["lm_head.scales"])
    assert "lm_head.weight" not in stored
    assert torch.equal(engine.compute_logits(hidden), want.float())
    windows = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(0))
    a, b = next(forward_windows(engine, windows)), next(forward_windows(ref_model, windows))
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.5


def test_fp8_lm_head_refusals(tiny, tmp_path):
    src, calib = tiny
    with pytest.raises(KilnError, match="--lm-head-quant fp8 needs a GPU with FP8"):
        build_engine(_options(src, calib, tmp_path / "e", "int8-wo",
                              quant=QuantConfig("int8-wo", lm_head="fp8")))
    with pytest.raises(KilnError, match="unknown LM head quantization 'int4'"):
        QuantConfig("fp8", lm_head="int4")
    with pytest.raises(KilnError, match="stores its LM head as 'fp4'"):
        linear_method_factory({"scheme": "fp8", "lm_head": "fp4"})
    assert linear_method_factory({"scheme": "none"}) is None
    factory = linear_method_factory({"scheme": "none", "lm_head": "fp8"})
    assert factory("layers.0.mlp.down_proj", 8, (8,)) is None
    assert factory("lm_head", 8, (8,)).scheme == "fp8"
    factory = linear_method_factory({"scheme": "fp8", "lm_head": "int4-wo",
                                     "lm_head_group_size": 32})
    assert factory("layers.0.mlp.down_proj", 8, (8,)).scheme == "fp8"
    assert factory("lm_head", 8, (8,)).group_size == 32


@pytest.mark.parametrize("scheme, head", [("none", "int8-wo"), ("int4-wo", "int4-wo"),
                                          ("fp8", "fp8")])
def test_quantized_head_of_a_tied_model(tmp_path, scheme, head):
    # A model whose head is tied to the token embedding: --lm-head-quant stores a quantized copy
    # of the table as the head's own tensors; the embedding keeps the float table for its
    # lookups, and the loaded engine's head is quantized and no longer tied.
    from kiln.kernels.quant_ref import int4_wo_linear_ref
    from kiln.quant.int4 import quantize_int4_groupwise

    src = write_tiny_checkpoint(tmp_path / "tied", tied=True)
    calib = write_calib_file(tmp_path / "calib.txt")
    ref_model = load_model(src, dtype="float32")
    assert ref_model.lm_head.is_tied
    table = ref_model.embed_tokens.weight.detach()
    out = tmp_path / "engine"
    build_engine(_options(src, calib, out, scheme,
                          quant=QuantConfig(scheme, lm_head=head, group_size=64)))
    stored = load_file(str(out / WEIGHTS_FILE))
    assert torch.equal(stored["embed_tokens.weight"], table)
    names = {"fp8": {"weight", "weight_scale"}}.get(head, {"qweight", "scales"})
    assert {k for k in stored if k.startswith("lm_head.")} == {f"lm_head.{n}" for n in names}
    assert not stored[f"lm_head.{'weight' if head == 'fp8' else 'qweight'}"].is_floating_point() \
        or stored["lm_head.weight"].dtype == torch.float8_e4m3fn
    engine, loaded = load_engine_model(out, "cpu", check_target=scheme != "fp8")
    assert loaded["quantization"]["lm_head"] == head
    assert engine.lm_head.is_quantized and not engine.lm_head.is_tied
    assert torch.equal(engine.embed_tokens.weight, table)
    hidden = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    if head == "int4-wo":
        packed, scales = quantize_int4_groupwise(table, 64, 1.0)
        assert torch.equal(stored["lm_head.qweight"], packed)
        assert torch.equal(engine.compute_logits(hidden),
                           int4_wo_linear_ref(hidden, packed, scales, 64).float())
    logits, want = engine.compute_logits(hidden), ref_model.compute_logits(hidden)
    assert not torch.equal(logits, want)
    # relative error of the rounded table: 4 bits about 0.1, fp8 about 0.03, 8 bits far less
    assert float((logits - want).norm() / want.norm()) < {"int4-wo": 0.2, "fp8": 0.06}.get(head, 0.01)
    windows = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(0))
    a, b = next(forward_windows(engine, windows)), next(forward_windows(ref_model, windows))
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.5


def test_int4_engine_loads_into_row_blocks(tiny, tmp_path, monkeypatch):
    # KILN_INT4_ROW_BLOCK: an int4 engine loaded for the Triton kernels holds every int4 layer's
    # qweight (the int4 LM head's too) in blocks of rows, through the engine loader's
    # finish_loading; the engine files stay row-major. On the CPU the dispatcher's reference path
    # reads the blocks back, so the logits are the row-major engine's bits.
    import kiln.quant.int4 as int4
    from kiln.kernels.int4_bits import untile_int4_rows

    src, calib = tiny
    out = tmp_path / "engine"
    build_engine(_options(src, calib, out, "int4-wo",
                          quant=QuantConfig("int4-wo", lm_head="int4-wo", group_size=64)))
    plain, _ = load_engine_model(out, "cpu")
    monkeypatch.setenv("KILN_INT4_ROW_BLOCK", "16")
    monkeypatch.setattr(int4, "use_triton", lambda t: True)  # as when loading onto the GPU
    blocked, _ = load_engine_model(out, "cpu")
    pairs = [(a, b) for a, b in zip(plain.modules(), blocked.modules())
             if isinstance(getattr(a, "method", None), int4.Int4WeightOnlyLinearMethod)]
    assert len(pairs) > 2 and any(a is plain.lm_head for a, _ in pairs)
    for a, b in pairs:
        assert a.int4_row_block == 1 and b.int4_row_block == 16
        assert not torch.equal(b.qweight, a.qweight)
        assert torch.equal(untile_int4_rows(b.qweight, 16, a.method.group_size), a.qweight)
    assert torch.equal(load_file(str(out / WEIGHTS_FILE))["lm_head.qweight"], plain.lm_head.qweight)
    windows = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(next(forward_windows(blocked, windows)), next(forward_windows(plain, windows)))
