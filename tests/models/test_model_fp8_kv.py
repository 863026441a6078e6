"""A tiny Llama with an FP8 (float8_e4m3fn, per-layer scaled) KV cache, on the reference path.

Compared with the same model over a float32 cache: logits close, greedy tokens equal. The
per-layer scales are set the way an engine's engine.json sets them (absmax / 448).
"""

import pytest
import torch

from kiln.errors import KilnError
from kiln.kernels.attention_ref import FP8_KV_DTYPE
from kiln.models.loader import load_model
from model_helpers import PagedRunner, hf_config, rel_err, save_hf_checkpoint

PROMPT_LEN, NEW_TOKENS = 24, 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp8kv") / "llama"
    save_hf_checkpoint(hf_config("llama"), out, seed=3)
    return out


@pytest.fixture
def model(checkpoint):
    return load_model(checkpoint, dtype="float32")


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(3, 256, (PROMPT_LEN,), generator=torch.Generator().manual_seed(0)).tolist()


def fp8_runner(model) -> PagedRunner:
    runner = PagedRunner(model)
    runner.caches = [torch.zeros(c.shape, dtype=FP8_KV_DTYPE) for c in runner.caches]
    return runner


def teacher_forced_logits(runner: PagedRunner, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Prefill the prompt, then decode the given tokens one step at a time; all logits [N, V]."""
    logits = [runner.step([("a", prompt)])[0]]
    for t in tokens:
        logits.append(runner.step([("a", [t])])[0])
    return torch.cat(logits)


@pytest.fixture
def baseline(model, prompt):
    """Greedy tokens, teacher-forced logits and per-layer (|k| max, |v| max) of the float32 cache."""
    runner = PagedRunner(model)
    tokens = runner.greedy("a", prompt, NEW_TOKENS)
    absmax = [(float(c[0].abs().max()), float(c[1].abs().max())) for c in runner.caches]
    logits = teacher_forced_logits(PagedRunner(model), prompt, tokens[:-1])
    return tokens, logits, absmax


def fp8_errors(model, prompt, baseline):
    tokens, ref_logits, _ = baseline
    logits = teacher_forced_logits(fp8_runner(model), prompt, tokens[:-1])
    greedy = fp8_runner(model).greedy("a", prompt, NEW_TOKENS)
    top1 = float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())
    return rel_err(logits, ref_logits), top1, greedy


def test_fp8_cache_without_scales_is_close_to_float32_cache(model, prompt, baseline):
    # Scales default to 1.0 (a plain checkpoint run with kv_cache_dtype="fp8").
    assert all(layer.self_attn.k_scale == 1.0 for layer in model.layers)
    err, top1, greedy = fp8_errors(model, prompt, baseline)
    assert err < 0.03, f"logit error {err:.3f}"
    assert top1 >= 0.9
    assert sum(a == b for a, b in zip(greedy, baseline[0])) >= NEW_TOKENS - 2


def test_fp8_cache_with_calibrated_scales(model, prompt, baseline):
    absmax = baseline[2]
    model.set_kv_cache_scales({f"layers.{i}.self_attn": {"k_scale": k / 448, "v_scale": v / 448}
                               for i, (k, v) in enumerate(absmax)})
    assert model.layers[1].self_attn.v_scale == pytest.approx(absmax[1][1] / 448)
    err, top1, greedy = fp8_errors(model, prompt, baseline)
    assert err < 0.03, f"logit error {err:.3f}"
    assert top1 >= 0.9
    assert sum(a == b for a, b in zip(greedy, baseline[0])) >= NEW_TOKENS - 2

    # Scales far too small saturate K/V at 448 * scale: the error must grow, which shows the
    # scales reach both the cache write and the attention read.
    model.set_kv_cache_scales([(k / 448 / 8, v / 448 / 8) for k, v in absmax])
    bad_err, _, _ = fp8_errors(model, prompt, baseline)
    assert bad_err > 2 * err


def test_scales_do_not_change_a_float32_cache_run(model, prompt, baseline):
    # The default path (cache in the model dtype) ignores the scales: bitwise the same logits.
    model.set_kv_cache_scales([(0.01, 3.0)] * len(model.layers))
    tokens, ref_logits, _ = baseline
    logits = teacher_forced_logits(PagedRunner(model), prompt, tokens[:-1])
    assert torch.equal(logits, ref_logits)


def test_fp8_cache_holds_quantized_keys(model, prompt):
    # The cache really is fp8 and holds K / k_scale: halving k_scale doubles the stored keys
    # (away from saturation and rounding ties, up to one e4m3 step).
    caches = []
    for k_scale in (0.02, 0.01):
        model.set_kv_cache_scales([(k_scale, 0.05)] * len(model.layers))
        runner = fp8_runner(model)
        runner.step([("a", prompt)])
        assert runner.caches[0].dtype == FP8_KV_DTYPE
        caches.append(runner.caches[0][0].float())
    small = caches[0].abs() < 100
    assert bool(small.any())
    ratio_ok = (caches[1][small] - 2 * caches[0][small]).abs() <= caches[1][small].abs() / 8 + 2 ** -8
    assert bool(ratio_ok.all())


def test_set_kv_cache_scales_rejects_bad_input(model):
    with pytest.raises(KilnError, match="positive finite"):
        model.set_kv_cache_scales([(1.0, 0.0), (1.0, 1.0)])
    with pytest.raises(KilnError, match="positive finite"):
        model.set_kv_cache_scales([(float("nan"), 1.0), (1.0, 1.0)])
    with pytest.raises(KilnError, match="2"):
        model.set_kv_cache_scales([(1.0, 1.0)])
    with pytest.raises(KilnError, match="rebuild the engine"):
        model.set_kv_cache_scales({"layers.0.self_attn": {"k_scale": 1.0, "v_scale": 1.0}})
