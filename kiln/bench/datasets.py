"""Workloads for `kiln bench serve`: random-word prompts of a target length, or a JSONL file.

Nothing here imports torch: the load generator runs on machines that only have an HTTP client.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError

# A fixed, plain vocabulary: most tokenizers give these one or two tokens each.
_WORDS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book "
    "eye job word business issue side kind head house service friend father power hour game line "
    "end member law car city community name president team minute idea kid body information back "
    "parent face others level office door health person art war history party result change "
    "morning reason research girl guy moment air teacher force education river stone light green"
).split()


@dataclass
class SampleRequest:
    """One request of a workload: a prompt (text, or token ids when known exactly) and how many
    tokens to generate."""

    prompt: str | list[int]
    prompt_len: int
    output_len: int


def random_words(rng: random.Random, n: int) -> str:
    """``n`` random words separated by spaces."""
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def random_requests(num: int, input_len: int, output_len: int, seed: int,
                    range_ratio: float = 0.0) -> list[SampleRequest]:
    """``num`` requests of random words; lengths uniform in len * [1 - r, 1 + r].

    ``prompt_len`` counts words here; `kiln bench serve` makes it exact in tokens when the server
    has a /tokenize endpoint.
    """
    if num < 1 or input_len < 1 or output_len < 1:
        raise KilnError("--num-prompts, --random-input-len and --random-output-len must be >= 1")
    if not 0.0 <= range_ratio < 1.0:
        raise KilnError(f"--random-range-ratio must be in [0, 1), got {range_ratio}")
    rng = random.Random(seed)

    def length(target: int) -> int:
        lo = max(1, int(target * (1 - range_ratio)))
        hi = max(lo, int(target * (1 + range_ratio)))
        return rng.randint(lo, hi)

    out = []
    for _ in range(num):
        n_in, n_out = length(input_len), length(output_len)
        out.append(SampleRequest(random_words(rng, n_in), n_in, n_out))
    return out


def jsonl_requests(path: str, limit: int | None, default_output_len: int) -> list[SampleRequest]:
    """Requests from a JSONL file: each line has "prompt" (text) or "prompt_token_ids", and
    optionally "output_len" (or "max_tokens")."""
    p = Path(path)
    if not p.is_file():
        raise KilnError(f"dataset file {path} not found")
    out = []
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if "prompt_token_ids" in rec:
                prompt: str | list[int] = [int(t) for t in rec["prompt_token_ids"]]
                n_in = len(prompt)
            else:
                prompt = str(rec["prompt"])
                n_in = len(prompt.split())
            n_out = int(rec.get("output_len") or rec.get("max_tokens") or default_output_len)
        except (ValueError, KeyError, TypeError) as e:
            raise KilnError(f"{path}:{i + 1}: each line needs 'prompt' or 'prompt_token_ids' ({e})") \
                from None
        out.append(SampleRequest(prompt, n_in, n_out))
        if limit and len(out) >= limit:
            break
    if not out:
        raise KilnError(f"dataset file {path} has no requests")
    return out
