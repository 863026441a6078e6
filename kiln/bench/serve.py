"""`kiln bench serve`: load an OpenAI-compatible server and measure what users feel.

Requests stream (SSE) so the time to the first token and between tokens is seen on the client.
Arrivals follow a Poisson process (``--burstiness 1``) or a gamma process (other burstiness; the
mean rate stays ``--request-rate``), or all at once bounded by ``--max-concurrency``. Output
lengths are fixed with ``max_tokens`` plus ``ignore_eos`` so runs are comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln.bench import cost
from kiln.bench.datasets import SampleRequest, jsonl_requests, random_requests, random_words
from kiln.bench.stats import distribution_ms
from kiln.errors import KilnError


def add_bench_serve_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `kiln bench serve` flags to ``p``."""
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root URL")
    p.add_argument("--model", default=None, help="model name (default: the server's first model)")
    p.add_argument("--endpoint", default="/v1/completions",
                   choices=["/v1/completions", "/v1/chat/completions"])
    p.add_argument("--num-prompts", type=int, default=100, help="requests per rate")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="mean requests per second (inf: all at once)")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of inter-arrival times (1: Poisson; <1 burstier)")
    p.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight")
    p.add_argument("--request-rates", default=None,
                   help="comma-separated rates to sweep, e.g. '1,2,4,inf' (overrides --request-rate)")
    p.add_argument("--dataset", choices=["random", "jsonl"], default="random")
    p.add_argument("--dataset-path", default=None, help="JSONL file for --dataset jsonl")
    p.add_argument("--random-input-len", type=int, default=128, help="prompt tokens (random)")
    p.add_argument("--random-output-len", type=int, default=128, help="output tokens per request")
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in len*(1-r)..len*(1+r)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slo", default=None,
                   help="goodput SLO in ms, e.g. 'ttft:500,tpot:50' (keys: ttft, tpot, e2el)")
    p.add_argument("--json", default=None, help="write results to this JSON file")
    p.add_argument("--plot", default=None, help="latency-vs-throughput PNG (needs matplotlib)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    cost.add_cost_arg(p)
    return p


@dataclass
class RequestResult:
    """What the client saw of one request."""

    success: bool
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start: float = 0.0
    error: str = ""

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (None for single-token outputs)."""
        if self.output_len < 2:
            return None
        return (self.latency - self.ttft) / (self.output_len - 1)


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft:500,tpot:50' -> {'ttft': 0.5, 'tpot': 0.05} (seconds)."""
    if not text:
        return {}
    slo = {}
    for part in text.split(","):
        key, _, value = part.partition(":")
        key = key.strip().lower()
        if key not in ("ttft", "tpot", "e2el") or not value:
            raise KilnError(f"--slo takes key:ms pairs with keys ttft, tpot, e2el; got {part!r}")
        try:
            slo[key] = float(value) / 1000.0
        except ValueError:
            raise KilnError(f"--slo value must be milliseconds, got {value!r}") from None
    return slo


def parse_rates(args: argparse.Namespace) -> list[float]:
    """The request rates to run, from --request-rates or --request-rate."""
    if not args.request_rates:
        return [args.request_rate]
    rates = []
    for part in args.request_rates.split(","):
        try:
            rate = float(part.strip())
        except ValueError:
            raise KilnError(f"--request-rates must be numbers or inf, got {part!r}") from None
        if rate <= 0:
            raise KilnError(f"request rates must be > 0, got {rate}")
        rates.append(rate)
    return rates


def arrival_offsets(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of n requests at mean ``rate`` per second.

    Inter-arrival times are gamma(shape=burstiness, scale=1/(rate*burstiness)): exponential
    (Poisson arrivals) at burstiness 1, whatever the burstiness the mean gap is 1/rate.
    """
    if burstiness <= 0:
        raise KilnError(f"--burstiness must be > 0, got {burstiness}")
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return out


def summarize(results: list[RequestResult], duration: float, slo: dict[str, float]) -> dict:
    """Throughputs, latency distributions and goodput of one run."""
    ok = [r for r in results if r.success]
    out_tokens = sum(r.output_len for r in ok)
    in_tokens = sum(r.prompt_len for r in ok)
    duration = max(duration, 1e-9)

    def meets(r: RequestResult) -> bool:
        tpot = r.tpot if r.tpot is not None else 0.0
        return (r.ttft <= slo.get("ttft", math.inf) and tpot <= slo.get("tpot", math.inf)
                and r.latency <= slo.get("e2el", math.inf))

    good = [r for r in ok if meets(r)]
    return {
        "num_requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.success})[:5],
        "duration_s": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration,
        "input_token_throughput": in_tokens / duration,
        "output_token_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "goodput": len(good) / duration,
        "slo_ms": {k: v * 1000.0 for k, v in slo.items()},
        "ttft": distribution_ms([r.ttft for r in ok]),
        "tpot": distribution_ms([r.tpot for r in ok if r.tpot is not None]),
        "itl": distribution_ms([x for r in ok for x in r.itl]),
        "e2el": distribution_ms([r.latency for r in ok]),
    }


def _payload(endpoint: str, model: str, req: SampleRequest) -> dict:
    common = {"model": model, "max_tokens": req.output_len, "temperature": 0.0, "stream": True,
              "stream_options": {"include_usage": True}, "ignore_eos": True,
              "min_tokens": req.output_len}
    if endpoint.endswith("/chat/completions"):
        prompt = req.prompt if isinstance(req.prompt, str) else " ".join(map(str, req.prompt))
        return {"messages": [{"role": "user", "content": prompt}], **common}
    return {"prompt": req.prompt, **common}


def carries_tokens(chunk: dict) -> bool:
    """Whether a streamed chunk reports newly generated tokens.

    A token's text can be empty (part of a UTF-8 sequence, a token the tokenizer cannot spell),
    and servers still send its chunk: counting only chunks with text would merge such tokens
    into the next chunk's inter-token latency. A chat chunk with only the role, and a chunk
    with only a finish_reason, carry none.
    """
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        text = choice.get("text") if delta is None else delta.get("content")
        if text:
            return True
        if delta is not None and delta.get("role"):
            continue  # the opening chunk that names the role (servers may send "role": null later)
        if text is not None and choice.get("finish_reason") is None:
            return True
    return False


async def send_request(client: Any, url: str, payload: dict, req: SampleRequest) -> RequestResult:
    """Send one streaming request and time its tokens as they arrive."""
    result = RequestResult(success=False, prompt_len=req.prompt_len)
    start = time.perf_counter()
    result.start = start
    last = start
    token_chunks = 0
    usage = None
    try:
        async with client.stream("POST", url, json=payload) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                result.error = f"HTTP {resp.status_code}: {body[:200]}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = str(chunk["error"].get("message", chunk["error"]))[:200]
                    return result
                now = time.perf_counter()
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if carries_tokens(chunk):
                    if token_chunks == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    token_chunks += 1
                    last = now
    except Exception as e:  # noqa: BLE001 - one failed request is a data point, not a crash
        result.error = f"{type(e).__name__}: {e}"[:200]
        return result
    result.latency = time.perf_counter() - start
    if usage:
        result.output_len = int(usage.get("completion_tokens", token_chunks))
        result.prompt_len = int(usage.get("prompt_tokens", req.prompt_len))
    else:
        result.output_len = token_chunks
    result.success = token_chunks > 0
    if not result.success:
        result.error = "no tokens received"
    return result


async def run_load(base_url: str, endpoint: str, model: str, requests: list[SampleRequest],
                   rate: float, burstiness: float, max_concurrency: int | None, seed: int,
                   timeout: float) -> tuple[list[RequestResult], float]:
    """Send every request on its arrival schedule; returns the results and the wall time."""
    import httpx

    offsets = arrival_offsets(len(requests), rate, burstiness, seed)
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    url = base_url.rstrip("/") + endpoint
    limits = httpx.Limits(max_connections=max_concurrency or len(requests) + 1,
                          max_keepalive_connections=max_concurrency or len(requests) + 1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()

        async def one(offset: float, req: SampleRequest) -> RequestResult:
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            payload = _payload(endpoint, model, req)
            if limit is None:
                return await send_request(client, url, payload, req)
            async with limit:
                return await send_request(client, url, payload, req)

        results = await asyncio.gather(*(one(o, r) for o, r in zip(offsets, requests)))
        duration = time.perf_counter() - t0
    return list(results), duration


async def _discover_model(base_url: str, timeout: float) -> str:
    import httpx
    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            resp = await client.get(base_url.rstrip("/") + "/v1/models")
            resp.raise_for_status()
            return resp.json()["data"][0]["id"]
        except Exception as e:  # noqa: BLE001 - turned into one clear message
            raise KilnError(f"could not list models at {base_url}/v1/models ({e}); pass --model") \
                from None


async def _exact_token_prompts(base_url: str, model: str, requests: list[SampleRequest],
                               seed: int, timeout: float) -> list[SampleRequest]:
    """Random prompts of exactly the asked token count, via the server's /tokenize when it has
    one; otherwise the word prompts are kept (their token counts come back in usage)."""
    import httpx
    rng = random.Random(seed + 7)
    async with httpx.AsyncClient(timeout=timeout) as client:
        cache: dict[str, list[int]] = {}

        async def ids_of(text: str) -> list[int]:
            if text not in cache:
                resp = await client.post(base_url.rstrip("/") + "/tokenize",
                                         json={"model": model, "prompt": text,
                                               "add_special_tokens": False})
                resp.raise_for_status()
                cache[text] = resp.json()["tokens"]
            return cache[text]

        try:
            await ids_of("probe")
        except Exception:  # noqa: BLE001 - not every OpenAI-compatible server has /tokenize
            return requests
        out = []
        for req in requests:
            ids = list(await ids_of(req.prompt)) if isinstance(req.prompt, str) else list(req.prompt)
            while len(ids) < req.prompt_len:
                ids += await ids_of(" " + random_words(rng, req.prompt_len - len(ids)))
            ids = ids[:req.prompt_len]
            out.append(SampleRequest(ids, len(ids), req.output_len))
        return out


def load_requests(args: argparse.Namespace, model: str) -> list[SampleRequest]:
    """The workload the flags describe."""
    if args.dataset == "jsonl":
        if not args.dataset_path:
            raise KilnError("--dataset jsonl needs --dataset-path FILE")
        return jsonl_requests(args.dataset_path, args.num_prompts, args.random_output_len)
    reqs = random_requests(args.num_prompts, args.random_input_len, args.random_output_len,
                           args.seed, args.random_range_ratio)
    if args.endpoint == "/v1/completions":
        reqs = asyncio.run(_exact_token_prompts(args.base_url, model, reqs, args.seed, args.timeout))
    return reqs


def run_bench_serve(args: argparse.Namespace) -> int:
    """Run the benchmark the flags describe; prints a table, writes JSON and a plot if asked."""
    slo = parse_slo(args.slo)
    rates = parse_rates(args)
    if args.plot:
        _require_matplotlib()
    model = args.model or asyncio.run(_discover_model(args.base_url, args.timeout))
    requests = load_requests(args, model)
    runs = []
    for rate in rates:
        results, duration = asyncio.run(run_load(
            args.base_url, args.endpoint, model, requests, rate, args.burstiness,
            args.max_concurrency, args.seed, args.timeout))
        summary = {"request_rate": rate if math.isfinite(rate) else "inf",
                   **summarize(results, duration, slo)}
        if args.cost_per_hour is not None:
            summary["cost"] = cost.cost_block(args.cost_per_hour, summary["output_token_throughput"],
                                              summary["total_token_throughput"])
        runs.append(summary)
        print_summary(summary)
    report = {"config": {"base_url": args.base_url, "model": model, "endpoint": args.endpoint,
                         "num_prompts": len(requests), "burstiness": args.burstiness,
                         "max_concurrency": args.max_concurrency, "dataset": args.dataset,
                         "random_input_len": args.random_input_len,
                         "random_output_len": args.random_output_len, "seed": args.seed,
                         "cost_per_hour": args.cost_per_hour},
              "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_runs(runs, args.plot)
    return 0 if all(r["completed"] for r in runs) else 1


def print_summary(s: dict, file: Any = None) -> None:
    """A human-readable table of one run."""
    file = file or sys.stdout
    lines = [f"== request rate {s['request_rate']} ==",
             f"requests: {s['completed']} ok, {s['failed']} failed in {s['duration_s']:.2f} s",
             f"throughput: {s['request_throughput']:.2f} req/s, "
             f"{s['output_token_throughput']:.1f} output tok/s, "
             f"{s['input_token_throughput']:.1f} input tok/s, goodput {s['goodput']:.2f} req/s"]
    for key in ("ttft", "tpot", "itl", "e2el"):
        d = s[key]
        lines.append(f"{key.upper():5s} ms: mean {d['mean_ms']:.2f}  p50 {d['p50_ms']:.2f}  "
                     f"p90 {d['p90_ms']:.2f}  p99 {d['p99_ms']:.2f}")
    if s.get("cost"):
        lines.append(cost.describe(s["cost"]))
    if s["errors"]:
        lines.append(f"errors: {s['errors']}")
    print("\n".join(lines), file=file)


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise KilnError("--plot needs matplotlib, which is not installed "
                        "(pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_runs(runs: list[dict], path: str) -> None:
    """Latency (TTFT, TPOT, E2EL medians and p99) against output-token throughput, per rate."""
    plt = _require_matplotlib()
    xs = [r["output_token_throughput"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key in zip(axes, ("ttft", "tpot", "e2el")):
        for stat, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
            ax.plot(xs, [r[key][stat] for r in runs], style, label=stat.replace("_ms", ""))
        for x, r in zip(xs, runs):
            ax.annotate(str(r["request_rate"]), (x, r[key]["p50_ms"]), fontsize=8)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(f"{key.upper()} (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("latency vs throughput (labels: request rate)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def results_as_dicts(results: list[RequestResult]) -> list[dict]:
    """Per-request results as plain dicts (for debugging or custom reports)."""
    return [asdict(r) for r in results]
