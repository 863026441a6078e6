"""Why fp8 flips a small model's argmaxes: the top-2 margins of the float model against the noise
that simulated fp8 W8A8 puts on them.

For each held-out position of the demo corpus test split: the float32 model's log-probability
margin between its top two tokens, and how far fp8 W8A8 (simulated in float32, as in
fp8_ablation.py) moves that margin. Flips happen where the noise exceeds the margin, so the flip
rate is about the density of small margins times the size of the noise.

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/quant-demo/fp8_margins.py [MODEL_DIR ...] --json OUT
"""

from __future__ import annotations

import argparse
import json

import torch

from fp8_ablation import fake_fp8
from kiln.build.accuracy import reference_outputs
from kiln.demo import DEMO_MODEL
from kiln.models.loader import load_model, load_tokenizer
from kiln.quant.calibration import load_windows

THRESHOLDS = (0.01, 0.03, 0.1, 0.3, 1.0)


def margins_report(path: str, windows: int, seq_len: int) -> dict:
    base = load_model(path, dtype="float32")
    tok = load_tokenizer(path)
    w = load_windows(tok, None, windows, seq_len + 1, split="test")
    vocab = base.args.vocab_size
    ref = torch.cat(reference_outputs(base, w).log_probs).reshape(-1, vocab)
    q = torch.cat(reference_outputs(fake_fp8(base), w).log_probs).reshape(-1, vocab)
    top2 = ref.topk(2, -1)
    margin = top2.values[:, 0] - top2.values[:, 1]
    flip = ref.argmax(-1) != q.argmax(-1)
    rows = torch.arange(len(ref))
    err = (q[rows, top2.indices[:, 0]] - q[rows, top2.indices[:, 1]]) - margin
    entropy = -(ref.exp() * ref).sum(-1)
    return {
        "model": path, "positions": len(ref), "fp8_flip_rate": float(flip.float().mean()),
        "margin_noise_std": float(err.std()), "margin_noise_median_abs": float(err.abs().median()),
        "mean_entropy": float(entropy.mean()), "mean_top1_prob": float(top2.values[:, 0].exp().mean()),
        "below": [{"margin": t, "share": float((margin < t).float().mean()),
                   "flips": int(flip[margin < t].sum())} for t in THRESHOLDS],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=[str(DEMO_MODEL)])
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = []
    for path in args.models:
        r = margins_report(path, args.eval_windows, args.seq_len)
        out.append(r)
        print(f"{path}: {r['positions']} positions, fp8 flips {r['fp8_flip_rate']:.2%}, "
              f"noise on the top-2 margin: std {r['margin_noise_std']:.3f}, "
              f"median |.| {r['margin_noise_median_abs']:.3f} nats")
        for b in r["below"]:
            print(f"  margin < {b['margin']:<5} {b['share']:7.2%} of positions, {b['flips']} flips")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference": "float32", "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
