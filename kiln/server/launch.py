"""`kiln serve`: command-line flags, engine loading behind a live socket, and graceful shutdown.

This module imports nothing heavy, so the CLI can add the flags cheaply; the server itself lives
in ``kiln.server.lifecycle``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kiln.cli import add_engine_args
from kiln.cli import engine_kwargs as shared_engine_kwargs


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
    parser.add_argument("--max-waiting-requests", type=int, default=None,
                        help="refuse new requests with 429 when this many are waiting")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds in-flight requests may take to finish after SIGTERM")
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="/health fails when work waits and no step finished for this long")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    add_engine_args(parser)
    return parser


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The LLMEngine.from_args keyword arguments the serve flags set: the engine flags every
    command shares (kiln.cli.engine_kwargs), the tokenizer and the admission limit."""
    return dict(shared_engine_kwargs(args), tokenizer=args.tokenizer,
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
