"""`kiln bench latency | throughput | serve`."""

from __future__ import annotations

import argparse


def _offline(module):
    def run(args: argparse.Namespace) -> int:
        from kiln.bench.common import write_json
        from kiln.cli import engine_kwargs

        result = module.run(args, engine_kwargs(args))
        module.print_result(result)
        write_json(args.json, result)
        return 0
    return run


def add_bench_commands(sub) -> None:
    """Register the bench subcommands on an argparse subparsers object."""
    from kiln.bench import latency, throughput
    from kiln.bench.cost import add_cost_arg
    from kiln.cli import add_engine_args

    for name, module, helptext in (("latency", latency, "one batch: TTFT, TPOT, tokens/s, GB/s"),
                                   ("throughput", throughput, "N requests at once: tokens/s")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", default=None, help="checkpoint or engine dir (default: demo model)")
        module.add_args(p)
        p.add_argument("--json", default=None, help="write results to this file")
        p.add_argument("--baseline", choices=["none", "hf"], default="none",
                       help="also run transformers' generate on the same workload")
        add_cost_arg(p)
        p.add_argument("--no-progress", dest="progress", action="store_false")
        p.add_argument("--no-gpu-clocks", dest="gpu_clocks", action="store_false",
                       help="do not sample the GPU's SM clock, power and clock-event reasons "
                            "(nvidia-smi) during the timed run")
        add_engine_args(p)
        p.set_defaults(func=_offline(module))
    try:
        from kiln.bench.serve import add_bench_serve_args, run_bench_serve
    except ImportError:
        return
    p = sub.add_parser("serve", help="load an OpenAI-compatible server: TTFT, TPOT, ITL, goodput")
    add_bench_serve_args(p)
    p.set_defaults(func=run_bench_serve)
