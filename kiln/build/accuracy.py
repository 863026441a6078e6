"""Accuracy report of a built engine against the unquantized model on held-out text.

Metrics over every next-token position of the evaluation windows: top-1 agreement (the engine's
argmax equals the base model's), mean KL(base || engine) in nats, the perplexity of each on the
true next tokens and the relative perplexity change.

``--max-accuracy-drop`` limits (all optional, comma separated; a bare number means ``top1``):
``top1=D``: top-1 disagreement at most D (0.03 = at least 97% agreement); ``kl=K``: mean KL at most
K nats; ``ppl=P``: perplexity at most (1 + P) times the base's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kiln.errors import KilnError
from kiln.quant.calibration import TokenWindows, forward_windows

LIMIT_KEYS = ("top1", "kl", "ppl")


@dataclass(frozen=True)
class AccuracyReport:
    """Engine vs base model over ``num_tokens`` scored positions of ``source``."""

    source: str
    num_tokens: int
    top1_agreement: float
    mean_kl: float
    base_perplexity: float
    engine_perplexity: float
    perplexity_delta: float  # relative: engine / base - 1

    def to_dict(self) -> dict:
        """JSON-ready, with ``measured`` set."""
        return {"measured": True, **asdict(self)}

    def summary(self) -> str:
        """One line for the terminal."""
        return (f"top-1 agreement {self.top1_agreement:.2%}, mean KL {self.mean_kl:.4f}, "
                f"perplexity {self.base_perplexity:.3f} -> {self.engine_perplexity:.3f} "
                f"({self.perplexity_delta:+.2%}) over {self.num_tokens} tokens")


@dataclass
class ReferenceOutputs:
    """The base model's log-probabilities of each evaluation window (kept on the CPU)."""

    windows: TokenWindows
    log_probs: list[torch.Tensor]


def _score_windows(model: nn.Module, windows: TokenWindows, batch_size: int,
                   progress: Callable[[int], None] | None,
                   kv_cache_dtype: torch.dtype | None = None):
    done = 0
    for logits in forward_windows(model, windows.windows, batch_size,
                                  kv_cache_dtype=kv_cache_dtype):
        done = min(done + batch_size, windows.num_samples)
        if progress is not None:
            progress(done)
        # Position t predicts token t + 1, so the last position of each window has no target.
        yield F.log_softmax(logits[:, :-1].float(), dim=-1)


def reference_outputs(base: nn.Module, windows: TokenWindows, batch_size: int = 4,
                      progress: Callable[[int], None] | None = None) -> ReferenceOutputs:
    """Run the base model once over the evaluation windows and keep its log-probabilities.

    Kept in bfloat16 when they would take more than 1 GiB in float32 (large vocabularies).
    """
    vocab = base.args.vocab_size
    big = windows.num_tokens * vocab * 4 > 2**30
    keep = torch.bfloat16 if big else torch.float32
    outs = [lp.to("cpu", keep) for lp in _score_windows(base, windows, batch_size, progress)]
    return ReferenceOutputs(windows, outs)


def evaluate(engine_model: nn.Module, reference: ReferenceOutputs, batch_size: int = 4,
             progress: Callable[[int], None] | None = None,
             kv_cache_dtype: torch.dtype | None = None) -> AccuracyReport:
    """Compare the engine model (on a KV cache of ``kv_cache_dtype``, default its own dtype)
    with the stored base outputs on the same windows."""
    windows = reference.windows
    agree = 0
    kl_sum = 0.0
    nll_base = 0.0
    nll_engine = 0.0
    count = 0
    for i, lp_q in enumerate(_score_windows(engine_model, windows, batch_size, progress,
                                            kv_cache_dtype)):
        lp_b = reference.log_probs[i].to(lp_q.device, torch.float32)
        first = i * batch_size
        targets = windows.windows[first:first + lp_q.shape[0], 1:].to(lp_q.device)
        agree += int((lp_b.argmax(-1) == lp_q.argmax(-1)).sum())
        kl_sum += float((lp_b.exp() * (lp_b - lp_q)).sum())
        nll_base -= float(lp_b.gather(-1, targets[..., None]).sum())
        nll_engine -= float(lp_q.gather(-1, targets[..., None]).sum())
        count += targets.numel()
    if count == 0:
        raise KilnError("the evaluation text gave no positions to score")
    base_ppl = math.exp(nll_base / count)
    engine_ppl = math.exp(nll_engine / count)
    return AccuracyReport(source=windows.source, num_tokens=count, top1_agreement=agree / count,
                          mean_kl=kl_sum / count, base_perplexity=base_ppl,
                          engine_perplexity=engine_ppl, perplexity_delta=engine_ppl / base_ppl - 1.0)


def parse_max_drop(spec: str | None) -> dict[str, float]:
    """``"top1=0.03,kl=0.05,ppl=0.05"`` or ``"0.03"`` (= top1) -> {key: limit}; None -> {}."""
    if spec is None or not str(spec).strip():
        return {}
    limits: dict[str, float] = {}
    for part in str(spec).split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            key, value = "top1", key
        key = key.strip().lower()
        if key not in LIMIT_KEYS:
            raise KilnError(f"--max-accuracy-drop: unknown metric {key!r}; use "
                            "top1=D,kl=K,ppl=P (top1: allowed disagreement, kl: nats, ppl: relative)")
        try:
            limits[key] = float(value)
        except ValueError:
            raise KilnError(f"--max-accuracy-drop: {key}={value!r} is not a number") from None
        if limits[key] < 0:
            raise KilnError(f"--max-accuracy-drop: {key} must be >= 0, got {limits[key]}")
    return limits


def limit_violations(report: AccuracyReport, limits: dict[str, float]) -> list[str]:
    """Each limit the report breaks, as a phrase for the error message (empty: all met)."""
    out = []
    if "top1" in limits and 1.0 - report.top1_agreement > limits["top1"]:
        out.append(f"top-1 agreement {report.top1_agreement:.2%} < {1.0 - limits['top1']:.2%}")
    if "kl" in limits and report.mean_kl > limits["kl"]:
        out.append(f"mean KL {report.mean_kl:.4f} > {limits['kl']:.4f}")
    if "ppl" in limits and report.perplexity_delta > limits["ppl"]:
        out.append(f"perplexity {report.perplexity_delta:+.2%} > +{limits['ppl']:.2%}")
    return out
