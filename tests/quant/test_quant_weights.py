"""Weight quantizers: layouts, round-trip error bounds, and the LinearMethods' arithmetic."""

import pytest
import torch

from kiln.layers.linear import Linear
from kiln.quant.fp8 import Fp8LinearMethod, quantize_fp8_weight
from kiln.quant.int4 import (Int4WeightOnlyLinearMethod, dequantize_int4, pack_int4,
                             quantize_int4_groupwise, search_clip, unpack_int4)
from kiln.quant.int8 import Int8WeightOnlyLinearMethod, dequantize_int8, quantize_int8_per_channel
from kiln.quant.smoothquant import Int8SmoothQuantLinearMethod


def _weight(n=48, k=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[3] *= 50.0  # one row with a much larger range: scales must be per row
    return w


def _layer(method, n=48, k=256, bias=True):
    return Linear(k, n, bias, torch.float32, "cpu", method=method)


def test_int8_layout_and_error_bound():
    w = _weight()
    q, scales = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scales.dtype == torch.float32 and scales.shape == (w.shape[0],)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    err = (dequantize_int8(q, scales) - w).abs()
    assert bool((err <= scales[:, None] / 2 + 1e-6).all())
    # The big row keeps its own scale: small rows are not crushed by it.
    assert scales[3] > 20 * scales[0]


def test_int8_method_matches_dequantized_matmul():
    w, b = _weight(), torch.randn(48)
    layer = _layer(Int8WeightOnlyLinearMethod())
    for name, t in {**Int8WeightOnlyLinearMethod.quantize(w), "bias": b}.items():
        layer.load_shard(name, t, None, name)
    x = torch.randn(5, 256)
    ref = x @ dequantize_int8(layer.qweight, layer.scales).T + b
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-4)
    assert (layer(x) - (x @ w.T + b)).abs().max() < 0.05 * (x @ w.T).abs().max()


def test_int4_pack_layout():
    q = torch.tensor([[-8, 7, 0, -1, 3, -3]])
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 3)
    # byte j: k = 2j in the low nibble, k = 2j + 1 in the high nibble, each stored as q + 8.
    assert packed.tolist() == [[0 | (15 << 4), 8 | (7 << 4), 11 | (5 << 4)]]
    every = torch.arange(-8, 8).repeat(3, 2)
    assert torch.equal(unpack_int4(pack_int4(every)), every.to(torch.int8))


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_layout_and_error_bound(group_size):
    w = _weight()
    packed, scales = quantize_int4_groupwise(w, group_size)
    assert packed.dtype == torch.uint8 and packed.shape == (48, 128)
    assert scales.dtype == torch.float32 and scales.shape == (48, 256 // group_size)
    deq = dequantize_int4(packed, scales, group_size)
    err = (deq - w).abs()
    bound = scales.repeat_interleave(group_size, dim=1) / 2 + 1e-6
    assert bool((err <= bound).all())
    # Each group's largest magnitude is represented exactly (it maps to +-7).
    groups = w.reshape(48, -1, group_size).abs().amax(-1)
    torch.testing.assert_close(scales * 7, groups)


def test_int4_rejects_bad_group():
    from kiln.errors import KilnError
    with pytest.raises(KilnError, match="divisible"):
        quantize_int4_groupwise(torch.randn(4, 96), 64)
    with pytest.raises(KilnError, match="group size"):
        quantize_int4_groupwise(torch.randn(4, 96), 48)


def test_clip_search_never_worse_than_no_clipping():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 256, generator=g)
    w[:, ::37] *= 8.0  # heavy-tailed groups, where clipping pays
    x = torch.randn(200, 256, generator=g)
    clip = search_clip(w, x, 128)
    assert clip.shape == (32, 2) and bool((clip <= 1.0).all())
    assert bool((clip < 1.0).any())

    def out_err(c):
        deq = dequantize_int4(*quantize_int4_groupwise(w, 128, c), 128)
        return float(((x @ (deq - w).T) ** 2).sum())

    assert out_err(clip) < out_err(1.0)


def test_int4_method_with_input_scale():
    w, b = _weight(), torch.randn(48)
    method = Int4WeightOnlyLinearMethod(128, has_input_scale=True)
    layer = _layer(method)
    s = torch.rand(256) + 0.5
    tensors = {**method.quantize(w * s[None, :]), "bias": b, "input_scale": 1.0 / s}
    for name, t in tensors.items():
        layer.load_shard(name, t, None, name)
    x = torch.randn(7, 256)
    deq = dequantize_int4(layer.qweight, layer.scales, 128)
    torch.testing.assert_close(layer(x), (x / s) @ deq.T + b, rtol=1e-4, atol=1e-3)


def test_fp8_layout_and_error_bound():
    w = _weight()
    q, scales = quantize_fp8_weight(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape and scales.shape == (48,)
    deq = q.float() * scales[:, None]
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for normal numbers; tiny ones are
    # bounded by the subnormal step (2^-9 of the scale unit).
    err = (deq - w).abs()
    bound = torch.maximum(w.abs() * 2.0 ** -4, scales[:, None] * 2.0 ** -9)
    assert bool((err <= bound * 1.0001).all())
    assert float(q.float().abs().amax()) == 448.0


def _fake_quant_rows(x, qmax, dtype):
    """Per-token symmetric quantization of x, dequantized back to float32 (the W8A8 activations)."""
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
    if dtype == torch.int8:
        return torch.round(x / s).clamp(-127, 127) * s
    return (x / s).clamp(-qmax, qmax).to(dtype).float() * s


def test_fp8_and_int8_sq_methods_match_fake_quant():
    g = torch.Generator().manual_seed(1)
    w, b = _weight(), torch.randn(48, generator=g)
    x = torch.randn(9, 256, generator=g)
    x[:, 5] *= 30.0
    exact = x @ w.T + b
    cases = ((Fp8LinearMethod(), 448.0, torch.float8_e4m3fn, "weight", "weight_scale"),
             (Int8SmoothQuantLinearMethod(), 127.0, torch.int8, "weight", "weight_scale"))
    for method, qmax, qdtype, wname, sname in cases:
        layer = _layer(method)
        for name, t in {**method.quantize(w), "bias": b}.items():
            layer.load_shard(name, t, None, name)
        assert getattr(layer, wname).dtype == qdtype
        y = layer(x)
        assert y.shape == exact.shape and y.dtype == x.dtype
        deq_w = getattr(layer, wname).float() * getattr(layer, sname)[:, None]
        expected = _fake_quant_rows(x, qmax, qdtype) @ deq_w.T + b
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-3)
        rel = float((y - exact).abs().max() / exact.abs().max())
        assert rel < 0.15, (type(method).__name__, rel)


def test_quant_layer_refuses_checkpoint_shards():
    from kiln.errors import KilnError
    layer = Linear(256, (16, 16), False, torch.float32, "cpu", method=Int8WeightOnlyLinearMethod())
    with pytest.raises(KilnError, match="kiln build"):
        layer.load_shard("qweight", torch.zeros(16, 256, dtype=torch.int8), 0, "q_proj.weight")
    with pytest.raises(KilnError, match="expected"):
        layer.load_shard("qweight", torch.zeros(32, 256), None, "x")
