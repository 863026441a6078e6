"""Failure paths the real engine cannot produce on demand, on the fake engine: a step that raises,
a step that stalls, a server still starting, errors from add_request, shutdown with work left."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import uvicorn
from server_fake_engine import FakeEngine

from server_helpers import free_port, thread_server, wait_healthy
from kiln.engine.async_engine import AsyncEngine, EngineDeadError, QueueFullError
from kiln.errors import InvalidRequestError
from kiln.sampling_params import SamplingParams
from kiln.server.app import ServerState, build_app


def test_step_exception_kills_engine_and_fails_in_flight():
    engine = FakeEngine(step_delay=0.01, fail_at_step=15)
    with thread_server(engine) as srv:
        results = {}

        def non_stream():
            results["plain"] = httpx.post(f"{srv.base_url}/v1/completions", timeout=30,
                                          json={"prompt": "abc", "max_tokens": 100})

        def stream():
            with httpx.stream("POST", f"{srv.base_url}/v1/completions", timeout=30,
                              json={"prompt": "abd", "max_tokens": 100, "stream": True}) as r:
                results["stream_status"] = r.status_code
                results["events"] = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]

        threads = [threading.Thread(target=non_stream), threading.Thread(target=stream)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert results["plain"].status_code == 503
        assert "engine loop died" in results["plain"].json()["error"]["message"]
        assert results["stream_status"] == 200  # the failure came after the headers
        events = results["events"]
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["code"] == "service_unavailable" and "simulated CUDA error" in err["message"]
        assert len(events) > 3  # some tokens were streamed before the failure
        health = httpx.get(f"{srv.base_url}/health")
        assert health.status_code == 503 and "died" in health.json()["error"]["message"]
        late = httpx.post(f"{srv.base_url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert late.status_code == 503


def test_stalled_step_makes_health_fail_then_recover():
    engine = FakeEngine(stall_at_step=3, stall_s=1.5)
    with thread_server(engine, stall_timeout=0.5) as srv:
        t = threading.Thread(target=httpx.post, args=(f"{srv.base_url}/v1/completions",),
                             kwargs={"json": {"prompt": "x", "max_tokens": 6}, "timeout": 30})
        t.start()
        deadline = time.monotonic() + 5
        seen_503 = False
        while time.monotonic() < deadline and not seen_503:
            seen_503 = httpx.get(f"{srv.base_url}/health").status_code == 503
            time.sleep(0.05)
        assert seen_503, "health never noticed the stalled step"
        t.join(timeout=10)
        assert httpx.get(f"{srv.base_url}/health").status_code == 200


def test_503_while_starting():
    state = ServerState()
    port = free_port()
    config = uvicorn.Config(build_app(state), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{base}/health")
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert r.status_code == 503
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and "starting" in r.json()["error"]["message"]
        assert httpx.get(f"{base}/v1/models").status_code == 503
        assert httpx.get(f"{base}/version").status_code == 200
        # Attaching the engine opens the doors.
        from kiln.server.metrics import ServerMetrics
        engine = AsyncEngine(FakeEngine())
        engine.start()
        state.attach(engine, ServerMetrics("fake-model", engine.stats))
        wait_healthy(base, timeout=5)
        assert httpx.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
        engine.shutdown()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_async_engine_validation_error_reaches_caller_and_loop_survives():
    async def main():
        engine = AsyncEngine(FakeEngine(max_model_len=32))
        engine.start()
        try:
            with pytest.raises(InvalidRequestError) as e:
                await engine.add_request([1, 2, 3], SamplingParams(max_tokens=100), "too-long")
            assert e.value.code == "context_length_exceeded"
            with pytest.raises(InvalidRequestError):
                await engine.add_request([], SamplingParams(max_tokens=1), "empty")
            outs = [o async for o in engine.generate([1, 2], SamplingParams(max_tokens=3), "ok")]
            assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 3
            assert engine.is_healthy() and engine.num_in_flight() == 0
        finally:
            engine.shutdown()
    asyncio.run(main())


def test_async_engine_admission_control_and_abort():
    async def main():
        fake = FakeEngine(max_num_seqs=1, step_delay=0.01)
        engine = AsyncEngine(fake, max_waiting_requests=1)
        engine.start()
        try:
            running = await engine.add_request([1], SamplingParams(max_tokens=200), "a")
            await running.__anext__()
            waiting = await engine.add_request([2], SamplingParams(max_tokens=200), "b")
            with pytest.raises(QueueFullError):
                await engine.add_request([3], SamplingParams(max_tokens=2), "c")
            running.close()
            waiting.close()
            deadline = time.monotonic() + 5
            while fake.has_unfinished_requests() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not fake.has_unfinished_requests()  # both aborted in the engine
            outs = [o async for o in engine.generate([3], SamplingParams(max_tokens=2), "c")]
            assert outs[-1].finished
        finally:
            engine.shutdown()
    asyncio.run(main())


def test_async_engine_shutdown_fails_in_flight():
    async def main():
        engine = AsyncEngine(FakeEngine(step_delay=0.01))
        engine.start()
        stream = await engine.add_request([1], SamplingParams(max_tokens=200), "long")
        await stream.__anext__()
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown, 0.05)
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass
        assert not engine.is_alive()
        with pytest.raises(EngineDeadError):
            await engine.add_request([1], SamplingParams(max_tokens=1))
    asyncio.run(main())
