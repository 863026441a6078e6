"""`kiln serve`: command-line flags, engine loading behind a live socket, and graceful shutdown.

This module imports nothing heavy, so the CLI can add the flags cheaply; the server itself lives
in ``kiln.server.lifecycle``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kiln.config import SUPPORTED_KV_CACHE_DTYPES


def add_serve_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `kiln serve` flags (named like vLLM's) to ``parser``."""
    parser.add_argument("model", nargs="?", default=None,
                        help="checkpoint or engine directory (default: the shipped demo model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument("--served-model-name", default=None,
                        help="model name clients use (default: the model directory's name)")
    parser.add_argument("--api-key", default=os.environ.get("KILN_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 routes (default: "
                             "$KILN_API_KEY; none: open)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    parser.add_argument("--chat-template", default=None,
                        help="Jinja chat template (a file, or the template itself) replacing the "
                             "tokenizer's for /v1/chat/completions")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--max-model-len", type=int, default=None, help="context limit in tokens")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="most sequences in a batch")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048,
                        help="token budget of one engine step")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    parser.add_argument("--num-kv-blocks", type=int, default=None,
                        help="KV-cache blocks (default: from memory profiling)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                        help="fraction of GPU memory the engine may use")
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                        default=True, help="reuse KV blocks of shared prompt prefixes")
    parser.add_argument("--max-waiting-requests", type=int, default=None,
                        help="refuse new requests with 429 when this many are waiting")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds in-flight requests may take to finish after SIGTERM")
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="/health fails when work waits and no step finished for this long")
    parser.add_argument("--seed", type=int, default=0, help="engine seed")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--enforce-eager", action="store_true", help="do not capture CUDA graphs")
    parser.add_argument("--cuda-graph-sizes", type=int, nargs="+", default=None, metavar="N",
                        help="decode batch sizes to capture as CUDA graphs (default: kiln's "
                             "buckets up to --max-num-seqs)")
    parser.add_argument("--prefill-graph-sizes", type=int, nargs="+", default=None, metavar="N",
                        help="token counts of steps with prompt tokens to capture as piecewise CUDA "
                             "graphs (default: 16 to 512, 1.5x apart, within --max-num-batched-tokens; "
                             "0: none)")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=SUPPORTED_KV_CACHE_DTYPES,
                        help="KV cache storage: the model dtype, or fp8 e4m3 with per-layer scales")
    parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                        help="schedule the next step while the device runs this one (default: "
                             "on for CUDA, off for the CPU)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    return parser


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The LLMEngine.from_args keyword arguments the serve flags set."""
    return dict(tokenizer=args.tokenizer, dtype=args.dtype, max_model_len=args.max_model_len,
                seed=args.seed, block_size=args.block_size, num_kv_blocks=args.num_kv_blocks,
                gpu_memory_utilization=args.gpu_memory_utilization,
                enable_prefix_caching=args.enable_prefix_caching, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens, device=args.device,
                enforce_eager=args.enforce_eager, async_scheduling=args.async_scheduling,
                cuda_graph_sizes=args.cuda_graph_sizes,
                prefill_graph_sizes=args.prefill_graph_sizes,
                kv_cache_dtype=args.kv_cache_dtype,
                max_waiting_requests=args.max_waiting_requests)


def load_chat_template(value: str) -> str:
    """The template text of ``--chat-template``: a file's contents, or the value itself when it is
    no file but looks like a template. Raises KilnError when it does not parse as Jinja."""
    from pathlib import Path

    from kiln.errors import KilnError

    path = Path(value).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    elif "{" in value:
        text = value
    else:
        raise KilnError(f"--chat-template {value!r} is neither a file nor a Jinja template")
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise KilnError(f"--chat-template does not parse as Jinja: {e.message} (line {e.lineno})") from e
    return text


def run_serve(args: argparse.Namespace) -> int:
    """Load the model named by ``args`` and serve it until SIGTERM/SIGINT; returns the exit code."""
    template = load_chat_template(args.chat_template) if args.chat_template else None

    def load() -> Any:
        from kiln.engine.llm_engine import LLMEngine
        engine = LLMEngine.from_args(args.model, **engine_kwargs(args))
        if template is not None:
            engine.tokenizer.chat_template = template
        return engine

    from kiln.server.lifecycle import serve

    return serve(load, host=args.host, port=args.port, served_model_name=args.served_model_name,
                 max_waiting_requests=args.max_waiting_requests,
                 shutdown_timeout=args.shutdown_timeout, stall_timeout=args.stall_timeout,
                 log_level=args.log_level, api_key=args.api_key)


def main(argv: list[str] | None = None) -> int:
    """`python -m kiln.server.launch MODEL ...` (the same as `kiln serve`)."""
    parser = add_serve_args(argparse.ArgumentParser(prog="kiln serve", description=__doc__))
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
