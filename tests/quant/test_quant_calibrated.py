"""Calibration statistics, SmoothQuant folding, AWQ search and whole-model quantization."""

import json

import pytest
import torch

from kiln.errors import KilnError
from kiln.quant.awq import awq_search, output_error
from kiln.quant.calibration import collect_stats, file_texts, make_windows
from kiln.quant.config import QuantConfig
from kiln.quant.model_quant import fold_input_scale, group_shared, quantize_model, smooth_model
from kiln.quant.smoothquant import smoothing_scales

from quant_helpers import logits_of, random_model, random_windows


@pytest.fixture(scope="module")
def calibrated():
    model = random_model()
    windows = random_windows(model.args, num=4, seq_len=32)
    return model, windows, collect_stats(model, windows, max_rows=64, batch_size=2)


def test_stats_match_a_direct_hook(calibrated):
    model, windows, stats = calibrated
    expected = set()
    for i in range(2):
        expected |= {f"layers.{i}.self_attn.qkv_proj", f"layers.{i}.self_attn.o_proj",
                     f"layers.{i}.mlp.gate_up_proj", f"layers.{i}.mlp.down_proj"}
    assert set(stats.linears) == expected
    seen = []
    h = model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    logits_of(model, windows)
    h.remove()
    x = torch.cat(seen)
    st = stats.linears["layers.1.mlp.down_proj"]
    assert st.count == windows.num_tokens == x.shape[0]
    torch.testing.assert_close(st.absmax, x.abs().amax(0))
    torch.testing.assert_close(st.absmean, x.abs().mean(0))
    rows = st.sample()
    assert rows.shape == (64, 256)
    torch.testing.assert_close(rows, x[::2])  # 128 tokens, at most 64 rows: every second one
    assert set(stats.kv_absmax) == {"layers.0.self_attn", "layers.1.self_attn"}
    assert all(k > 0 and v > 0 for k, v in stats.kv_absmax.values())


def test_smoothquant_folding_keeps_the_float_model(calibrated):
    _, windows, stats = calibrated
    model = random_model()
    before = logits_of(model, windows)
    norm_before = model.layers[0].input_layernorm.weight.clone()
    scales = smooth_model(model, stats, alpha=0.5)
    assert len(scales) == 8  # o_proj too: its s shared within each group of query heads, folded into v
    o = scales["layers.0.self_attn.o_proj"].reshape(2, 2, -1)  # (kv head, query head of its group, d)
    assert torch.equal(o[:, 0], o[:, 1])
    # Smoothing really changed the weights (outlier channels were moved into them).
    assert not torch.allclose(model.layers[0].input_layernorm.weight, norm_before)
    torch.testing.assert_close(logits_of(model, windows), before, rtol=1e-4, atol=1e-3)


def test_smoothing_flattens_activation_outliers(calibrated):
    _, _, stats = calibrated
    model = random_model()
    st = stats.linears["layers.0.self_attn.qkv_proj"]
    w = model.layers[0].self_attn.qkv_proj.weight
    s = smoothing_scales(st.absmax, w, 0.5)
    ratio_before = float(st.absmax.max() / st.absmax.median())
    ratio_after = float((st.absmax / s).max() / (st.absmax / s).median())
    assert ratio_after < ratio_before / 3
    manual = st.absmax.sqrt() / w.abs().amax(0).sqrt()
    torch.testing.assert_close(s, manual)


def test_awq_beats_rtn_on_outlier_channels():
    g = torch.Generator().manual_seed(0)
    k = 256
    x = torch.randn(256, k, generator=g)
    x[:, torch.arange(0, k, 29)] *= 40.0  # a few channels with huge activations
    w = torch.randn(64, k, generator=g) * 0.05
    result = awq_search(w, x, x.abs().mean(0), group_size=128, grid_points=20)
    assert result.alpha > 0
    assert result.error < 0.7 * result.rtn_error
    assert result.rtn_error == pytest.approx(output_error(w, x, None, 128))
    assert result.error == pytest.approx(output_error(w, x, result.scales, 128))


@pytest.mark.parametrize("scheme", ["int8-sq", "int4-wo", "int8-wo", "fp8"])
def test_quantize_model_tensors(calibrated, scheme):
    _, _, stats = calibrated
    model = random_model()
    out = quantize_model(model, QuantConfig(scheme), stats)
    t = out.tensors
    names = {"int8-wo": ("qweight", "scales"), "int4-wo": ("qweight", "scales"),
             "fp8": ("weight", "weight_scale"), "int8-sq": ("weight", "weight_scale")}[scheme]
    for i in range(2):
        for lin in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
            for n in names:
                assert f"layers.{i}.{lin}.{n}" in t
            assert t[f"layers.{i}.{lin}.{names[1]}"].dtype == torch.float32
            if names[0] != "weight":
                assert f"layers.{i}.{lin}.weight" not in t  # no float copy left behind
    assert t["embed_tokens.weight"].dtype == torch.float32 and "lm_head.weight" in t
    # AWQ's o_proj scale folds into the v rows (shared within each group of query heads), so no
    # scheme keeps an input scale at run time
    assert out.runtime_input_scale == [] and not any(k.endswith("input_scale") for k in t)
    if scheme in ("int4-wo", "int8-sq"):  # the schemes that fold a scale into the v rows
        assert set(out.v_absmax_gain) == {"layers.0.self_attn", "layers.1.self_attn"}
        assert all(g > 0 for g in out.v_absmax_gain.values())
    else:
        assert out.v_absmax_gain == {}
    if scheme == "int4-wo":
        assert t["layers.0.mlp.gate_up_proj.qweight"].shape == (512, 64)
        assert set(out.details["awq_alpha"]) == set(stats.linears)


@pytest.mark.parametrize("bias", [False, True])
def test_o_proj_scale_folds_into_v_rows(calibrated, bias):
    """A per-channel o_proj scale shared within each group of query heads folds into qkv_proj's v
    rows (and bias) and leaves the float model's function unchanged; an s that differs within a
    group is refused, changing nothing."""
    _, windows, _ = calibrated
    model = random_model()
    attn = model.layers[0].self_attn
    if bias:
        attn.qkv_proj.bias = torch.nn.Parameter(0.05 * torch.randn(attn.qkv_proj.out_features))
    before = logits_of(model, windows)
    g = torch.Generator().manual_seed(3)
    free = torch.rand(attn.q_size, generator=g) * 3 + 0.25
    qkv = attn.qkv_proj.weight.detach().clone()
    assert not fold_input_scale(model, "layers.0.self_attn.o_proj", free)
    torch.testing.assert_close(attn.qkv_proj.weight, qkv, rtol=0, atol=0)
    s = group_shared(free, attn)
    heads = s.reshape(attn.num_kv_heads, attn.num_heads // attn.num_kv_heads, attn.head_dim)
    assert torch.equal(heads[:, 0], heads[:, 1]) and not torch.equal(heads[0, 0], heads[1, 0])
    assert fold_input_scale(model, "layers.0.self_attn.o_proj", s)
    lo = attn.q_size + attn.kv_size
    torch.testing.assert_close(attn.qkv_proj.weight[lo:], qkv[lo:] / heads[:, 0].reshape(-1)[:, None])
    torch.testing.assert_close(attn.qkv_proj.weight[:lo], qkv[:lo], rtol=0, atol=0)
    torch.testing.assert_close(logits_of(model, windows), before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scheme", ["int4-wo", "int8-sq"])
def test_fp8_kv_scales_cover_the_folded_v(calibrated, scheme):
    """quantize_model's v_absmax_gain bounds the largest |v| of the folded model from the float
    model's calibration (the builder raises each layer's fp8 v_scale by it)."""
    _, windows, stats = calibrated
    model = random_model()
    out = quantize_model(model, QuantConfig(scheme), stats)
    # the model now holds the folded float weights (the quantized ones are in out.tensors)
    folded = collect_stats(model, windows, max_rows=8, batch_size=2)
    for name, (_, v) in folded.kv_absmax.items():
        assert v <= stats.kv_absmax[name][1] * out.v_absmax_gain[name] * (1 + 1e-5)
    assert any(abs(v / stats.kv_absmax[n][1] - 1) > 1e-3 for n, (_, v) in folded.kv_absmax.items())


def test_quantize_needs_stats():
    with pytest.raises(KilnError, match="calibration"):
        quantize_model(random_model(), QuantConfig("int4-wo"), None)


def test_make_windows_and_files(tmp_path):
    class Tok:
        bos_token_id, eos_token_id = 1, 2

        def encode(self, text, add_special_tokens=False):
            return [3 + (ord(c) % 50) for c in text]

    w = make_windows(Tok(), ["abcd" * 10, "xyz" * 20], num_samples=5, seq_len=16, source="t")
    assert w.windows.shape == (5, 16) and w.windows[0, 0] == 1
    assert w.describe() == {"source": "t", "num_samples": 5, "seq_len": 16, "num_tokens": 80}
    assert make_windows(Tok(), ["ab" * 20], num_samples=9, seq_len=16, source="t").num_samples == 2
    with pytest.raises(KilnError, match="fewer than one window"):
        make_windows(Tok(), ["ab"], 4, 16, "t")
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert list(file_texts(jl)) == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(KilnError, match="bad.jsonl:1"):
        list(file_texts(bad))
    txt = tmp_path / "c.txt"
    txt.write_text("plain text")
    assert list(file_texts(txt)) == ["plain text"]
    with pytest.raises(KilnError, match="does not exist"):
        list(file_texts(tmp_path / "missing.txt"))


def test_demo_corpus_calibration_and_eval_splits_differ():
    from kiln.demo import DEMO_MODEL
    from kiln.models.loader import load_tokenizer
    from kiln.quant.calibration import load_windows

    tok = load_tokenizer(DEMO_MODEL)
    train = load_windows(tok, None, 4, 64, split="train")
    test = load_windows(tok, None, 4, 64, split="test")
    assert train.source == "demo-corpus:train" and test.source == "demo-corpus:test"
    assert train.windows.shape == test.windows.shape == (4, 64)
    assert not torch.equal(train.windows, test.windows)
    assert torch.equal(train.windows, load_windows(tok, None, 4, 64, split="train").windows)


def test_o_proj_fold_can_be_turned_off(calibrated, monkeypatch):
    """KILN_AWQ_FOLD_O_PROJ=0 keeps o_proj's AWQ scale at run time (input_scale), qkv untouched."""
    _, _, stats = calibrated
    monkeypatch.setenv("KILN_AWQ_FOLD_O_PROJ", "0")
    out = quantize_model(random_model(), QuantConfig("int4-wo"), stats)
    assert out.runtime_input_scale == ["layers.0.self_attn.o_proj", "layers.1.self_attn.o_proj"]
    assert out.tensors["layers.0.self_attn.o_proj.input_scale"].shape == (128,)
    assert out.v_absmax_gain == {}
