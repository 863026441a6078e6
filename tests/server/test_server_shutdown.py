"""SIGTERM on a `kiln serve` subprocess: new calls refused, the in-flight stream completes, the
process exits 0 and leaves no child process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from server_helpers import free_port, wait_healthy

REPO = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry.name))
    return kids


def test_sigterm_drains_and_exits_zero(tiny_checkpoint):
    if tiny_checkpoint is None:
        pytest.skip("the real engine cannot load a checkpoint here")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "serve", str(tiny_checkpoint), "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu", "--dtype", "float32", "--max-model-len", "128",
         "--num-kv-blocks", "64", "--shutdown-timeout", "60", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(base, timeout=120, proc=proc)
        first = threading.Event()
        result: dict = {}

        def stream():
            body = {"prompt": [50, 51], "max_tokens": 120, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=120) as r:
                events = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        first.set()
                result["events"] = events

        t = threading.Thread(target=stream)
        t.start()
        assert first.wait(60)
        assert children_of(proc.pid) == []
        proc.send_signal(signal.SIGTERM)
        # While draining: refused with 503 (the socket stays open until the drain ends).
        refused = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                             timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
        assert httpx.get(f"{base}/health", timeout=30).status_code == 503
        t.join(timeout=120)
        events = result["events"]
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 120  # the in-flight request ran to its end
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health")
        assert children_of(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_model_path_is_one_line_error(tmp_path):
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "kiln.cli", "serve", str(tmp_path / "missing"),
                        "--port", str(port), "--device", "cpu"],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("kiln: error:")
    assert "Traceback" not in r.stderr

