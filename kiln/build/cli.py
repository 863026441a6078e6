"""The `kiln build` subcommand: flags, and the command that runs the builder and prints a summary."""

from __future__ import annotations

import argparse
import sys

from kiln.build.gpu_target import KNOWN_GPUS
from kiln.config import SUPPORTED_KV_CACHE_DTYPES
from kiln.quant.config import LM_HEAD_SCHEMES, SCHEMES, QuantConfig


def add_build_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``build`` on the ``kiln`` subparsers; returns the new parser (func = cmd_build)."""
    p = subparsers.add_parser(
        "build", help="compile a checkpoint into a quantized engine directory",
        description="Quantize and package a checkpoint for one GPU (or cpu), with calibration and "
                    "an accuracy report, into ENGINE_DIR (engine.json + weights + tokenizer).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="Hugging Face checkpoint directory")
    p.add_argument("--output", "-o", required=True, metavar="ENGINE_DIR")
    p.add_argument("--quant", default="none", choices=SCHEMES)
    p.add_argument("--lm-head-quant", default="none", choices=LM_HEAD_SCHEMES,
                   help="fp8: store the LM head as fp8 W8A8 too (per-channel weight scales, "
                        "per-token activations); int8-wo / int4-wo: weight-only (per-channel / "
                        "--group-size groups, rounded to nearest); with any --quant. Default: "
                        "keep it in the model dtype, as the other tools do; it is read once per "
                        "decode step")
    p.add_argument("--kv-cache-dtype", default="auto", choices=SUPPORTED_KV_CACHE_DTYPES)
    p.add_argument("--group-size", type=int, default=128, help="int4 group size (32, 64, 128)")
    p.add_argument("--smoothquant-alpha", type=float, default=0.5)
    p.add_argument("--calib-data", default=None, metavar="FILE",
                   help="JSONL with a \"text\" field per line, or a text file (default: demo corpus, train split)")
    p.add_argument("--calib-samples", type=int, default=64, metavar="N")
    p.add_argument("--calib-seq-len", type=int, default=256, metavar="L")
    p.add_argument("--eval-data", default=None, metavar="FILE",
                   help="held-out text for the accuracy report (default: demo corpus, test split)")
    p.add_argument("--eval-tokens", type=int, default=4096, help="0 skips the accuracy report")
    p.add_argument("--target-gpu", default="auto",
                   help=f"auto (this machine), cpu, or one of: {', '.join(KNOWN_GPUS)}")
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--max-seq-len", type=int, default=None, help="default: the model's max positions")
    p.add_argument("--max-accuracy-drop", default=None, metavar="SPEC",
                   help="fail the build when worse: top1=D,kl=K,ppl=P (top1: allowed top-1 "
                        "disagreement; kl: mean KL nats; ppl: relative perplexity increase); a bare "
                        "number means top1")
    p.add_argument("--step-tuning-batch-sizes", default="1", type=_batch_sizes, metavar="LIST",
                   help="after the per-kernel tuning, re-choose the decode GEMVs' launch "
                        "configurations by the time of the whole captured decode step at these "
                        "batch sizes (comma-separated; on the target GPU only); none skips it")
    p.add_argument("--no-kernel-cache", dest="kernel_cache", action="store_false",
                   help="do not start the finished engine to pack its compiled Triton kernels into "
                        "it (by default a GPU build does, so that the engine's first start-up on "
                        "another machine compiles none of its GPU kernels)")
    p.add_argument("--device", default="auto", help="where to build: auto, cpu, cuda, cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ENGINE_DIR")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_build)
    return p


def _batch_sizes(text: str) -> tuple[int, ...]:
    """--step-tuning-batch-sizes: "1,4" -> (1, 4); "none" or "" -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes or none, got {text!r}")
    if any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return sizes


def options_from_args(args: argparse.Namespace):
    """BuildOptions from parsed flags."""
    from kiln.build.builder import BuildOptions

    quant = QuantConfig(scheme=args.quant, group_size=args.group_size,
                        smoothquant_alpha=args.smoothquant_alpha, lm_head=args.lm_head_quant)
    return BuildOptions(
        model_dir=args.model_dir, output=args.output, quant=quant, kv_cache_dtype=args.kv_cache_dtype,
        calib_data=args.calib_data, calib_samples=args.calib_samples,
        calib_seq_len=args.calib_seq_len, eval_data=args.eval_data, eval_tokens=args.eval_tokens,
        target_gpu=args.target_gpu, max_batch_size=args.max_batch_size,
        max_seq_len=args.max_seq_len, max_accuracy_drop=args.max_accuracy_drop, device=args.device,
        overwrite=args.overwrite, progress=args.progress,
        step_tuning_batch_sizes=args.step_tuning_batch_sizes,
        kernel_cache=getattr(args, "kernel_cache", True))


def cmd_build(args: argparse.Namespace) -> int:
    """Run the build and print where the engine is and how it scores (KilnError propagates)."""
    from kiln.build.builder import build_engine

    info = build_engine(options_from_args(args))
    acc = info["accuracy"]
    if acc.get("measured"):
        score = (f"top-1 agreement {acc['top1_agreement']:.2%}, mean KL {acc['mean_kl']:.4f}, "
                 f"ppl {acc['base_perplexity']:.3f} -> {acc['engine_perplexity']:.3f} "
                 f"({acc['perplexity_delta']:+.2%})")
    else:
        score = f"accuracy not measured ({acc.get('reason', '')})"
    target = info["target"]
    where = "cpu" if target["name"] == "cpu" else f"{target['display_name']} ({target['sm']})"
    print(f"built {info['quantization']['scheme']} engine for {where} in {info['build']['time_s']:.1f}s "
          f"-> {info['path']}\n{score}", file=sys.stdout)
    from kiln.tune.in_situ import median

    for run in info["kernel_tuning"].get("in_situ", []):
        if run.get("step_ms_before"):
            print(f"decode step at batch {run['batch_size']}: {median(run['step_ms_before']):.3f} -> "
                  f"{median(run['step_ms_after']):.3f} ms after step tuning "
                  f"({run['changed']} of {run['slots']} GEMV launches changed)", file=sys.stdout)
        ring = run.get("batch1_ring")
        if ring and ring.get("ms_ring"):
            print(f"batch-1 ring path: {median(ring['ms_tc']):.3f} -> {median(ring['ms_ring']):.3f} ms, "
                  f"{'chosen' if ring['chosen'] == 'ring' else 'not chosen'}", file=sys.stdout)
    cost = info["kernel_tuning"].get("in_situ_seconds")
    if cost:
        print(f"step tuning took {cost['total']:.1f} s ({cost['engine_start']:.1f} s starting its "
              f"engine)", file=sys.stdout)
    pack = info.get("kernel_cache") or {}
    if pack.get("status") == "packed":
        print(f"packed {pack['entries']} compiled kernel entries ({pack['bytes'] / 2**20:.1f} MiB; "
              f"{pack.get('launchers', 0)} launcher signatures) in {pack['seconds']:.1f} s",
              file=sys.stdout)
    elif pack.get("reason") and not pack["reason"].startswith(("built on", "--no-")):
        print(f"kernels not packed: {pack['reason']}", file=sys.stdout)
    if info["kernel_tuning"].get("in_situ_error"):
        print(f"decode-step tuning failed (per-kernel tuning kept): "
              f"{info['kernel_tuning']['in_situ_error']}", file=sys.stdout)
    return 0
