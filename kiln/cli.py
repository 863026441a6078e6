"""The `kiln` command line: generate, serve, random-model, bench, ..."""

from __future__ import annotations

import argparse
import logging
import sys

from kiln.config import SUPPORTED_KV_CACHE_DTYPES
from kiln.errors import KilnError


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Flags that build an engine (names as vLLM's), shared by generate, serve and the benches."""
    g = p.add_argument_group("engine")
    g.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context limit in tokens (default: the model's)")
    g.add_argument("--max-num-seqs", type=int, default=256, help="most sequences in a batch")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="token budget of one engine step")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    g.add_argument("--num-kv-blocks", type=int, default=None,
                   help="KV-cache blocks (default: from memory profiling)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of GPU memory the engine may use")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse KV blocks of shared prompt prefixes")
    g.add_argument("--kv-cache-dtype", default="auto", choices=SUPPORTED_KV_CACHE_DTYPES,
                   help="KV cache storage: the model dtype, or fp8 e4m3 with per-layer scales")
    g.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "no-evict"],
                   help="fcfs: admit in arrival order and preempt the newest request when blocks "
                        "run out; no-evict: admit a request only when free blocks cover its whole "
                        "length, so none is ever preempted")
    g.add_argument("--enforce-eager", action="store_true", help="do not capture CUDA graphs")
    g.add_argument("--cuda-graph-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="decode batch sizes to capture as CUDA graphs (default: 1, 2, 4, 8, then every "
                        "16 up to --max-num-seqs)")
    g.add_argument("--prefill-graph-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="token counts of steps with prompt tokens to capture as piecewise CUDA "
                        "graphs (default: 16 to 512, 1.5x apart, within --max-num-batched-tokens; "
                        "0: none)")
    g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="schedule the next step while the device runs this one (default: on "
                        "for CUDA, off for the CPU)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--seed", type=int, default=0, help="engine seed")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The LLMEngine.from_args keywords from parsed engine flags (add_engine_args)."""
    return dict(dtype=args.dtype, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size,
                num_kv_blocks=args.num_kv_blocks, gpu_memory_utilization=args.gpu_memory_utilization,
                enable_prefix_caching=args.enable_prefix_caching,
                scheduling_policy=args.scheduling_policy, enforce_eager=args.enforce_eager,
                cuda_graph_sizes=args.cuda_graph_sizes,
                prefill_graph_sizes=args.prefill_graph_sizes,
                async_scheduling=args.async_scheduling, kv_cache_dtype=args.kv_cache_dtype,
                device=args.device, seed=args.seed)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Sampling flags (names as SamplingParams fields)."""
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--min-tokens", type=int, default=0)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--sampling-seed", type=int, default=None, help="per-request seed (reproducible)")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")


def sampling_params_from(args: argparse.Namespace):
    """SamplingParams from parsed sampling flags."""
    from kiln.sampling_params import SamplingParams
    return SamplingParams(max_tokens=args.max_tokens, min_tokens=args.min_tokens,
                          temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          presence_penalty=args.presence_penalty,
                          frequency_penalty=args.frequency_penalty, seed=args.sampling_seed,
                          stop=args.stop, ignore_eos=args.ignore_eos)


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream one completion to the terminal."""
    from kiln.engine.llm_engine import LLMEngine

    params = sampling_params_from(args)
    engine = LLMEngine.from_args(args.model, **engine_kwargs(args))
    prompt = args.prompt
    if args.chat:
        prompt = {"prompt_token_ids": list(engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
            return_dict=False))}
    else:
        sys.stdout.write(prompt)
    engine.add_request("cli", prompt, params)
    shown = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            text = out.outputs[0].text
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
    sys.stdout.write("\n")
    return 0


def cmd_random_model(args: argparse.Namespace) -> int:
    """Write a random-weight checkpoint of a real architecture."""
    from kiln.models.random_model import list_presets, write_random_model

    if args.list:
        for name in list_presets():
            print(name)
        return 0
    if not args.preset or not args.out:
        raise KilnError("random-model needs --preset NAME and --out DIR (see --list)")
    path = write_random_model(args.preset, args.out, seed=args.seed, dtype=args.dtype,
                              device=args.device)
    print(f"wrote {args.preset} to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full `kiln` argument parser."""
    from kiln import __version__

    parser = argparse.ArgumentParser(
        prog="kiln", description="kiln: LLM inference compiler, runtime and server.")
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("generate", help="generate text for one prompt, streamed to the terminal")
    p.add_argument("prompt")
    p.add_argument("--model", default=None, help="checkpoint or engine directory (default: the demo model)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    add_engine_args(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("random-model", help="write a random-weight checkpoint of a real architecture")
    p.add_argument("--preset")
    p.add_argument("--out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.set_defaults(func=cmd_random_model)

    from kiln.build.cli import add_build_parser
    add_build_parser(sub)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub) -> None:
    """Commands whose modules carry heavier imports register here."""
    try:
        from kiln.server.app import add_serve_args, run_serve
    except ImportError:  # server extras not installed
        add_serve_args = None
    if add_serve_args is not None:
        p = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
        add_serve_args(p)
        p.set_defaults(func=run_serve)
    p = sub.add_parser("bench", help="benchmarks: latency, throughput, serve")
    bench = p.add_subparsers(dest="bench_command", metavar="BENCH")
    try:
        from kiln.bench.cli import add_bench_commands
        add_bench_commands(bench)
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kiln` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except KilnError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
