"""What a measured rate costs: US dollars per million tokens at a given hourly price.

`--cost-per-hour USD` on `kiln bench latency | throughput | serve` is the hourly price of the
hardware the run uses (all of its GPUs). Each result then carries a ``cost`` block, and a
baseline run beside kiln gets one from the same price, so the two compare per token.
"""

from __future__ import annotations

import argparse
import math


def positive_price(text: str) -> float:
    """argparse type of --cost-per-hour: a finite price above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a price in USD per hour, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"the price per hour must be above zero, got {text}")
    return value


def add_cost_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cost-per-hour", type=positive_price, default=None, metavar="USD",
                   help="hourly price of the hardware the run uses (all its GPUs): adds the "
                        "cost of 1M output and 1M total tokens at the measured rates")


def usd_per_million(cost_per_hour: float, tokens_per_s: float | None) -> float | None:
    """Dollars for 1,000,000 tokens produced at tokens_per_s on hardware priced cost_per_hour."""
    if not tokens_per_s or tokens_per_s <= 0:
        return None
    return cost_per_hour / 3600.0 / tokens_per_s * 1e6


def cost_block(cost_per_hour: float | None, output_tokens_per_s: float | None,
               total_tokens_per_s: float | None = None) -> dict | None:
    """The ``cost`` entry of a result (None when no price was given)."""
    if cost_per_hour is None:
        return None
    block = {"usd_per_hour": cost_per_hour,
             "usd_per_1m_output_tokens": usd_per_million(cost_per_hour, output_tokens_per_s)}
    if total_tokens_per_s is not None:
        block["usd_per_1m_total_tokens"] = usd_per_million(cost_per_hour, total_tokens_per_s)
    return block


def add_costs(result: dict, cost_per_hour: float | None, total_tokens_per_s: float) -> None:
    """An offline bench's ``cost`` block (its output_tokens_per_s and total_tokens_per_s), and
    its baseline's (output tokens only) when one ran, at one price; nothing without a price."""
    if cost_per_hour is None:
        return
    result["cost"] = cost_block(cost_per_hour, result["output_tokens_per_s"], total_tokens_per_s)
    if "baseline" in result:
        result["baseline"]["cost"] = cost_block(cost_per_hour, result["baseline"]["output_tokens_per_s"])


def describe(block: dict | None) -> str:
    """"cost at $2.5/h: $0.0347 per 1M output tokens, $0.0174 per 1M total tokens" or ""."""
    if not block:
        return ""
    parts = []
    for key, what in (("usd_per_1m_output_tokens", "output"), ("usd_per_1m_total_tokens", "total")):
        if block.get(key) is not None:
            parts.append(f"${block[key]:.4g} per 1M {what} tokens")
    if not parts:
        return ""
    return f"cost at ${block['usd_per_hour']:g}/h: " + ", ".join(parts)
