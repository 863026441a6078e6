"""Render the model card (README.md) of the demo models from the training run's report dict."""

from __future__ import annotations


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _recipe_rows(models: dict) -> list[str]:
    names = list(models)
    rows = [
        ("parameters", lambda m: _fmt_int(m["num_parameters"])),
        ("hidden size", lambda m: m["shape"]["hidden_size"]),
        ("layers", lambda m: m["shape"]["num_layers"]),
        ("attention heads / KV heads", lambda m: f"{m['shape']['num_heads']} / {m['shape']['num_kv_heads']}"),
        ("head dim", lambda m: m["shape"]["head_dim"]),
        ("MLP intermediate size", lambda m: m["shape"]["intermediate_size"]),
        ("tied embeddings", lambda m: "yes"),
        ("max positions (config)", lambda m: m["max_positions"]),
        ("training sequence length", lambda m: m["train"]["seq_len"]),
        ("batch (sequences x tokens)", lambda m: f"{m['shape']['batch_size']} x {m['train']['seq_len']}"),
        ("steps planned / done", lambda m: f"{m['shape']['steps']} / {m['train']['steps_done']}"),
        ("peak lr / final lr", lambda m: f"{m['shape']['lr']:g} / {m['shape']['lr'] * m['shape']['min_lr_ratio']:g}"),
        ("warmup steps", lambda m: m["shape"]["warmup_steps"]),
        ("weight decay / residual dropout",
         lambda m: f"{m['shape']['weight_decay']:g} / {m['shape']['dropout']:g}"),
        ("tokens seen (epochs of train split)",
         lambda m: f"{_fmt_int(m['train']['tokens_seen'])} ({m['epochs']:.1f})"),
        ("kept weights (lowest val loss) at step", lambda m: m["train"]["best_step"]),
        ("training time (kept recipe)", lambda m: f"{m['train']['train_seconds']:.0f} s "
                                     f"({m['train']['tokens_per_second'] / 1e6:.2f} M tokens/s)"),
        ("size on disk (model.safetensors)", lambda m: f"{m['safetensors_bytes'] / 1e6:.1f} MB"),
    ]
    lines = ["| | " + " | ".join(f"`{n}`" for n in names) + " |",
             "| --- | " + " | ".join("---" for _ in names) + " |"]
    for label, value in rows:
        lines.append(f"| {label} | " + " | ".join(str(value(models[n])) for n in names) + " |")
    return lines


def render_card(report: dict) -> str:
    """Return the markdown model card for a finished training run."""
    data = report["data"]
    tok = report["tokenizer"]
    models = report["models"]
    lines = [
        "# kiln demo models",
        "",
        "Two small Llama-architecture causal LMs trained by `tools/train_demo_model.py` on the Python",
        "standard library, shipped so that kiln's examples, tests and benchmarks have a real (if tiny)",
        "trained model and a matching draft model for speculative decoding, with no download.",
        "",
        "- `demo-model/`: the target model (`kiln.demo.DEMO_MODEL`).",
        "- `draft-model/`: the draft model, same tokenizer (`kiln.demo.DEMO_DRAFT_MODEL`).",
        "",
        "Both are `LlamaForCausalLM` checkpoints in Hugging Face format (config.json,",
        "generation_config.json, model.safetensors in bfloat16, tokenizer.json, tokenizer_config.json)",
        "and load offline with `transformers.AutoModelForCausalLM` / `AutoTokenizer`. They complete",
        "Python code; they were never trained on chat, although the tokenizer carries a ChatML template.",
        "",
        "## Data",
        "",
        f"- Corpus: the standard library of CPython {data['python_version']} (`{data['stdlib_root']}` on the",
        "  training machine), every `*.py` recursively, UTF-8 only, skipping any file under a directory",
        f"  named {', '.join('`' + d + '`' for d in data['excluded_dir_names'])}.",
        "- Split by file: bucket = first 8 bytes of sha256(relative POSIX path) mod 1000;",
        "  buckets 0-49 are the held-out **test** split (reported below), 50-69 the **val** split",
        "  (used only to pick which checkpoint to keep), the rest **train** (tokenizer and models).",
        "- Each file becomes `<|endoftext|>` followed by its tokens; a split is the concatenation.",
        "",
        "| split | files | bytes | tokens |",
        "| --- | --- | --- | --- |",
    ]
    for split in ("train", "val", "test"):
        s = data["splits"][split]
        lines.append(f"| {split} | {_fmt_int(s['files'])} | {_fmt_int(s['bytes'])} | {_fmt_int(s['tokens'])} |")
    lines += [
        "",
        "## Tokenizer",
        "",
        f"Byte-level BPE trained with `tokenizers` {tok['tokenizers_version']} on the train split, vocabulary",
        f"{_fmt_int(tok['vocab_size'])} (no normalizer, no post-processor: encoding adds no tokens and",
        "decoding returns the exact input bytes). Special tokens: "
        + ", ".join(f"`{t}` = {i}" for t, i in tok["special_tokens"].items()) + ".",
        "`<|endoftext|>` is bos, eos and pad; generation_config.json lists eos ids "
        f"{tok['generation_eos_ids']}. The chat template (ChatML) is in tokenizer_config.json.",
        "",
        "## Recipe",
        "",
        "Reproduce with `python tools/train_demo_model.py --out DIR --compile` (one GPU; the defaults are",
        "this recipe).",
        "",
        f"Seed {report['seed']}. Plain PyTorch loop over `transformers.LlamaForCausalLM`: AdamW",
        "(betas 0.9/0.95, eps 1e-8, weight decay on matrices only), gradient clipping at 1.0, linear",
        "warmup then cosine decay to 10% of the peak lr, bf16 autocast with float32 master weights,",
        "batches of windows at random offsets of the train stream, residual dropout (forward hooks;",
        "the saved model has none). The validation loss was measured every",
        f"{report['eval_every']} steps and the weights with the lowest one were kept.",
        f"Hardware: {report['hardware']}; torch {report['torch_version']}, transformers",
        f"{report['transformers_version']}. Whole run (tokenizer, both models, evaluation):",
        f"{report['total_seconds']:.0f} s.",
        "",
    ]
    lines += _recipe_rows(models)
    lines += [
        "",
        "Recipes tried (same init and batch order; the one with the lowest validation loss ships):",
        "",
        "| model | residual dropout | steps planned / done | best val loss | at step | time |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in models.items():
        for v in m["variants"]:
            kept = " (kept)" if (v["dropout"], v["steps"]) == (m["shape"]["dropout"], m["shape"]["steps"]) else ""
            lines.append(f"| `{name}`{kept} | {v['dropout']:g} | {v['steps']} / {v['steps_done']} | "
                         f"{v['best_val_loss']:.4f} | {v['best_step']} | {v['train_seconds']:.0f} s |")
    demo, draft = models["demo-model"], models["draft-model"]
    for name, m in models.items():
        if m.get("reused_from"):
            lines += ["", f"`{name}` was not trained by this run: it is the one an earlier run trained "
                          f"(`{m['reused_from']}`), with the same tokenizer; its rows above are that run's."]
    lines += [
        "",
        "## Held-out results (test split)",
        "",
        "Computed on the saved bfloat16 weights in float32, over non-overlapping windows of",
        f"{report['eval_seq_len']} tokens of the test stream ({_fmt_int(demo['test']['num_tokens'])} scored tokens).",
        "",
        "| model | perplexity | mean NLL (nats) | top-1 next-token accuracy |",
        "| --- | --- | --- | --- |",
    ]
    for name, m in models.items():
        t = m["test"]
        lines.append(f"| `{name}` | {t['perplexity']:.3f} | {t['mean_nll']:.4f} | {100 * t['top1_accuracy']:.2f}% |")
    lines += [
        "",
        f"The draft's greedy next token equals the demo model's on **{100 * report['draft_agreement']:.2f}%**",
        "of the held-out positions (the acceptance rate greedy speculative decoding can expect per token).",
        "",
        "## Greedy continuations",
        "",
        f"transformers `generate`, greedy, {report['continuation_tokens']} new tokens at most, float32,",
        "prompts without a leading special token. `def fibonacci(n):` is hand-written; the other",
        "headers are top-level `def` lines from held-out (test split) files.",
        "",
    ]
    for item in report["continuations"]:
        lines += [f"### `{item['prompt']}`", "", "demo-model:", "", "```python",
                  item["prompt"] + item["demo-model"], "```", "", "draft-model:", "", "```python",
                  item["prompt"] + item["draft-model"], "```", ""]
    lines += [
        "## Reproduce",
        "",
        "```",
        report["command"],
        "```",
        "",
        "Seeded (weights init, batch order, dropout), but GPU kernels are not bitwise deterministic;",
        "another Python version changes the corpus and hence the tokenizer and the models.",
        "",
    ]
    return "\n".join(lines)
