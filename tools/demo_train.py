"""The training loop for the demo models: plain PyTorch over a transformers Llama definition.

Training samples fixed-length windows at random offsets of one token stream (files joined by
<|endoftext|>), uses AdamW with a warmup + cosine schedule under bf16 autocast, and keeps the
weights with the lowest validation loss: the corpus is small (a few million tokens), so a model
that trains long enough will start to memorise it, and the validation split decides when.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelShape:
    """Architecture and optimisation recipe of one demo model."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    dropout: float = 0.1
    batch_size: int = 64
    steps: int = 1000
    warmup_steps: int = 100

    def to_dict(self) -> dict:
        """Return the shape as a plain dict (for logs and the model card)."""
        return asdict(self)


@dataclass(frozen=True)
class TokenIds:
    """Ids of the special tokens the model config must carry."""

    bos: int
    eos: int
    pad: int


def build_llama_config(shape: ModelShape, vocab_size: int, max_positions: int, ids: TokenIds,
                       rope_theta: float = 10000.0):
    """Make the transformers LlamaConfig for ``shape`` (tied embeddings, no biases)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-6,
        rope_theta=rope_theta,
        tie_word_embeddings=True,
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        use_cache=True,
    )


def add_residual_dropout(model, p: float) -> list:
    """Drop out each block's attention and MLP output before it joins the residual stream.

    The transformers Llama definition has no residual dropout, and a 10M-parameter model on a few
    million tokens needs some; forward hooks add it without changing the saved weights.
    Returns the hook handles so the caller can remove them before saving.
    """
    if p <= 0.0:
        return []

    def hook(module, _inputs, output):
        return F.dropout(output, p=p, training=module.training)

    handles = []
    for layer in model.model.layers:
        handles.append(layer.self_attn.o_proj.register_forward_hook(hook))
        handles.append(layer.mlp.down_proj.register_forward_hook(hook))
    return handles


def lr_factor(step: int, shape: ModelShape) -> float:
    """Linear warmup, then cosine decay from 1 to ``min_lr_ratio`` over the remaining steps."""
    if step < shape.warmup_steps:
        return (step + 1) / shape.warmup_steps
    progress = (step - shape.warmup_steps) / max(1, shape.steps - shape.warmup_steps)
    progress = min(1.0, progress)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return shape.min_lr_ratio + (1.0 - shape.min_lr_ratio) * cosine


def make_optimizer(model, shape: ModelShape, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains stay undecayed)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": shape.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=shape.lr, betas=(0.9, 0.95), eps=1e-8,
                             fused=device.type == "cuda")


def window_batch(stream: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut (input, target) windows of ``seq_len`` tokens starting at ``starts`` out of ``stream``."""
    offsets = torch.arange(seq_len + 1, device=stream.device)
    windows = stream[starts.to(stream.device)[:, None] + offsets[None, :]]
    return windows[:, :-1], windows[:, 1:]


def causal_lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor, autocast: bool) -> torch.Tensor:
    """Mean next-token cross entropy; logits go to float32 before the softmax."""
    with torch.autocast(device_type=inputs.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def mean_loss(model, stream: torch.Tensor, seq_len: int, batch_size: int, autocast: bool,
              max_windows: int | None = None) -> float:
    """Mean loss over non-overlapping windows of ``stream`` (all of it, or the first ``max_windows``)."""
    was_training = model.training
    model.eval()
    num_windows = (stream.numel() - 1) // seq_len
    if max_windows is not None:
        num_windows = min(num_windows, max_windows)
    starts = torch.arange(num_windows, device=stream.device) * seq_len
    total = torch.zeros((), device=stream.device, dtype=torch.float64)
    for i in range(0, num_windows, batch_size):
        inputs, targets = window_batch(stream, starts[i:i + batch_size], seq_len)
        total += causal_lm_loss(model, inputs, targets, autocast).double() * inputs.shape[0]
    model.train(was_training)
    return float(total / max(1, num_windows))


def train_model(model, shape: ModelShape, train_stream: torch.Tensor, val_stream: torch.Tensor,
                seq_len: int, seed: int, time_limit_s: float, eval_every: int, log_every: int,
                autocast: bool, compile_model: bool = False, print_fn=print) -> dict:
    """Train ``model`` in place for ``shape.steps`` steps (or until ``time_limit_s``).

    At the end the model holds the weights of the evaluation with the lowest validation loss.
    Returns a log: losses over time, tokens per second (evaluation time excluded), best step,
    whether time ran out. ``compile_model`` runs the training forward through torch.compile.
    """
    device = train_stream.device
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, shape, device)
    hooks = add_residual_dropout(model, shape.dropout)
    model.train()
    max_start = train_stream.numel() - seq_len - 1
    tokens_per_step = shape.batch_size * seq_len
    log = {"shape": shape.to_dict(), "seq_len": seq_len, "seed": seed, "tokens_per_step": tokens_per_step,
           "train_loss": [], "val_loss": [], "time_limit_hit": False}
    best = {"val_loss": float("inf"), "step": -1, "state": None}
    eval_seconds = [0.0]
    if compile_model:
        # Each recipe is a fresh module with its own dropout constant: a new graph, and several
        # recipes in one process must not hit dynamo's recompile limit and fall back to eager.
        import importlib

        dynamo_config = importlib.import_module("torch._dynamo").config
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, knob):
                setattr(dynamo_config, knob, 64)
    forward_model = torch.compile(model) if compile_model else model

    def evaluate(step: int) -> None:
        t0 = time.perf_counter()
        val = mean_loss(model, val_stream, seq_len, shape.batch_size, autocast)
        eval_seconds[0] += time.perf_counter() - t0
        log["val_loss"].append([step, val])
        if val < best["val_loss"]:
            best.update(val_loss=val, step=step,
                        state={k: v.detach().clone() for k, v in model.state_dict().items()})
        print_fn(f"[{shape.name}] step {step} val_loss {val:.4f} (best {best['val_loss']:.4f} @ {best['step']})")

    start_time = time.perf_counter()
    step = 0
    running = torch.zeros((), device=device)
    for step in range(shape.steps):
        for group in optimizer.param_groups:
            group["lr"] = shape.lr * lr_factor(step, shape)
        starts = torch.randint(0, max_start, (shape.batch_size,), generator=generator)
        inputs, targets = window_batch(train_stream, starts, seq_len)
        loss = causal_lm_loss(forward_model, inputs, targets, autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.detach()
        if (step + 1) % log_every == 0:
            # One host sync per log interval, not per step, keeps the GPU queue full.
            mean = float(running) / log_every
            running.zero_()
            elapsed = time.perf_counter() - start_time
            log["train_loss"].append([step + 1, mean, elapsed])
            print_fn(f"[{shape.name}] step {step + 1}/{shape.steps} loss {mean:.4f} "
                     f"lr {optimizer.param_groups[0]['lr']:.2e} {elapsed:.1f}s "
                     f"{tokens_per_step * (step + 1) / (elapsed - eval_seconds[0]) / 1e6:.2f} Mtok/s")
        if (step + 1) % eval_every == 0 or step + 1 == shape.steps:
            evaluate(step + 1)
        if time.perf_counter() - start_time > time_limit_s:
            log["time_limit_hit"] = True
            print_fn(f"[{shape.name}] time limit {time_limit_s:.0f}s reached at step {step + 1}")
            if (step + 1) % eval_every != 0 and step + 1 != shape.steps:
                evaluate(step + 1)
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start_time
    for handle in hooks:
        handle.remove()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    log.update(steps_done=step + 1, train_seconds=elapsed, eval_seconds=eval_seconds[0],
               best_step=best["step"], best_val_loss=best["val_loss"],
               tokens_seen=tokens_per_step * (step + 1),
               tokens_per_second=tokens_per_step * (step + 1) / (elapsed - eval_seconds[0]))
    return log
