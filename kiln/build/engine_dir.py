"""The engine directory: processed weights, the source's config and tokenizer, and engine.json.

Layout::

    ENGINE_DIR/
      engine.json           what was built, for what, from what, and how well it scores
      engine.safetensors    kiln parameter names and layouts (fused qkv / gate_up, quantized)
      config.json, generation_config.json, tokenizer files   copied from the source checkpoint
      kernels.tar.gz        the Triton kernels its start-up needs, compiled for the target GPU
                            (built on that GPU only; kiln.build.kernel_cache)

Target rule (``check_engine_target``): an engine built for ``cpu`` (weight-only or unquantized;
fp8 cannot target cpu) runs on any device, since it holds nothing tuned for a GPU. An engine built
for a GPU runs only on a GPU with the same name; on another GPU or without one it is refused with
a one-line message naming both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.build.gpu_target import GpuTarget, device_target
from kiln.errors import KilnError

ENGINE_JSON = "engine.json"
WEIGHTS_FILE = "engine.safetensors"
ENGINE_FORMAT = "kiln-engine"
FORMAT_VERSION = 1
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def is_engine_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory made by ``kiln build`` (it has a kiln engine.json)."""
    p = Path(path).expanduser() / ENGINE_JSON
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == ENGINE_FORMAT
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def read_engine_info(path: str | Path) -> dict[str, Any]:
    """The parsed engine.json of an engine directory, with ``path`` added (absolute)."""
    root = Path(path).expanduser()
    p = root / ENGINE_JSON
    if not p.is_file():
        raise KilnError(f"{str(root)!r} is not a kiln engine directory (no {ENGINE_JSON}); "
                        "make one with `kiln build MODEL_DIR --output DIR`")
    try:
        info = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise KilnError(f"{p} is not valid JSON ({e.msg} at line {e.lineno}); rebuild the engine") from None
    if info.get("format") != ENGINE_FORMAT:
        raise KilnError(f"{p} is not a kiln engine.json (format {info.get('format')!r})")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise KilnError(f"engine {root} has format version {info.get('format_version')}, newer than "
                        f"this kiln reads ({FORMAT_VERSION}); upgrade kiln or rebuild the engine")
    for key in ("quantization", "target", "dtype"):
        if key not in info:
            raise KilnError(f"{p} lacks {key!r}; the engine is damaged, rebuild it")
    info["path"] = str(root.resolve())
    return info


def write_engine_info(path: str | Path, info: dict[str, Any]) -> None:
    """Write engine.json (without the load-time ``path`` key)."""
    data = {k: v for k, v in info.items() if k != "path"}
    (Path(path) / ENGINE_JSON).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_engine_weights(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Write the processed tensors to ``path/engine.safetensors`` (moved to the CPU first)."""
    from safetensors.torch import save_file

    out = Path(path) / WEIGHTS_FILE
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(out),
              metadata={"format": "pt", "producer": "kiln build"})
    return out


def check_engine_target(engine_info: dict[str, Any], device: torch.device | str) -> None:
    """Refuse to run an engine on a device it was not built for (see the module docstring).

    Raises KilnError with one line naming the engine's GPU and this machine's.
    """
    target = GpuTarget.from_dict(engine_info["target"])
    if target.is_cpu:
        return
    here = device_target(device)
    if here.name == target.name:
        return
    where = engine_info.get("path", "engine")
    source = engine_info.get("source", {}).get("path", "MODEL_DIR")
    scheme = engine_info.get("quantization", {}).get("scheme", "none")
    if here.is_cpu:
        if scheme == "fp8":
            hint = ("fp8 needs an FP8 GPU (sm_89+); for this machine rebuild with "
                    f"`kiln build {source} --quant int8-wo --target-gpu cpu`")
        else:
            hint = f"rebuild with `kiln build {source} --quant {scheme} --target-gpu cpu`"
    else:
        hint = f"rebuild with `kiln build {source} --quant {scheme} --target-gpu {here.name}`"
    raise KilnError(f"engine {where} was built for {target.describe()} but this machine has "
                    f"{here.describe()}; {hint}")


def load_engine_model(path: str | Path, device: torch.device | str = "cpu",
                      dtype: str | torch.dtype = "auto", check_target: bool = True
                      ) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model an engine describes, with its LinearMethods, and load the processed weights.

    No re-quantization: tensors are copied as stored. ``dtype``: "auto" (the engine's) or a float
    dtype for everything that is not quantized (norms, embeddings, biases). Returns
    (model in eval mode, engine info). ``check_target`` runs ``check_engine_target`` first.
    """
    from kiln.models.args import ModelArgs
    from kiln.models.loader import DTYPES, load_hf_config, resolve_dtype
    from kiln.models.registry import resolve_model_class
    from kiln.quant.config import linear_method_factory

    info = read_engine_info(path)
    if check_target:
        check_engine_target(info, device)
    from kiln.build.kernel_cache import install_engine_kernels

    # before anything of the engine's runs on the device (loading itself may launch kernels)
    info["kernel_cache_install"] = install_engine_kernels(info, device)
    root = Path(info["path"])
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise KilnError(f"engine {root} has no {WEIGHTS_FILE}; the build did not finish, rebuild it")
    args = ModelArgs.from_hf_config(load_hf_config(root))
    cls = resolve_model_class([args.architecture])
    torch_dtype = DTYPES[info["dtype"]] if dtype == "auto" else resolve_dtype(dtype, args, [])
    name = next(k for k, v in DTYPES.items() if v == torch_dtype)
    args = dataclasses.replace(args, dtype=name)
    model = cls(args, torch_dtype, device,
                linear_method_factory=linear_method_factory(info["quantization"]))
    _load_processed(model, weights, device)
    from kiln.build.tuning import apply_kernel_tuning

    apply_kernel_tuning(info, device)
    return model.eval(), info


def _load_processed(model: nn.Module, weights: Path, device: torch.device | str) -> None:
    """Copy every stored tensor into the parameter of the same name; all must match up."""
    from safetensors import safe_open

    from kiln.models.loader import finish_loading

    params = dict(model.named_parameters())
    dev = torch.device(device)
    open_device = "cpu" if dev.type != "cuda" else str(dev if dev.index is not None else "cuda:0")
    filled = set()
    with torch.no_grad(), safe_open(str(weights), framework="pt", device=open_device) as f:
        for name in f.keys():
            param = params.get(name)
            if param is None:
                raise KilnError(f"engine tensor {name} has no place in the model; the engine and "
                                "its config.json do not belong together, rebuild it")
            tensor = f.get_tensor(name)
            if tuple(tensor.shape) != tuple(param.shape):
                raise KilnError(f"engine tensor {name} has shape {tuple(tensor.shape)}, expected "
                                f"{tuple(param.shape)}; rebuild the engine")
            if tensor.dtype != param.dtype:
                # Only unquantized float tensors follow a dtype override; quantized ones are exact.
                convertible = (tensor.is_floating_point() and param.is_floating_point()
                               and tensor.dtype not in _FP8_DTYPES and param.dtype not in _FP8_DTYPES)
                if not convertible:
                    raise KilnError(f"engine tensor {name} is {tensor.dtype}, expected {param.dtype}; "
                                    "rebuild the engine")
            param.data.copy_(tensor)
            filled.add(name)
    missing = sorted(set(params) - filled)
    if missing:
        raise KilnError(f"engine weights lack {', '.join(missing[:3])}"
                        f"{' and more' if len(missing) > 3 else ''}; rebuild the engine")
    finish_loading(model)
