"""Held-out evaluation of the demo models: perplexity, top-1 accuracy, draft/target agreement,
and greedy continuations of function headers.

Everything here runs on the saved checkpoints (bf16 weights, computed in float32), so the numbers
in the model card describe the files that ship, not the float32 training copy.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kiln.demo.corpus import SourceFile

# A top-level function header on one line, e.g. "def quote(string, safe='/'):".
_HEADER = re.compile(r"^def [A-Za-z_][A-Za-z0-9_]*\(.*\)( -> .+)?:\s*$")


@dataclass(frozen=True)
class HeldOutMetrics:
    """Next-token metrics of one model over the held-out token stream."""

    num_tokens: int
    mean_nll: float
    perplexity: float
    top1_accuracy: float


@torch.no_grad()
def next_token_predictions(model, stream: torch.Tensor, seq_len: int, batch_size: int
                           ) -> tuple[HeldOutMetrics, torch.Tensor]:
    """Score every next-token prediction in non-overlapping ``seq_len`` windows of ``stream``.

    Returns the metrics and the model's argmax predictions (one per scored position, on the CPU),
    so two models scored on the same stream can be compared position by position.
    """
    model.eval()
    num_windows = (stream.numel() - 1) // seq_len
    nll_sum = 0.0
    correct = 0
    predictions = []
    offsets = torch.arange(seq_len + 1, device=stream.device)
    for first in range(0, num_windows, batch_size):
        starts = torch.arange(first, min(first + batch_size, num_windows), device=stream.device) * seq_len
        windows = stream[starts[:, None] + offsets[None, :]]
        inputs, targets = windows[:, :-1], windows[:, 1:]
        logits = model(input_ids=inputs, use_cache=False).logits.float()
        nll_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                         reduction="sum"))
        argmax = logits.argmax(dim=-1)
        correct += int((argmax == targets).sum())
        predictions.append(argmax.reshape(-1).to("cpu", torch.int32))
    num_tokens = num_windows * seq_len
    mean_nll = nll_sum / num_tokens
    metrics = HeldOutMetrics(num_tokens=num_tokens, mean_nll=mean_nll, perplexity=math.exp(mean_nll),
                             top1_accuracy=correct / num_tokens)
    return metrics, torch.cat(predictions)


def agreement(predictions_a: torch.Tensor, predictions_b: torch.Tensor) -> float:
    """Fraction of positions where two models' greedy next tokens are equal."""
    return float((predictions_a == predictions_b).double().mean())


def pick_function_headers(files: list[SourceFile], count: int) -> list[str]:
    """Choose ``count`` one-line top-level ``def`` headers from held-out files, deterministically.

    Candidates are ranked by a hash of file path and line so the choice does not favour any
    module; one header per file and per function name keeps the sample varied.
    """
    ranked = []
    for f in files:
        for line in f.text.splitlines():
            if _HEADER.match(line) and len(line) <= 80:
                key = hashlib.sha256(f"{f.rel_path}:{line}".encode()).hexdigest()
                ranked.append((key, f.rel_path, line.rstrip()))
    ranked.sort()
    chosen, seen_files, seen_names = [], set(), set()
    for _key, rel_path, line in ranked:
        name = line.split("(", 1)[0]
        if rel_path in seen_files or name in seen_names:
            continue
        chosen.append(line)
        seen_files.add(rel_path)
        seen_names.add(name)
        if len(chosen) == count:
            break
    return chosen


@torch.no_grad()
def greedy_continuation(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy-decode up to ``max_new_tokens`` after ``prompt`` with transformers; return the new text."""
    encoded = tokenizer(prompt, return_tensors="pt")
    device = next(model.parameters()).device
    input_ids = encoded["input_ids"].to(device)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=False)
