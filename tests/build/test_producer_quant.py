"""KILN_PRODUCER_QUANT: an fp8 engine's norms and SiLU-mul quantize their linears' inputs (checked
on the CPU through the references; the Triton kernels' bits are checked in tests/kernels)."""

import pytest
import torch

from build_helpers import write_tiny_checkpoint
from kiln.build.builder import BuildOptions, build_engine
from kiln.build.engine_dir import load_engine_model
from kiln.layers.forward_context import build_attention_metadata
from kiln.quant.config import QuantConfig


def _logits(model, tokens, rows=None):
    args = model.args
    caches = [torch.zeros(2, 4, 16, args.num_key_value_heads, args.head_dim, dtype=torch.bfloat16)
              for _ in range(args.num_hidden_layers)]
    meta = build_attention_metadata([(0, len(tokens), [0, 1, 2, 3])], 16)
    with torch.no_grad():
        hidden = model(torch.tensor(tokens), torch.arange(len(tokens)), caches, meta,
                       None if rows is None else torch.tensor(rows))
        return model.compute_logits(hidden)


def _engine(tmp_path, scheme):
    src = write_tiny_checkpoint(tmp_path / "src")
    opts = BuildOptions(str(src), str(tmp_path / scheme), QuantConfig(scheme), eval_tokens=0,
                        target_gpu="h200" if scheme == "fp8" else None, device="cpu",
                        progress=False)
    return build_engine(opts)["path"]


@pytest.mark.parametrize("attn", ["0", "1"])
def test_fp8_engine_producers_quantize_with_the_same_logits(tmp_path, attn, monkeypatch):
    # attn 1 (KILN_ATTN_QUANT_OUT): the attention quantizes o_proj's input too (on the CPU through
    # quantize_rows; the decode kernel's own quantization is checked in tests/kernels)
    monkeypatch.setenv("KILN_ATTN_QUANT_OUT", attn)
    path = _engine(tmp_path, "fp8")
    model, _ = load_engine_model(path, "cpu", dtype="bfloat16", check_target=False)
    tokens = [5, 9, 13, 40, 7, 7, 21, 3, 11, 2, 30, 17, 8, 4, 19, 6, 25, 12, 1, 14]  # 20 rows: padded
    plain = _logits(model, tokens)
    assert model.quantize_in_producers() == (3 + int(attn)) * model.args.num_hidden_layers
    assert all(layer.input_layernorm.quant_dtype == torch.float8_e4m3fn
               and layer.mlp.act.quant_dtype == torch.float8_e4m3fn for layer in model.layers)
    assert all((layer.self_attn.quant_dtype is not None) == (attn == "1") for layer in model.layers)
    assert model.norm.quant_dtype is None  # the final norm feeds the bf16 lm_head
    fused = _logits(model, tokens)
    assert torch.equal(fused, plain)
    # the last layer on a few rows only (the engine's sampled rows), quantized rows included
    assert torch.allclose(_logits(model, tokens, [19, 4]), fused[[19, 4]], rtol=0, atol=1e-6)
    short = _logits(model, tokens[:3])  # 3 rows: no padding
    assert model.quantize_in_producers(False) == 0
    assert model.layers[0].input_layernorm.quant_dtype is None and model.layers[0].mlp.act.quant_dtype is None
    assert model.layers[0].self_attn.quant_dtype is None
    assert torch.equal(_logits(model, tokens[:3]), short)


def test_producers_of_other_schemes_stay_float(tmp_path):
    path = _engine(tmp_path, "int8-wo")
    model, _ = load_engine_model(path, "cpu", dtype="float32")
    assert model.quantize_in_producers() == 0
    assert all(layer.post_attention_layernorm.quant_dtype is None for layer in model.layers)
