"""Load behaviour of a live server on the real engine: exact metrics, 429 under a full queue, and
cancellation of many streams freeing everything."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server_helpers import thread_server


def scrape(base_url: str) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels without model_name): value}."""
    text = httpx.get(f"{base_url}/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name"))
            out[(s.name, labels)] = s.value
    return out


def test_metrics_exact_after_n_requests(make_engine):
    n, max_tokens = 4, 3
    prompts = [[20 + i] * (3 + i) for i in range(n)]  # 3, 4, 5, 6 tokens
    with thread_server(make_engine(max_model_len=64)) as srv:
        c = srv.client()
        for p in prompts:
            r = c.completions.create(model=srv.model_name, prompt=p, max_tokens=max_tokens,
                                     temperature=0, extra_body={"ignore_eos": True})
            assert r.usage.completion_tokens == max_tokens
        m = scrape(srv.base_url)
    assert m[("kiln:prompt_tokens_total", ())] == sum(len(p) for p in prompts)
    assert m[("kiln:generation_tokens_total", ())] == n * max_tokens
    assert m[("kiln:request_success_total", (("finished_reason", "length"),))] == n
    assert m[("kiln:time_to_first_token_seconds_count", ())] == n
    assert m[("kiln:e2e_request_latency_seconds_count", ())] == n
    assert m[("kiln:request_queue_time_seconds_count", ())] == n
    assert m[("kiln:inter_token_latency_seconds_count", ())] == n * (max_tokens - 1)
    assert m[("kiln:time_to_first_token_seconds_sum", ())] > 0
    assert m[("kiln:e2e_request_latency_seconds_sum", ())] >= m[("kiln:time_to_first_token_seconds_sum", ())]
    assert m[("kiln:num_requests_running", ())] == 0 and m[("kiln:num_requests_waiting", ())] == 0
    assert m[("kiln:kv_cache_usage_perc", ())] == 0.0
    for name in ("kiln:num_preemptions_total", "kiln:prefix_cache_queries_total",
                 "kiln:prefix_cache_hits_total"):
        assert (name, ()) in m


async def _first_chunk(client: httpx.AsyncClient, url: str, body: dict, started: asyncio.Event) -> None:
    async with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and '"text"' in line:
                started.set()
        await asyncio.sleep(3600)  # hold the stream open until cancelled


async def _wait_for(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


def test_queue_full_is_429(make_engine):
    with thread_server(make_engine(max_model_len=512, max_num_seqs=1),
                       max_waiting_requests=1) as srv:
        url = f"{srv.base_url}/v1/completions"
        long = {"prompt": [30, 31], "max_tokens": 500, "ignore_eos": True, "stream": True}

        async def main():
            async with httpx.AsyncClient(timeout=60) as client:
                started = asyncio.Event()
                a = asyncio.create_task(_first_chunk(client, url, long, started))
                await asyncio.wait_for(started.wait(), 30)
                b = asyncio.create_task(_first_chunk(client, url, long, asyncio.Event()))
                assert await _wait_for(lambda: srv.engine.stats().get("num_waiting") == 1)
                r = await client.post(url, json={"prompt": "x", "max_tokens": 2})
                assert r.status_code == 429, r.text
                err = r.json()["error"]
                assert err["code"] == "queue_full" and err["type"] == "rate_limit_error"
                a.cancel()
                b.cancel()
                await asyncio.gather(a, b, return_exceptions=True)
                # The queue drains (both aborted), so the next request is served.
                assert await _wait_for(lambda: srv.engine.stats().get("num_waiting") == 0
                                       and srv.engine.stats().get("num_running") == 0)
                r = await client.post(url, json={"prompt": "x", "max_tokens": 2})
                assert r.status_code == 200

        asyncio.run(main())


def test_cancelling_many_streams_frees_everything(make_engine):
    n = 12
    # Outputs long enough (500 tokens) that no request can finish before the cancellation: each
    # step also waits 50 ms, so the first four take at least 25 s, however slowly the twelve
    # arrive on a loaded machine (once, without the wait, a running request finished and a
    # waiting one started before the last had arrived).
    engine = make_engine(max_model_len=512, max_num_seqs=4)
    real_step = engine.step

    def slow_step():
        time.sleep(0.05)
        return real_step()

    engine.step = slow_step
    with thread_server(engine) as srv:
        url = f"{srv.base_url}/v1/completions"

        async def main():
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
                events = [asyncio.Event() for _ in range(n)]
                tasks = [asyncio.create_task(_first_chunk(
                    client, url, {"prompt": [40 + i, 41], "max_tokens": 500, "ignore_eos": True,
                                  "stream": True}, ev)) for i, ev in enumerate(events)]
                # Some are running and streaming, the rest are waiting in the engine. Which four
                # run depends on the order the twelve arrive in: wait for any first chunk (the
                # first request's can come only after 25 s, if it was queued behind four others).
                waiters = [asyncio.create_task(ev.wait()) for ev in events]
                done, pending = await asyncio.wait(waiters, timeout=30,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for w in pending:
                    w.cancel()
                assert done, "no stream sent a first chunk within 30 s"
                # Generous: on a loaded 2-core machine the twelve requests arrive slowly.
                assert await _wait_for(lambda: srv.engine.stats().get("num_running") == 4
                                       and srv.engine.stats().get("num_waiting") == n - 4, 90)
                assert srv.engine.stats()["kv_cache_usage"] > 0
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(main())
        m = None

        def idle() -> bool:
            nonlocal m
            m = scrape(srv.base_url)
            return (m[("kiln:num_requests_running", ())] == 0
                    and m[("kiln:num_requests_waiting", ())] == 0
                    and m[("kiln:kv_cache_usage_perc", ())] == 0.0)

        assert asyncio.run(_wait_for(idle, 10)), m
        assert m[("kiln:request_success_total", (("finished_reason", "abort"),))] == n
        assert srv.engine.num_in_flight() == 0
        t0 = time.monotonic()
        r = srv.client().completions.create(model=srv.model_name, prompt="hi", max_tokens=2,
                                            extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 2
        assert time.monotonic() - t0 < 10  # served at once, not behind 12 ghost requests
