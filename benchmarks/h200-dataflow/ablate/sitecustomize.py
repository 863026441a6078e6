# Measurement only (never in kiln): KILN_ABLATE_WAIT drops kernels' waits for the kernel before
# them under PDL (griddepcontrol.wait), keeping their early launch of the next kernel, so the
# step streams the same bytes with some or all dependencies gone (wrong outputs). It bounds what
# finer-grained dependencies (a consumer waiting for the slices of its input it reads, not for
# the whole producer grid) could save at batch 1.
#   all  every kiln kernel
#   mlp  SiLU-mul (and its quantizing variant) and down_proj: only the gate_up -> down boundary
#   o    o_proj's GEMV: only the attention -> o_proj boundary
# Comma-separated; mlp,o drops both boundaries.
# KILN_ABLATE_SKIP (defined at start, even empty; read at every call, so ab_latency.py variants
# may set it): "norm" makes every add + RMSNorm with a residual launch nothing and return its
# input and the residual unchanged (wrong values, the same GEMV bytes): what fusing the norms
# into the GEMVs before them could save at most. "reduce" and "reduce-h": see below.
import os

if "KILN_ABLATE_SKIP" in os.environ:
    import kiln.layers.norm as _norm_mod

    _orig_norm = _norm_mod.RMSNorm.forward

    def _norm_forward(self, x, residual=None, *a, **kw):
        if residual is not None and "norm" in os.environ.get("KILN_ABLATE_SKIP", "").split(","):
            return x, residual
        return _orig_norm(self, x, residual, *a, **kw)

    _norm_mod.RMSNorm.forward = _norm_forward

    # "reduce": the tensor-core GEMVs' split-K partials are never summed (no fused reduce in the
    # last program, no reduce launch; the output stays unwritten, wrong values): what summing the
    # splits in the kernel that reads the GEMV's output could save at most. "reduce-h": only
    # GEMVs with N <= K (o_proj, down_proj: those whose reader is the add + RMSNorm).
    import kiln.kernels.mma_gemv as _mma
    import kiln.kernels.quant_matmul as _qm

    _orig_tc_gemv = _qm.tc_gemv
    _orig_reduce = _mma._reduce_splits

    def _tc_gemv(x2, x_scales, w, *a, **kw):
        skip = os.environ.get("KILN_ABLATE_SKIP", "").split(",")
        if not ("reduce" in skip or ("reduce-h" in skip and w.shape[0] <= w.shape[1])):
            return _orig_tc_gemv(x2, x_scales, w, *a, **kw)
        before = os.environ.get("KILN_QUANT_FUSED_SPLITK")
        os.environ["KILN_QUANT_FUSED_SPLITK"] = "0"
        _mma._reduce_splits = lambda *r, **k: None
        try:
            return _orig_tc_gemv(x2, x_scales, w, *a, **kw)
        finally:
            _mma._reduce_splits = _orig_reduce
            if before is None:
                os.environ.pop("KILN_QUANT_FUSED_SPLITK")
            else:
                os.environ["KILN_QUANT_FUSED_SPLITK"] = before

    _qm.tc_gemv = _tc_gemv
    print("[ablate-skip] hooks installed", flush=True)

_what = set(filter(None, os.environ.get("KILN_ABLATE_WAIT", "").split(",")))
if _what:
    import triton
    import triton.language as tl

    import kiln.kernels as _k
    import kiln.kernels.pdl as _pdl

    @triton.jit
    def _pdl_start(PDL: tl.constexpr):
        if PDL == 3:
            tl.extra.cuda.gdc_launch_dependents()
        elif PDL == 2:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        elif PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

    _pdl.pdl_start = _pdl_start
    _scope = [0]
    _orig_args = _k.pdl_args

    def _pdl_args(t):
        a = _orig_args(t)
        if a.get("PDL") and ("all" in _what or _scope[0] > 0):
            a = dict(a, PDL=3)
        return a

    _k.pdl_args = _pdl_args

    import kiln.layers.linear as _lin
    import kiln.layers.activation as _act
    import kiln.models.llama as _llama

    def _no_wait(forward, applies):
        """forward, whose launches skip their wait where applies(module) holds."""
        def wrapped(self, *a, **kw):
            if not applies(self):
                return forward(self, *a, **kw)
            _scope[0] += 1
            try:
                return forward(self, *a, **kw)
            finally:
                _scope[0] -= 1
        return wrapped

    _lin.Linear.forward = _no_wait(_lin.Linear.forward,
                                   lambda m: getattr(m, "_ablate_nowait", False))
    _act.SiluAndMul.forward = _no_wait(_act.SiluAndMul.forward, lambda m: "mlp" in _what)
    _orig_layer_init = _llama.DecoderLayer.__init__

    def _layer_init(self, *a, **kw):
        _orig_layer_init(self, *a, **kw)
        if "mlp" in _what:
            self.mlp.down_proj._ablate_nowait = True
        if "o" in _what:
            self.self_attn.o_proj._ablate_nowait = True

    _llama.DecoderLayer.__init__ = _layer_init
    print(f"[ablate-wait] {sorted(_what)}", flush=True)
