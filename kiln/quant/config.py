"""Quantization settings of a build, and the LinearMethod factory an engine is loaded with."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from kiln.errors import KilnError
from kiln.layers.linear import LinearMethod

SCHEMES = ("none", "fp8", "int8-sq", "int8-wo", "int4-wo")
# What the LM head may be stored as (kiln build --lm-head-quant): "none" keeps it in the model dtype.
LM_HEAD_SCHEMES = ("none", "fp8", "int8-wo", "int4-wo")
# Schemes whose build needs activation statistics from calibration data.
CALIBRATED_SCHEMES = ("int8-sq", "int4-wo")
# Schemes that quantize activations too (need a GPU with the matching tensor cores to be fast).
W8A8_SCHEMES = ("fp8", "int8-sq")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: the scheme and its knobs.

    ``group_size``: int4 group along K. ``smoothquant_alpha``: migration strength of SmoothQuant.
    ``awq_grid``: number of exponents a in [0, 1) tried by AWQ. ``clip_search``: search a
    per-group clipping ratio for int4. ``max_calib_rows``: input rows kept per layer for the
    searches. ``lm_head``: "fp8" stores the LM head as fp8 W8A8 too (per-channel weight scales,
    per-token activations), "int8-wo" as int8 weight-only (per-channel scales) and "int4-wo" as
    int4 weight-only (groups of ``group_size``, rounded to nearest: no calibration), whatever the
    scheme of the decoder layers; "none" keeps it as is.
    """

    scheme: str = "none"
    group_size: int = 128
    smoothquant_alpha: float = 0.5
    awq_grid: int = 20
    clip_search: bool = True
    max_calib_rows: int = 512
    lm_head: str = "none"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise KilnError(f"unknown quantization {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        if self.lm_head not in LM_HEAD_SCHEMES:
            raise KilnError(f"unknown LM head quantization {self.lm_head!r}; choose one of "
                            f"{', '.join(LM_HEAD_SCHEMES)}")
        if not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise KilnError(f"smoothquant alpha must be in [0, 1], got {self.smoothquant_alpha}")
        if self.awq_grid < 1:
            raise KilnError(f"awq grid needs at least 1 point, got {self.awq_grid}")

    @property
    def needs_calibration(self) -> bool:
        """Whether the scheme's build reads activation statistics."""
        return self.scheme in CALIBRATED_SCHEMES

    def params(self) -> dict[str, Any]:
        """The knobs that matter for this scheme, for engine.json (``lm_head`` when quantized)."""
        head = {"lm_head": self.lm_head} if self.lm_head != "none" else {}
        if self.lm_head == "int4-wo":
            head["lm_head_group_size"] = self.group_size
        if self.scheme == "int4-wo":
            return {"group_size": self.group_size, "awq_grid": self.awq_grid,
                    "clip_search": self.clip_search, "max_calib_rows": self.max_calib_rows, **head}
        if self.scheme == "int8-sq":
            return {"alpha": self.smoothquant_alpha, **head}
        return head

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready."""
        return asdict(self)


def linear_method_factory(quantization: dict[str, Any]
                          ) -> Callable[[str, int, tuple[int, ...]], LinearMethod | None] | None:
    """The per-layer LinearMethod chooser for an engine's ``quantization`` record (None: unquantized).

    ``quantization["runtime_input_scale"]`` lists the layer prefixes that keep an ``input_scale``
    (scaling that could not be folded into a preceding op). The prefix ``lm_head`` gets a method
    only when ``quantization["lm_head"]`` names one (else None: the head stays as it is).
    """
    from kiln.quant.fp8 import Fp8LinearMethod
    from kiln.quant.int4 import Int4WeightOnlyLinearMethod
    from kiln.quant.int8 import Int8WeightOnlyLinearMethod
    from kiln.quant.smoothquant import Int8SmoothQuantLinearMethod

    scheme = quantization.get("scheme", "none")
    if scheme not in SCHEMES:
        raise KilnError(f"engine uses quantization {scheme!r}, which this kiln does not know; "
                        "upgrade kiln or rebuild the engine")
    head = quantization.get("lm_head", "none")
    if head not in LM_HEAD_SCHEMES:
        raise KilnError(f"engine stores its LM head as {head!r}, which this kiln does not know; "
                        "upgrade kiln or rebuild the engine")
    if scheme == "none" and head == "none":
        return None
    with_scale = frozenset(quantization.get("runtime_input_scale", ()))
    group_size = int(quantization.get("group_size") or 128)
    head_group_size = int(quantization.get("lm_head_group_size") or 128)

    def factory(prefix: str, in_features: int, output_sizes: tuple[int, ...]) -> LinearMethod | None:
        if prefix == "lm_head":
            if head == "fp8":
                return Fp8LinearMethod()
            if head == "int8-wo":
                return Int8WeightOnlyLinearMethod()
            if head == "int4-wo":
                return Int4WeightOnlyLinearMethod(head_group_size)
            return None
        if scheme == "none":
            return None
        if scheme == "fp8":
            return Fp8LinearMethod()
        if scheme == "int8-wo":
            return Int8WeightOnlyLinearMethod()
        if scheme == "int8-sq":
            return Int8SmoothQuantLinearMethod(has_input_scale=prefix in with_scale)
        return Int4WeightOnlyLinearMethod(group_size, has_input_scale=prefix in with_scale)

    return factory
