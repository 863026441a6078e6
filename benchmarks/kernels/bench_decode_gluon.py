"""Large-batch decode attention over an fp8 cache: the Triton kernel the engine launches against
kiln.kernels.decode_gluon's one-warp kernel at several (block_n, stages), on the H200.

Cases: 1000 sequences at 128 / 192 / 256 keys, 1000 spread over 129..256 keys (a 1000 x 128/128
run's decode steps), 256 x 1024 and 64 x 4000. Each row: microseconds per launch (CUDA-graph
timing over rotated input sets), the relative error against paged_attention_ref, and the
effective cache read rate.

    cd benchmarks/kernels && python3 bench_decode_gluon.py --json OUT.json
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

TILES = [(32, 3, False), (32, 2, False), (16, 4, False), (32, 3, True), (32, 2, True),
         (16, 3, True), (16, 4, True)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="the 1000 x 129..256 case alone")
    args = ap.parse_args()
    from bench_kernels import HEAD_DIM, HK, n_sets, paged_setup  # noqa: PLC0415
    from proto_decode_pipe import mixed_setup  # noqa: PLC0415
    from proto_fp8_decode import _engine_calls, _record, _write  # noqa: PLC0415
    from kiln.kernels import attention_ref  # noqa: PLC0415
    rows = []
    cases = [("1000x129-256", 1000, (129, 256))]
    if not args.quick:
        cases += [("1000x192", 1000, 192), ("1000x256", 1000, 256), ("1000x128", 1000, 128),
                  ("256x1024", 256, 1024), ("64x4000", 64, 4000)]
    for label, batch, ctx in cases:
        if isinstance(ctx, tuple):
            cache, sets = mixed_setup(batch, ctx[0], ctx[1], 8)
            keys = batch * (ctx[0] + ctx[1]) / 2
        else:
            cache, sets = paged_setup(batch, ctx, 1, n_sets(batch * ctx * HK * HEAD_DIM * 2))
            cache = cache.to(torch.float8_e4m3fn)
            keys = batch * ctx
        nbytes = int(keys * HK * HEAD_DIM * 2)
        q0, m0 = sets[0]
        ref = attention_ref.paged_attention_ref(q0, cache, m0, HEAD_DIM ** -0.5).float()
        for name, tuning in [("triton", {"gluon": None})] + [
                (f"gluon{' keys-m' if km else ''} N{bn} s{st}", {"gluon": (bn, st, km)})
                for bn, st, km in TILES]:
            calls, outs = _engine_calls(cache, sets, tuning)
            _record(rows, f"{label} {name}", calls, lambda c=calls[0], o=outs[0]: (c(), o)[1],
                    ref, nbytes, "TBps")
        del cache, sets
        torch.cuda.empty_cache()
    _write(rows, args.json)


if __name__ == "__main__":
    main()
