"""`kiln bench serve`: arrival processes, statistics, and a short run against a live server."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics

import pytest

from kiln.bench.datasets import jsonl_requests, random_requests
from kiln.bench.serve import (RequestResult, add_bench_serve_args, arrival_offsets,
                              carries_tokens, parse_rates, parse_slo, run_bench_serve, summarize)
from kiln.bench.stats import percentile
from kiln.errors import KilnError


def parse(*argv: str) -> argparse.Namespace:
    return add_bench_serve_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_poisson_and_gamma_arrivals_keep_the_mean_rate():
    rate, n = 10.0, 4000
    for burstiness in (1.0, 0.25, 4.0):
        t = arrival_offsets(n, rate, burstiness, seed=1)
        gaps = [b - a for a, b in zip(t, t[1:])]
        assert t[0] == 0.0 and all(g >= 0 for g in gaps)
        assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.1)
        # gamma(k): coefficient of variation 1/sqrt(k); 1 for Poisson arrivals.
        cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
        assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.15)
    assert arrival_offsets(5, math.inf, 1.0, seed=0) == [0.0] * 5
    with pytest.raises(KilnError):
        arrival_offsets(3, 1.0, 0.0, seed=0)


def test_percentile_and_flags():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0, 10], 90) == pytest.approx(9.0)
    assert percentile([], 99) == 0.0
    assert parse_slo("ttft:500, tpot:50") == {"ttft": 0.5, "tpot": 0.05}
    with pytest.raises(KilnError):
        parse_slo("latency:5")
    assert parse_rates(parse("--request-rates", "1,2.5,inf")) == [1.0, 2.5, math.inf]
    with pytest.raises(KilnError):
        parse_rates(parse("--request-rates", "1,zero"))


def test_summarize_goodput_counts_only_requests_within_slo():
    fast = RequestResult(True, prompt_len=10, output_len=5, ttft=0.1, latency=0.5)   # tpot 0.1
    slow = RequestResult(True, prompt_len=10, output_len=5, ttft=0.9, latency=1.3)
    failed = RequestResult(False, error="HTTP 500")
    s = summarize([fast, slow, failed], duration=2.0, slo={"ttft": 0.5, "tpot": 0.2})
    assert s["completed"] == 2 and s["failed"] == 1 and s["errors"] == ["HTTP 500"]
    assert s["goodput"] == pytest.approx(0.5) and s["request_throughput"] == pytest.approx(1.0)
    assert s["output_token_throughput"] == pytest.approx(5.0)
    assert s["ttft"]["mean_ms"] == pytest.approx(500.0)
    assert s["tpot"]["p50_ms"] == pytest.approx(100.0)


def test_chunks_that_carry_tokens():
    """A token whose text is empty still counts (its chunk times an inter-token gap); the chat
    role chunk and a bare finish chunk do not."""
    def completion(text, finish=None):
        return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}

    def chat(delta, finish=None):
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    assert carries_tokens(completion("ab"))
    assert carries_tokens(completion(""))
    assert carries_tokens(completion("x", "length"))
    assert not carries_tokens(completion("", "length"))
    assert not carries_tokens({"choices": [], "usage": {"completion_tokens": 3}})
    assert not carries_tokens(chat({"role": "assistant", "content": ""}))
    assert carries_tokens(chat({"content": ""}))
    assert carries_tokens(chat({"role": None, "content": ""}))
    assert carries_tokens(chat({"content": "hi"}))
    assert not carries_tokens(chat({}, "stop"))


def test_datasets(tmp_path):
    reqs = random_requests(20, 10, 4, seed=3, range_ratio=0.5)
    assert all(5 <= r.prompt_len <= 15 and 2 <= r.output_len <= 6 for r in reqs)
    assert all(len(r.prompt.split()) == r.prompt_len for r in reqs)
    assert [r.prompt for r in reqs] == [r.prompt for r in random_requests(20, 10, 4, 3, 0.5)]
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "a b c", "output_len": 7}\n\n{"prompt_token_ids": [1, 2], "max_tokens": 3}\n')
    got = jsonl_requests(str(f), None, 9)
    assert [(r.prompt_len, r.output_len) for r in got] == [(3, 7), (2, 3)]
    with pytest.raises(KilnError):
        jsonl_requests(str(tmp_path / "missing.jsonl"), None, 1)


def test_bench_serve_against_live_server(bench_server, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = parse("--base-url", bench_server.base_url, "--num-prompts", "4", "--random-input-len",
                 "8", "--random-output-len", "4", "--request-rates", "inf,50", "--max-concurrency",
                 "2", "--slo", "ttft:60000,tpot:60000", "--cost-per-hour", "3.6", "--json", str(out))
    assert run_bench_serve(args) == 0
    report = json.loads(out.read_text())
    assert report["config"]["model"] == bench_server.model_name
    assert report["config"]["cost_per_hour"] == 3.6
    assert [r["request_rate"] for r in report["runs"]] == ["inf", 50.0]
    for run in report["runs"]:
        assert run["completed"] == 4 and run["failed"] == 0
        assert run["total_input_tokens"] == 4 * 8  # exact: prompts fitted with /tokenize
        assert run["total_output_tokens"] == 4 * 4  # ignore_eos + max_tokens fix the length
        assert 0 < run["ttft"]["mean_ms"] <= run["e2el"]["mean_ms"]
        assert run["ttft"]["p50_ms"] <= run["ttft"]["p99_ms"]
        assert run["tpot"]["mean_ms"] > 0 and run["itl"]["mean_ms"] > 0
        assert run["goodput"] == pytest.approx(run["request_throughput"])  # generous SLO
        assert run["output_token_throughput"] == pytest.approx(16 / run["duration_s"])
        # $3.60 an hour is $0.001 a second: 1M tokens at R tok/s cost 1000 / R dollars
        assert run["cost"]["usd_per_1m_output_tokens"] == pytest.approx(1000 / run["output_token_throughput"])
        assert run["cost"]["usd_per_1m_total_tokens"] == pytest.approx(1000 / run["total_token_throughput"])
    printed = capsys.readouterr().out
    assert "TTFT" in printed and "cost at $3.6/h: $" in printed


def test_bench_serve_chat_endpoint(bench_server, tmp_path):
    out = tmp_path / "chat.json"
    args = parse("--base-url", bench_server.base_url, "--endpoint", "/v1/chat/completions",
                 "--num-prompts", "2", "--random-input-len", "5", "--random-output-len", "3",
                 "--json", str(out))
    assert run_bench_serve(args) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["completed"] == 2 and run["total_output_tokens"] == 6
    assert run["total_input_tokens"] > 2 * 5  # words plus the chat template's tokens


def test_bench_serve_unreachable_server_fails_cleanly(tmp_path):
    args = parse("--base-url", "http://127.0.0.1:9", "--num-prompts", "1", "--timeout", "2")
    with pytest.raises(KilnError, match="pass --model"):
        run_bench_serve(args)


def test_plot(bench_server, tmp_path):
    png = tmp_path / "p.png"
    args = parse("--base-url", bench_server.base_url, "--num-prompts", "2", "--random-input-len",
                 "4", "--random-output-len", "2", "--request-rates", "inf,100", "--plot", str(png))
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(KilnError, match="matplotlib"):
            run_bench_serve(args)
        assert not png.exists()
    else:
        assert run_bench_serve(args) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
