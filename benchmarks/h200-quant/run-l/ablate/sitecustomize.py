# Measurement only (never in kiln): KILN_ABLATE=norm,silu,rope drops those kernels from the model's
# forward (wrong outputs, same shapes), to bound what fusing them into neighbours could save.
import os

_what = set(filter(None, os.environ.get("KILN_ABLATE", "").split(",")))
if _what:
    import kiln.layers.norm as _norm
    import kiln.layers.activation as _act
    import kiln.layers.rotary as _rot

    if "norm" in _what:
        def _norm_fwd(self, x, residual=None):
            if x.shape[-1] != self.weight.shape[0] or x.dim() != 2:
                raise RuntimeError("ablation only for the hidden norms")
            return x if residual is None else (x, residual)
        _norm.RMSNorm.forward = _norm_fwd
    if "silu" in _what:
        def _silu_fwd(self, x):
            return x[..., : x.shape[-1] // 2]
        _act.SiluAndMul.forward = _silu_fwd
    if "rope" in _what:
        def _rope_fwd(self, positions, q, *args, **kwargs):
            return q
        _rot.RotaryEmbedding.forward = _rope_fwd
    print(f"[ablate] {sorted(_what)}", flush=True)
