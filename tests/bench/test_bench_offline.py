"""`kiln bench latency` and `kiln bench throughput` through the real CLI on a tiny checkpoint (CPU)."""

from __future__ import annotations

import json

import pytest

from kiln.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from kiln.models.random_model import write_random_model

    return str(write_random_model("tiny-llama", tmp_path_factory.mktemp("tiny") / "m",
                                  dtype="float32"))


def run_cli(*argv: str) -> None:
    assert main(list(argv)) in (0, None)


def test_latency_json_and_baseline(tiny_dir, tmp_path, capsys):
    out = tmp_path / "lat.json"
    run_cli("bench", "latency", "--model", tiny_dir, "--batch-size", "2", "--input-len", "16",
            "--output-len", "6", "--num-iters", "2", "--num-iters-warmup", "1", "--no-progress",
            "--baseline", "hf", "--cost-per-hour", "3.6", "--json", str(out))
    r = json.loads(out.read_text())
    assert r["batch_size"] == 2 and r["output_len"] == 6
    # $3.60 an hour is $0.001 a second: 1M tokens at R tok/s cost 1000 / R dollars, for kiln and
    # for the baseline alike
    assert r["cost"]["usd_per_hour"] == 3.6
    assert r["cost"]["usd_per_1m_output_tokens"] == pytest.approx(1000 / r["output_tokens_per_s"])
    assert r["cost"]["usd_per_1m_total_tokens"] == pytest.approx(1000 * r["total_seconds"] / (2 * (16 + 6)))
    assert r["baseline"]["cost"]["usd_per_1m_output_tokens"] == pytest.approx(
        1000 / r["baseline"]["output_tokens_per_s"])
    assert r["ttft_ms"] > 0 and r["tpot_ms"] > 0 and r["decode_tokens_per_s"] > 0
    assert r["total_seconds"] * 1e3 > r["ttft_ms"]
    # the medians above are the distributions' p50 over the two timed iterations
    lat, first = r["latency_distribution"], r["ttft_distribution"]
    assert lat["p50_ms"] == pytest.approx(r["total_seconds"] * 1e3)
    assert first["p50_ms"] == pytest.approx(r["ttft_ms"])
    assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and first["p50_ms"] <= first["p99_ms"]
    # Bytes a decode step reads: the untied tiny model's embedding table is left out.
    assert 0 < r["weight_bytes"] and r["achieved_gbs"] > 0
    assert r["baseline"]["output_tokens_per_s"] > 0 and r["speedup_vs_hf"] > 0
    printed = capsys.readouterr().out
    assert "TPOT" in printed and printed.count("cost at $3.6/h") == 2
    assert "over 2 iterations: latency mean" in printed


def test_latency_with_one_output_token_reports_ttft_only(tiny_dir, tmp_path, capsys):
    out = tmp_path / "ttft.json"
    run_cli("bench", "latency", "--model", tiny_dir, "--input-len", "48", "--output-len", "1",
            "--num-iters", "2", "--num-iters-warmup", "1", "--no-progress", "--json", str(out))
    r = json.loads(out.read_text())
    assert r["ttft_ms"] > 0 and r["prefill_tokens_per_s"] > 0
    assert r["tpot_ms"] is None and r["decode_tokens_per_s"] is None and r["achieved_gbs"] is None
    assert "no decode step" in capsys.readouterr().out


def test_throughput_json(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KILN_ATTN_LARGE_TILE", "64,2,5")
    monkeypatch.setenv("KILN_API_KEY", "not-for-the-json")
    out = tmp_path / "tp.json"
    run_cli("bench", "throughput", "--model", tiny_dir, "--num-prompts", "12", "--input-len", "16",
            "--output-len", "8", "--max-num-seqs", "4", "--no-progress", "--json", str(out))
    r = json.loads(out.read_text())
    assert r["output_tokens_per_s"] > 0 and r["requests_per_s"] > 0
    assert "cost" not in r  # no price given
    assert r["engine"]["max_num_seqs"] == 4 and r["engine"]["quantization"] == "none"
    assert r["environment"]["kiln_env"]["KILN_ATTN_LARGE_TILE"] == "64,2,5"
    assert "KILN_API_KEY" not in r["environment"]["kiln_env"]
    out = capsys.readouterr().out
    assert "throughput: 12 requests" in out and "startup (load + profile + graphs)" in out
