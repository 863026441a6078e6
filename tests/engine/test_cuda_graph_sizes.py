"""Which decode batch sizes get a CUDA graph, the --cuda-graph-sizes option, and the decode graphs'
logits buffer in the model dtype (all checked without a GPU)."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from kiln import cli
from kiln.config import EngineConfig, ModelConfig
from kiln.errors import KilnError
from kiln.layers.embedding import LMHead
from kiln.runner.cuda_graphs import batch_buckets


def test_default_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    assert batch_buckets(1000) == [1, 2, 4, 8] + list(range(16, 1000, 16)) + [1000]


def test_given_sizes_are_kept_up_to_max_num_seqs():
    assert batch_buckets(100, [64, 1, 8, 8, 512]) == [1, 8, 64]
    with pytest.raises(ValueError, match="within max_num_seqs 4"):
        batch_buckets(4, [8, 16])


def test_engine_config_checks_and_sorts_cuda_graph_sizes():
    cfg = EngineConfig(model=ModelConfig(model="m"), cuda_graph_sizes=(32, 1, 8, 8))
    assert cfg.cuda_graph_sizes == (1, 8, 32)
    assert EngineConfig(model=ModelConfig(model="m")).cuda_graph_sizes is None
    for bad in [(0, 8), (-1,), ()]:
        with pytest.raises(KilnError, match="cuda_graph_sizes"):
            EngineConfig(model=ModelConfig(model="m"), cuda_graph_sizes=bad)


def test_cli_flag_reaches_the_engine_kwargs():
    p = argparse.ArgumentParser()
    cli.add_engine_args(p)
    args = p.parse_args(["--cuda-graph-sizes", "1", "16", "512"])
    assert cli.engine_kwargs(args)["cuda_graph_sizes"] == [1, 16, 512]
    assert cli.engine_kwargs(p.parse_args([]))["cuda_graph_sizes"] is None


def test_lm_head_writes_model_dtype_logits_unconverted():
    torch.manual_seed(0)
    head = LMHead(50, 16, torch.bfloat16, "cpu")
    head.weight.copy_(torch.randn(50, 16))
    hidden = torch.randn(5, 16).to(torch.bfloat16)
    ref = F.linear(hidden, head.weight)
    out = torch.empty(8, 50, dtype=torch.bfloat16)
    got = head(hidden, out=out[:5])
    assert got.dtype == torch.bfloat16 and got.data_ptr() == out.data_ptr()
    assert torch.equal(got, ref)
    # the argmax of the bf16 logits is the argmax of their float32 copy (the conversion is exact)
    assert torch.equal(got.argmax(-1), head(hidden).argmax(-1))
    # a float32 buffer still receives the float32 copy, and no buffer gives float32
    out32 = torch.empty(5, 50, dtype=torch.float32)
    assert torch.equal(head(hidden, out=out32), ref.float())
    assert head(hidden).dtype == torch.float32


def test_quantized_lm_head_fills_the_graph_buffer():
    """A quantized head (--lm-head-quant fp8) given the decode graphs' buffer in the model dtype
    returns that buffer holding its product (its method's apply_into), the same values as its
    plain forward; a float32 buffer still gets the float32 copy."""
    from kiln.quant.fp8 import Fp8LinearMethod

    torch.manual_seed(0)
    method = Fp8LinearMethod()
    head = LMHead(48, 32, torch.bfloat16, "cpu", method=method)
    for name, value in method.quantize(torch.randn(48, 32)).items():
        getattr(head, name).copy_(value)
    hidden = torch.randn(5, 32).to(torch.bfloat16)
    ref = method.apply(head, hidden)
    out = torch.full((8, 48), float("nan"), dtype=torch.bfloat16)
    got = head(hidden, out=out[:5])
    assert got.data_ptr() == out.data_ptr() and got.shape == (5, 48)
    assert torch.equal(out[:5], ref) and out[5:].isnan().all()
    assert torch.equal(head(hidden), ref.float())
    out32 = torch.empty(5, 48, dtype=torch.float32)
    assert torch.equal(head(hidden, out=out32), ref.float())


def test_scaled_mm_rows_writes_out_itself_where_it_can():
    """The fp8 GEMM path of a quantized head: with no padding rows the product lands in ``out``
    itself; with padding rows (or a bias it cannot fuse) it is computed apart and copied."""
    from kiln.kernels.quant_act import quant_per_token
    from kiln.kernels.quant_matmul import _scaled_mm_rows
    from kiln.quant.fp8 import quantize_fp8_weight

    if not hasattr(torch, "_scaled_mm"):
        pytest.skip("this torch has no _scaled_mm")
    torch.manual_seed(0)
    x = torch.randn(32, 64).to(torch.bfloat16)
    w, ws = quantize_fp8_weight(torch.randn(48, 64))
    xq, sx = quant_per_token(x, torch.float8_e4m3fn, pad_rows_to=16)
    try:
        want = _scaled_mm_rows(xq, sx, 32, w, ws, None, torch.bfloat16)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"torch._scaled_mm does not run on this CPU build: {err}")
    out = torch.empty(32, 48, dtype=torch.bfloat16)
    got = _scaled_mm_rows(xq, sx, 32, w, ws, None, torch.bfloat16, out=out)
    assert got is out and torch.equal(out, want)
    part = torch.empty(30, 48, dtype=torch.bfloat16)
    got = _scaled_mm_rows(xq, sx, 30, w, ws, None, torch.bfloat16, out=part)
    assert got is part and torch.equal(part, want[:30])
    bias32 = torch.randn(48)
    got = _scaled_mm_rows(xq, sx, 32, w, ws, bias32, torch.bfloat16, out=out)
    assert torch.equal(got, (want.float() + bias32).to(torch.bfloat16))
