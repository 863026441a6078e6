"""Launch kiln's decode attention once per cache dtype at 1000 sequences of 192 keys (the
engine's large tile), for ncu to profile: `ncu ... -k regex:_decode_partition python3 THIS`.

Two warm-up launches per case keep compilation out of the profiled launch (ncu's -c counts
every launch of the matched kernel: use --launch-skip 2 -c 1 per case, or read the third).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "kernels"))
from bench_kernels import HEAD_DIM, paged_setup  # noqa: E402
from kiln.kernels import decode_attention  # noqa: E402

for kv in ("bf16", "fp8"):
    cache, sets = paged_setup(1000, 192, 1, 1)
    if kv == "fp8":
        cache = cache.to(torch.float8_e4m3fn)
    q, meta = sets[0]
    out = torch.empty_like(q)
    for _ in range(3):
        decode_attention._paged_decode(q, cache, meta, out, HEAD_DIM ** -0.5 * 1.4426950408889634, 0, None)
    torch.cuda.synchronize()
    print(kv, "done", flush=True)
    del cache, sets
    torch.cuda.empty_cache()
