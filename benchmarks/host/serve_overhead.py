"""What the HTTP server adds to every streamed token: `kiln serve` with a model step of fixed cost.

The engine is the real one (scheduler, KV bookkeeping, detokenizer, AsyncEngine, the OpenAI app,
uvicorn), but its runner returns random tokens after ``--step-ms`` of sleep, which holds no lock,
as a GPU step does not. So at saturation each streamed token's inter-token latency is the step
time plus whatever the host adds (scheduling, outputs, the event loop, JSON, SSE, the client
sharing the machine). ``kiln bench serve`` drives it from another process.

    PYTHONPATH=. python benchmarks/host/serve_overhead.py --num-prompts 100 --step-ms 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


class _Launched:
    def __init__(self, out, ready_at: float):
        self._out, self._ready_at = out, ready_at

    def result(self):
        delay = self._ready_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        return self._out


class TimedRunner:
    """Samples a random token per row; each step is ready ``step_s`` after it was launched."""

    def __init__(self, step_s: float, vocab: int):
        self.step_s, self.vocab, self.rng = step_s, vocab, random.Random(0)

    def _output(self, out):
        from kiln.batch import ModelOutput

        rows = [s for s in out.scheduled if s.sample]
        return ModelOutput(request_ids=[s.request_id for s in rows],
                           sampled_token_ids=[self.rng.randrange(self.vocab) for _ in rows])

    def launch(self, out):
        return _Launched(self._output(out), time.perf_counter() + self.step_s)

    def execute(self, out):
        return self.launch(out).result()


def run_server(args) -> None:
    from kiln.engine.llm_engine import LLMEngine
    from kiln.server.lifecycle import serve

    def load():
        engine = LLMEngine.from_args(args.model, device="cpu", max_num_seqs=args.max_num_seqs,
                                     max_num_batched_tokens=8192, num_kv_blocks=20000,
                                     max_model_len=1024)
        # Tokens the tokenizer can spell, so detokenizing does real work.
        engine.runner = TimedRunner(args.step_ms / 1e3, min(len(engine.tokenizer), engine.model.args.vocab_size))
        return engine

    if args.profile:  # CPU time per function over every thread of the server (pip install yappi)
        import yappi

        yappi.set_clock_type("cpu")
        yappi.start()
    code = serve(load, port=args.port, log_level="warning")
    if args.profile:
        yappi.stop()
        stats = yappi.get_func_stats()
        stats.sort("ttot")
        with open(args.profile, "w") as f:
            stats.print_all(out=f, columns={0: ("name", 100), 1: ("ncall", 10), 2: ("tsub", 8),
                                             3: ("ttot", 8)})
    sys.exit(code)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    from kiln.demo import DEMO_MODEL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEMO_MODEL, help="checkpoint whose tokenizer is used")
    ap.add_argument("--num-prompts", type=int, default=100)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--step-ms", type=float, default=8.0)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--port", type=int, default=8077)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pin", action="store_true", help="server on CPU 0, client on CPU 1 (taskset)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", default=None, help="write the server's yappi CPU profile here")
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        run_server(args)
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # --pin: the server on CPU 0 and the client on CPU 1, so that they do not compete.
    pin_server = ["taskset", "-c", "0"] if args.pin else []
    pin_client = ["taskset", "-c", "1"] if args.pin else []
    server = subprocess.Popen(pin_server + [sys.executable, __file__, "--server", "--model", args.model,
                               "--port", str(args.port), "--step-ms", str(args.step_ms),
                               "--max-num-seqs", str(args.max_num_seqs)]
                              + (["--profile", args.profile] if args.profile else []), env=env)
    runs = []
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{args.port}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not become healthy")
        for _ in range(args.repeats):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cpu0 = cpu_seconds(server.pid)
                subprocess.run(pin_client + [sys.executable, "-m", "kiln.cli", "bench", "serve", "--base-url",
                                f"http://127.0.0.1:{args.port}", "--request-rates", "inf",
                                "--num-prompts", str(args.num_prompts), "--random-input-len",
                                str(args.input_len), "--random-output-len", str(args.output_len),
                                "--json", f.name], env=env, check=True, stdout=subprocess.DEVNULL)
                cpu = cpu_seconds(server.pid) - cpu0
                r = json.loads(Path(f.name).read_text())["runs"][0]
            tokens = r["total_output_tokens"]
            runs.append({"output_tok_s": r["output_token_throughput"], "tpot_p50_ms": r["tpot"]["p50_ms"],
                         "itl_p50_ms": r["itl"]["p50_ms"], "itl_p99_ms": r["itl"]["p99_ms"],
                         "ttft_p50_ms": r["ttft"]["p50_ms"],
                         "server_cpu_us_per_token": 1e6 * cpu / tokens})
            print(json.dumps(runs[-1]))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    result = {"step_ms": args.step_ms, "pinned": args.pin, "num_prompts": args.num_prompts, "input_len": args.input_len,
              "output_len": args.output_len, "runs": runs,
              "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "python": platform.python_version()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
