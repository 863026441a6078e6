"""Where the demo model's fp8 top-1 agreement goes: fp8 W8A8 variants simulated in float32.

Each variant rounds weights (per output channel) and/or activations (per token, or per group of
a token) through float8_e4m3fn exactly as the fp8 kernels' references do, optionally after
SmoothQuant smoothing or with some layers left in float, and is scored with the build's accuracy
report (top-1 agreement and mean KL against the float model) on held-out demo-corpus windows.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/quant-demo/fp8_ablation.py --json OUT.json

``--floor`` scores, instead, the unquantized model computed in bfloat16 and in float16 against the
same float32 reference: how many argmaxes rounding alone flips on this model (its noise floor).
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from kiln.build.accuracy import evaluate, reference_outputs
from kiln.demo import DEMO_MODEL
from kiln.kernels.quant_act import quant_per_token_ref
from kiln.layers.linear import Linear
from kiln.models.loader import load_model, load_tokenizer
from kiln.quant.calibration import collect_stats, load_windows
from kiln.quant.fp8 import FP8_MAX, quantize_fp8_weight
from kiln.quant.model_quant import smooth_model


def _fp8_activations(x: torch.Tensor, group: int | None) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1]).float()
    if group is None:
        q, s = quant_per_token_ref(x2, torch.float8_e4m3fn)
        return (q.float() * s).view(x.shape)
    g = x2.view(x2.shape[0], -1, group)
    s = g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    q = (g / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s
    return q.view(x.shape)


def fake_fp8(model, keep_float=(), activations=True, act_group=None, weights=True):
    """A copy of ``model`` whose Linears (except those matching keep_float) compute in fp8."""
    m = copy.deepcopy(model)
    for name, mod in m.named_modules():
        if not isinstance(mod, Linear):
            continue
        if any(name.startswith(f"layers.{k}.") or name.endswith(k) for k in keep_float):
            continue
        if weights:
            q, s = quantize_fp8_weight(mod.weight.data)
            mod.weight.data = q.float() * s[:, None]
        if activations:
            inner = mod.forward
            mod.forward = lambda x, inner=inner: inner(_fp8_activations(x, act_group))
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--json", default=None)
    ap.add_argument("--floor", action="store_true",
                    help="score the model computed in bfloat16 / float16 instead of fp8 variants")
    args = ap.parse_args()
    base = load_model(DEMO_MODEL, dtype="float32")
    tok = load_tokenizer(DEMO_MODEL)
    ref = reference_outputs(base, load_windows(tok, None, args.eval_windows, args.seq_len + 1,
                                               split="test"))
    if args.floor:
        rows = []
        for dtype in ("bfloat16", "float16"):
            r = evaluate(load_model(DEMO_MODEL, dtype=dtype), ref)
            rows.append({"variant": f"no quantization, computed in {dtype}",
                         "top1_agreement": r.top1_agreement, "mean_kl": r.mean_kl})
            print(f"{rows[-1]['variant']:<58} top-1 {r.top1_agreement:.2%}  KL {r.mean_kl:.6f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"model": "kiln demo-model", "reference": "float32",
                           "eval_tokens": ref.windows.num_samples * args.seq_len, "rows": rows},
                          f, indent=1)
        return
    calib = load_windows(tok, None, 16, args.seq_len, split="train")
    variants = [("fp8 W8A8 (per-channel weights, per-token activations)", {}),
                ("weights only in fp8", {"activations": False}),
                ("activations only in fp8 (weights float)", {"weights": False}),
                ("activations per group of 32", {"act_group": 32}),
                ("layer 0 in float", {"keep_float": ("0",)}),
                ("layers 0 and 7 in float", {"keep_float": ("0", "7")}),
                ("all qkv_proj in float", {"keep_float": ("qkv_proj",)}),
                ("all down_proj in float", {"keep_float": ("down_proj",)})]
    rows = []
    for label, kw in variants:
        r = evaluate(fake_fp8(base, **kw), ref)
        rows.append({"variant": label, "top1_agreement": r.top1_agreement, "mean_kl": r.mean_kl})
    for alpha in (0.3, 0.5, 0.7):
        smoothed = copy.deepcopy(base)
        smooth_model(smoothed, collect_stats(smoothed, calib), alpha)
        r = evaluate(fake_fp8(smoothed), ref)
        rows.append({"variant": f"SmoothQuant smoothing alpha {alpha}, then fp8 W8A8",
                     "top1_agreement": r.top1_agreement, "mean_kl": r.mean_kl})
    for row in rows:
        print(f"{row['variant']:<58} top-1 {row['top1_agreement']:.2%}  KL {row['mean_kl']:.5f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": "kiln demo-model", "eval_tokens": ref.windows.num_samples * args.seq_len,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
