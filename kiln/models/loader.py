"""Load a Hugging Face checkpoint directory: config, generation config, tokenizer and weights.

Weights are read lazily with safetensors ``safe_open``, one tensor at a time, converted to the
target dtype on the target device and copied into the (already allocated) model parameters, so the
checkpoint is never held twice in memory. q/k/v and gate/up are fused while copying.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.models.args import ModelArgs
from kiln.models.registry import resolve_model_class

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Checkpoint tensors that some exporters write but that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Sampling defaults generation_config.json may carry, passed through when present.
_SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                  "max_new_tokens", "max_length")


def _model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise KilnError(f"model directory {str(path)!r} does not exist; pass a local checkpoint "
                        "directory (kiln does not download from a hub)")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise KilnError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def load_hf_config(model_dir: str | Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint directory."""
    path = _model_dir(model_dir) / "config.json"
    if not path.is_file():
        raise KilnError(f"no config.json in {str(path.parent)!r}; is this a Hugging Face checkpoint "
                        "directory?")
    return _read_json(path)


def load_generation_config(model_dir: str | Path) -> dict[str, Any]:
    """EOS ids (always a list under ``eos_token_id``), ``bos_token_id`` and the sampling defaults.

    Read from generation_config.json, falling back to config.json for the token ids.
    """
    path = _model_dir(model_dir)
    gen = _read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
    cfg = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    eos_list = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    out: dict[str, Any] = {"eos_token_id": eos_list,
                           "bos_token_id": gen.get("bos_token_id", cfg.get("bos_token_id"))}
    out.update({k: gen[k] for k in _SAMPLING_KEYS if k in gen})
    return out


def load_tokenizer(model_dir: str | Path):
    """The checkpoint's tokenizer via transformers.AutoTokenizer, offline (local files only)."""
    from transformers import AutoTokenizer

    path = _model_dir(model_dir)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KilnError(f"cannot load a tokenizer from {str(path)!r} ({first}); pass --tokenizer "
                        "with a directory that has tokenizer files") from None


def weight_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards named in the index, or model.safetensors."""
    path = _model_dir(model_dir)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise KilnError(f"{index.name} names shards that are missing in {str(path)!r}: "
                            f"{', '.join(missing[:3])}")
        if shards:
            return [path / s for s in shards]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return others
    raise KilnError(f"no weights in {str(path)!r}: expected model.safetensors or sharded "
                    "safetensors with model.safetensors.index.json (.bin checkpoints are not supported)")


def checkpoint_dtype(files: list[Path]) -> torch.dtype:
    """The dtype of the first floating-point tensor of the checkpoint (reads only its header)."""
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(dtype)
                if torch_dtype is not None:
                    return torch_dtype
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype, args: ModelArgs, files: list[Path]) -> torch.dtype:
    """The torch dtype to run in: explicit, or ``auto`` = the config's, else the weights' own."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in DTYPES:
            raise KilnError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if args.dtype in DTYPES:
        return DTYPES[args.dtype]
    return checkpoint_dtype(files)


def iter_checkpoint(files: list[Path], device: torch.device | str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor, read one at a time onto ``device``."""
    from safetensors import safe_open

    dev = torch.device(device)
    # safe_open reads straight into CUDA memory; other devices go through the host.
    if dev.type == "cuda":
        open_device = f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    else:
        open_device = "cpu"
    for file in files:
        with safe_open(str(file), framework="pt", device=open_device) as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_weights(model: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Copy checkpoint tensors (HF names) into ``model``, fusing the packed projections.

    Raises KilnError naming the tensor for a shape mismatch, an unexpected tensor, or a model
    weight that no checkpoint tensor filled.
    """
    from kiln.layers.linear import Linear

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    tied = bool(getattr(model.args, "tie_word_embeddings", False))
    expected = _expected_targets(model, modules)
    filled: set[tuple[str, int | None]] = set()
    with torch.no_grad():
        for name, tensor in tensors:
            if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
                continue
            local = name[len("model."):] if name.startswith("model.") else name
            module_path, _, param_name = local.rpartition(".")
            parent, _, proj = module_path.rpartition(".")
            shard = None
            if proj in model.packed_modules:
                fused, shard = model.packed_modules[proj]
                module_path = f"{parent}.{fused}"
            module = modules.get(module_path)
            if isinstance(module, Linear):
                module.load_shard(param_name, tensor, shard, name)
            elif f"{module_path}.{param_name}" in params:
                _copy_checked(params[f"{module_path}.{param_name}"], tensor, name)
            else:
                raise KilnError(f"checkpoint tensor {name} does not belong to a "
                                f"{model.args.architecture} with this config.json")
            filled.add((f"{module_path}.{param_name}", shard))
    missing = sorted(f"{p}" if s is None else f"{p} (part {s})" for p, s in expected - filled)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise KilnError(f"checkpoint is missing weights: {', '.join(missing[:3])}{more}")
    finish_loading(model)


def finish_loading(model: nn.Module) -> None:
    """Let every LinearMethod (Linears and quantized LM heads) and every unquantized LM head
    rearrange its layer's tensors now that all are loaded (LinearMethod.finish_loading,
    LMHead.finish_loading). Every loader of a whole model calls it
    last: load_weights here, and the engine loader (kiln.build.engine_dir)."""
    from kiln.layers.embedding import LMHead
    from kiln.layers.linear import LinearMethod

    with torch.no_grad():
        for module in model.modules():
            method = getattr(module, "method", None)
            if isinstance(method, LinearMethod):
                method.finish_loading(module)
            elif isinstance(module, LMHead):
                module.finish_loading()


def _expected_targets(model: nn.Module, modules: dict[str, nn.Module]) -> set[tuple[str, int | None]]:
    """Every (parameter, shard) that a complete checkpoint fills."""
    from kiln.layers.linear import Linear

    targets: set[tuple[str, int | None]] = set()
    for pname, _ in model.named_parameters():
        module_path = pname.rpartition(".")[0]
        module = modules.get(module_path)
        if isinstance(module, Linear) and len(module.output_sizes) > 1:
            targets.update((pname, i) for i in range(len(module.output_sizes)))
        else:
            targets.add((pname, None))
    return targets


def _copy_checked(param: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if tuple(tensor.shape) != tuple(param.shape):
        raise KilnError(f"weight {name} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)} "
                        "from config.json; the config and the weights do not belong together")
    param.data.copy_(tensor)


def load_model(model_dir: str | Path, dtype: str | torch.dtype = "auto",
               device: torch.device | str = "cpu") -> nn.Module:
    """Build the model a checkpoint directory describes and load its weights onto ``device``.

    ``dtype``: "auto" (the checkpoint's), "float32", "float16" or "bfloat16". The returned model's
    ``args.dtype`` names the dtype it runs in.
    """
    config = load_hf_config(model_dir)
    args = ModelArgs.from_hf_config(config)
    cls = resolve_model_class([args.architecture])
    files = weight_files(model_dir)
    torch_dtype = resolve_dtype(dtype, args, files)
    name = next(k for k, v in DTYPES.items() if v == torch_dtype)
    args = dataclasses.replace(args, dtype=name)
    model = cls(args, torch_dtype, device)
    load_weights(model, iter_checkpoint(files, device))
    return model.eval()
