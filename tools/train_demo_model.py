"""Train kiln's shipped demo model and its draft model from scratch on the Python stdlib.

One run: collect the stdlib sources and split them by file, train a byte-level BPE tokenizer on
the train split, train the demo model and the draft model, save both in Hugging Face format
(bf16 safetensors), evaluate the saved files on the held-out split, and write the model card.

    python tools/train_demo_model.py --out /tmp/demo --compile  # the shipped recipe (a GPU)
    python tools/train_demo_model.py --out /tmp/demo --toy      # tiny shapes, seconds, any CPU

``--demo-shape`` tries another demo architecture; ``--draft-from kiln/demo/draft-model`` keeps the
shipped draft instead of training one (refused before any training if the tokenizer differs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # kiln itself, when not installed

import demo_card  # noqa: E402
from kiln.demo import corpus as demo_corpus  # noqa: E402
import demo_eval  # noqa: E402
import demo_tokenizer  # noqa: E402
from demo_train import ModelShape, TokenIds, build_llama_config, mean_loss, train_model  # noqa: E402

DEMO_SHAPE = ModelShape(name="demo-model", hidden_size=384, num_layers=8, num_heads=6, num_kv_heads=2,
                        intermediate_size=768, lr=2e-3, weight_decay=0.3, batch_size=64, steps=1500,
                        warmup_steps=100)
# The draft is shallow (2 layers) so that it is cheap per token; it still agrees with the demo
# model's greedy token on about half of the held-out positions.
DRAFT_SHAPE = ModelShape(name="draft-model", hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=1,
                         intermediate_size=704, lr=3e-3, batch_size=64, steps=1500, warmup_steps=100)
TOY_DEMO_SHAPE = ModelShape(name="demo-model", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                            intermediate_size=128, head_dim=32, batch_size=4, steps=12, warmup_steps=3)
TOY_DRAFT_SHAPE = ModelShape(name="draft-model", hidden_size=32, num_layers=1, num_heads=1, num_kv_heads=1,
                             intermediate_size=64, head_dim=32, batch_size=4, steps=8, warmup_steps=2)
# (residual dropout, steps) recipes tried per model; the corpus is only a few million tokens, so
# more regularisation pairs with longer training. The lowest validation loss wins.
DEMO_VARIANTS = "0.3:1000,0.4:1400,0.5:1800"
DRAFT_VARIANTS = "0.05:1500,0.1:2000"
FIBONACCI = "def fibonacci(n):"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; the defaults are the shipped recipe."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (model dirs, card, logs)")
    p.add_argument("--toy", action="store_true", help="tiny shapes and few files: a CPU smoke test")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--max-positions", type=int, default=2048)
    p.add_argument("--demo-variants", default=None,
                   help="recipes to try as dropout:steps,...; the lowest val loss is kept")
    p.add_argument("--draft-variants", default=None, help="as --demo-variants, for the draft model")
    p.add_argument("--demo-weight-decay", type=float, default=None)
    p.add_argument("--draft-weight-decay", type=float, default=None)
    p.add_argument("--demo-shape", default=None,
                   help="demo architecture as hidden:layers:heads:kv_heads:intermediate (default 384:8:6:2:768)")
    p.add_argument("--draft-shape", default=None,
                   help="draft architecture as hidden:layers:heads:kv_heads:intermediate (default 256:2:4:1:704)")
    p.add_argument("--draft-from", type=Path, default=None,
                   help="keep this trained draft model instead of training one (its tokenizer must be the one "
                        "this run trains, byte for byte)")
    p.add_argument("--demo-batch", type=int, default=None)
    p.add_argument("--draft-batch", type=int, default=None)
    p.add_argument("--demo-time-limit", type=float, default=120.0,
                   help="seconds per variant (compilation included); stops early if hit")
    p.add_argument("--draft-time-limit", type=float, default=45.0, help="as --demo-time-limit, for the draft")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--max-files", type=int, default=None, help="cap files per split (toy runs)")
    p.add_argument("--continuation-tokens", type=int, default=48)
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    return p.parse_args(argv)


def pick_device(name: str) -> torch.device:
    """Resolve --device: 'auto' is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def parse_variants(spec: str) -> list[tuple[float, int]]:
    """Parse "dropout:steps,dropout:steps" into [(dropout, steps), ...]."""
    variants = []
    for item in spec.split(","):
        dropout, steps = item.split(":")
        variants.append((float(dropout), int(steps)))
    return variants


def with_steps(shape: ModelShape, steps: int, dropout: float) -> ModelShape:
    """``shape`` with another step count and dropout; warmup stays at most a tenth of the steps."""
    from dataclasses import replace

    return replace(shape, steps=steps, dropout=dropout, warmup_steps=min(shape.warmup_steps, max(1, steps // 10)))


def _with_shape(shape: ModelShape, spec: str) -> ModelShape:
    """``shape`` with the architecture of "hidden:layers:heads:kv_heads:intermediate"."""
    from dataclasses import replace

    hidden, layers, heads, kv_heads, intermediate = (int(v) for v in spec.split(":"))
    return replace(shape, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                   intermediate_size=intermediate, head_dim=hidden // heads)


def shapes_for(args: argparse.Namespace) -> tuple[ModelShape, ModelShape]:
    """The two model shapes with any command-line overrides applied."""
    from dataclasses import replace

    demo, draft = (TOY_DEMO_SHAPE, TOY_DRAFT_SHAPE) if args.toy else (DEMO_SHAPE, DRAFT_SHAPE)
    if args.demo_shape is not None:
        demo = _with_shape(demo, args.demo_shape)
    if args.draft_shape is not None:
        draft = _with_shape(draft, args.draft_shape)
    if args.demo_weight_decay is not None:
        demo = replace(demo, weight_decay=args.demo_weight_decay)
    if args.draft_weight_decay is not None:
        draft = replace(draft, weight_decay=args.draft_weight_decay)
    if args.demo_batch is not None:
        demo = replace(demo, batch_size=args.demo_batch)
    if args.draft_batch is not None:
        draft = replace(draft, batch_size=args.draft_batch)
    return demo, draft


def encode_split(tokenizer, files: list[demo_corpus.SourceFile], eot_id: int) -> torch.Tensor:
    """One token stream for a split: <|endoftext|> before each file's tokens."""
    encodings = tokenizer.encode_batch([f.text for f in files])
    ids: list[int] = []
    for enc in encodings:
        ids.append(eot_id)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


def save_model(model, shape: ModelShape, model_dir: Path, tokenizer_dir: Path, eos_ids: list[int]) -> None:
    """Save ``model`` as bf16 safetensors with the tokenizer files and a generation config."""
    import shutil

    from transformers import GenerationConfig

    model_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(model_dir), safe_serialization=True)
    GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=eos_ids,
                     pad_token_id=model.config.pad_token_id).save_pretrained(str(model_dir))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, model_dir / f.name)


def main(argv: list[str] | None = None) -> int:
    """Run the whole recipe and write everything under --out."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = pick_device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    autocast = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    seq_len = 64 if args.toy else args.seq_len
    eval_every = args.eval_every or (4 if args.toy else 100)
    log_every = args.log_every or (2 if args.toy else 25)
    demo_shape, draft_shape = shapes_for(args)
    if args.demo_variants is None:
        args.demo_variants = "0.1:12,0.2:8" if args.toy else DEMO_VARIANTS
    if args.draft_variants is None:
        args.draft_variants = "0.1:8" if args.toy else DRAFT_VARIANTS

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    say(f"device {device}, python {demo_corpus.python_version()}, torch {torch.__version__}")
    files = demo_corpus.collect_stdlib_files()
    splits = demo_corpus.by_split(files, max_files=args.max_files if args.max_files else (30 if args.toy else None))
    say("files per split: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    tokenizer = demo_tokenizer.train_bpe((f.text for f in splits["train"]),
                                         vocab_size=512 if args.toy else args.vocab_size)
    tokenizer_dir = out / "tokenizer"
    demo_tokenizer.save_hf_tokenizer(tokenizer, tokenizer_dir, model_max_length=args.max_positions)
    vocab_size = tokenizer.get_vocab_size()
    if args.draft_from is not None and ((args.draft_from / "tokenizer.json").read_bytes()
                                        != (tokenizer_dir / "tokenizer.json").read_bytes()):
        # Checked before any training: both models must share token ids.
        raise SystemExit(f"--draft-from {args.draft_from}: its tokenizer.json differs from the one this run trained")
    special = {t: tokenizer.token_to_id(t) for t in demo_tokenizer.SPECIAL_TOKENS}
    eot_id = special[demo_tokenizer.END_OF_TEXT]
    eos_ids = [eot_id, special[demo_tokenizer.IM_END]]
    say(f"tokenizer: vocab {vocab_size}, special {special}")

    streams = {name: encode_split(tokenizer, group, eot_id) for name, group in splits.items()}
    say("tokens per split: " + ", ".join(f"{k} {v.numel()}" for k, v in streams.items()))
    train_stream = streams["train"].to(device)
    val_stream = streams["val"].to(device)
    test_stream = streams["test"].to(device)

    ids = TokenIds(bos=eot_id, eos=eot_id, pad=eot_id)
    report_models: dict = {}
    families = ((demo_shape, args.demo_variants, args.demo_time_limit),
                (draft_shape, args.draft_variants, args.draft_time_limit))
    if args.draft_from is not None:
        families = families[:1]
    for offset, (base_shape, variants_spec, time_limit) in enumerate(families):
        best_model, chosen, variants = None, None, []
        for dropout, steps in parse_variants(variants_spec):
            shape = with_steps(base_shape, steps, dropout)
            config = build_llama_config(shape, vocab_size, args.max_positions, ids)
            # Same init and batch order for every variant, so the val losses compare recipes only.
            torch.manual_seed(args.seed + offset)
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM(config).to(device)
            num_params = sum(p.numel() for p in model.parameters())
            say(f"{shape.name} (dropout {dropout}, {steps} steps): {num_params:,} parameters, "
                f"batch {shape.batch_size}x{seq_len}")
            train_log = train_model(model, shape, train_stream, val_stream, seq_len, seed=args.seed + 100 + offset,
                                    time_limit_s=time_limit, eval_every=eval_every, log_every=log_every,
                                    autocast=autocast, compile_model=args.compile, print_fn=say)
            variants.append({"dropout": dropout, "steps": steps, "steps_done": train_log["steps_done"],
                             "best_val_loss": train_log["best_val_loss"], "best_step": train_log["best_step"],
                             "train_seconds": train_log["train_seconds"]})
            say(f"{shape.name} (dropout {dropout}, {steps} steps): best val loss "
                f"{train_log['best_val_loss']:.4f} at step {train_log['best_step']}")
            if chosen is None or train_log["best_val_loss"] < chosen[2]["best_val_loss"]:
                best_model = model.to("cpu")
                chosen = (shape, num_params, train_log)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        shape, num_params, train_log = chosen
        model_dir = out / shape.name
        save_model(best_model, shape, model_dir, tokenizer_dir, eos_ids)
        report_models[shape.name] = {
            "shape": shape.to_dict(), "num_parameters": num_params, "max_positions": args.max_positions,
            "train": train_log, "epochs": train_log["tokens_seen"] / streams["train"].numel(),
            "variants": variants, "safetensors_bytes": (model_dir / "model.safetensors").stat().st_size,
        }
        say(f"{shape.name}: kept dropout {shape.dropout}, {shape.steps} steps; saved to {model_dir}")

    if args.draft_from is not None:
        report_models["draft-model"] = reuse_draft(args.draft_from, out, say)

    report = evaluate_saved(args, out, splits, test_stream, val_stream, seq_len, device, report_models, say)
    report.update(
        seed=args.seed, compiled=args.compile, eval_every=eval_every, eval_seq_len=seq_len,
        hardware=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        torch_version=torch.__version__, command="python " + " ".join(shlex.quote(a) for a in sys.argv),
        data=data_summary(splits, streams),
        tokenizer=tokenizer_summary(vocab_size, special, eos_ids),
    )
    report["total_seconds"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(demo_card.render_card(report))
    say(f"done in {report['total_seconds']:.1f}s; wrote {out}")
    return 0


def reuse_draft(source: Path, out: Path, say) -> dict:
    """Copy a draft model trained by an earlier run into ``out``, with its report entry.

    main has already checked that its tokenizer is the one this run trained. Its entry comes
    from the earlier run's report.json beside it (the shipped layout: kiln/demo/report.json
    beside kiln/demo/draft-model), marked as reused.
    """
    import shutil

    earlier = json.loads((source.parent / "report.json").read_text())["models"]["draft-model"]
    entry = {k: v for k, v in earlier.items() if k not in ("test", "val_loss_saved")}
    entry["reused_from"] = str(source)
    shutil.copytree(source, out / "draft-model", dirs_exist_ok=True)
    say(f"draft-model: reused from {source}")
    return entry


def evaluate_saved(args, out: Path, splits, test_stream, val_stream, seq_len, device, report_models, say) -> dict:
    """Reload the saved models (bf16 -> float32) and measure what ships: metrics and continuations."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    loaded, predictions = {}, {}
    for name in report_models:
        model = AutoModelForCausalLM.from_pretrained(str(out / name), dtype=torch.float32).to(device)
        metrics, preds = demo_eval.next_token_predictions(model, test_stream, seq_len, batch_size=16)
        report_models[name]["test"] = metrics.__dict__
        report_models[name]["val_loss_saved"] = mean_loss(model, val_stream, seq_len, 16, autocast=False)
        predictions[name] = preds
        loaded[name] = model
        say(f"{name}: test ppl {metrics.perplexity:.3f}, top-1 {metrics.top1_accuracy:.4f}")
    agree = demo_eval.agreement(predictions["demo-model"], predictions["draft-model"])
    say(f"draft/demo greedy agreement {agree:.4f}")

    tokenizer = AutoTokenizer.from_pretrained(str(out / "demo-model"))
    prompts = [FIBONACCI] + demo_eval.pick_function_headers(splits["test"], 4)
    continuations = []
    for prompt in prompts:
        item = {"prompt": prompt}
        for name, model in loaded.items():
            item[name] = demo_eval.greedy_continuation(model, tokenizer, prompt, args.continuation_tokens)
        continuations.append(item)
        say(f"continuation of {prompt!r}: {item['demo-model']!r}")
    return {"models": report_models, "draft_agreement": agree, "continuations": continuations,
            "continuation_tokens": args.continuation_tokens,
            "transformers_version": transformers.__version__}


def data_summary(splits, streams) -> dict:
    """Corpus facts for the card: Python version, stdlib root, counts per split."""
    return {
        "python_version": demo_corpus.python_version(),
        "stdlib_root": str(demo_corpus.stdlib_root()),
        "excluded_dir_names": sorted(demo_corpus.EXCLUDED_DIR_NAMES),
        "splits": {name: {"files": len(group), "bytes": sum(len(f.text.encode("utf-8")) for f in group),
                          "tokens": int(streams[name].numel())} for name, group in splits.items()},
    }


def tokenizer_summary(vocab_size: int, special: dict, eos_ids: list[int]) -> dict:
    """Tokenizer facts for the card."""
    import tokenizers

    return {"vocab_size": vocab_size, "special_tokens": special, "generation_eos_ids": eos_ids,
            "tokenizers_version": tokenizers.__version__}


if __name__ == "__main__":
    sys.exit(main())
