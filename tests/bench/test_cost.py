"""--cost-per-hour: dollars per million tokens at a measured rate."""

from __future__ import annotations

import json

import pytest

from kiln.bench import cost
from kiln.cli import main


def test_usd_per_million_tokens():
    # $2 an hour at 1000 tok/s: 3.6M tokens an hour, so 1M cost 2 / 3.6 dollars
    assert cost.usd_per_million(2.0, 1000.0) == pytest.approx(2 / 3.6)
    assert cost.usd_per_million(2.0, 0.0) is None and cost.usd_per_million(2.0, None) is None
    block = cost.cost_block(7.2, 2000.0, 4000.0)
    assert block == {"usd_per_hour": 7.2, "usd_per_1m_output_tokens": pytest.approx(1.0),
                     "usd_per_1m_total_tokens": pytest.approx(0.5)}
    assert cost.cost_block(None, 2000.0) is None
    assert cost.describe(block) == "cost at $7.2/h: $1 per 1M output tokens, $0.5 per 1M total tokens"
    assert cost.describe(cost.cost_block(3.6, 1e5)) == "cost at $3.6/h: $0.01 per 1M output tokens"
    assert cost.describe(None) == ""


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "two dollars"])
def test_bad_price_is_refused_by_every_bench(bad, capsys):
    for bench in ("latency", "throughput", "serve"):
        with pytest.raises(SystemExit) as e:
            main(["bench", bench, "--cost-per-hour", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--cost-per-hour" in err and ("above zero" in err or "expected a price" in err)


def test_throughput_cost(tmp_path, capsys):
    from kiln.models.random_model import write_random_model

    model = str(write_random_model("tiny-llama", tmp_path / "m", dtype="float32"))
    out = tmp_path / "tp.json"
    assert main(["bench", "throughput", "--model", model, "--num-prompts", "6", "--input-len", "8",
                 "--output-len", "4", "--no-progress", "--cost-per-hour", "3.6",
                 "--json", str(out)]) in (0, None)
    r = json.loads(out.read_text())
    assert r["cost"]["usd_per_1m_output_tokens"] == pytest.approx(1000 / r["output_tokens_per_s"])
    assert r["cost"]["usd_per_1m_total_tokens"] == pytest.approx(1000 / r["total_tokens_per_s"])
    assert r["cost"]["usd_per_1m_total_tokens"] < r["cost"]["usd_per_1m_output_tokens"]
    assert "cost at $3.6/h: $" in capsys.readouterr().out
