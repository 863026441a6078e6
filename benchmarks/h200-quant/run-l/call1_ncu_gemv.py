"""Launch one int4 GEMV (gate_up / down best config) and one bf16 tensor-core GEMV (qkv, o)
a few times each, for ncu (measurement only)."""
import sys, os
import torch, triton
sys.path.insert(0, "benchmarks/kernels")
import bench_quant
from kiln.kernels import quant_matmul as qm
from kiln.kernels import mma_gemv

os.environ.setdefault("KILN_QUANT_AUTOTUNE", "0")
torch.manual_seed(0)
x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
x14 = torch.randn(1, 14336, device="cuda", dtype=torch.bfloat16)
for name, n, k, (bn, warps, unroll, split) in (("gate_up", 28672, 4096, (64, 4, 1, 2)),
                                                ("down", 4096, 14336, (128, 4, 1, 16))):
    w = bench_quant.make_weights("int4", n, k)
    cfg = triton.Config({"BLOCK_N": bn, "UNROLL": unroll}, num_warps=warps, num_stages=3)
    xx = x if k == 4096 else x14
    for _ in range(3):
        qm.launch(xx, w[0], w[1], w[1].stride(1), bench_quant.GROUP, qm.W_INT4, None, xx.dtype,
                  "gemv", split_k=split, config=cfg)
for name, n, k in (("qkv", 6144, 4096), ("gate_up", 28672, 4096)):
    w = bench_quant.make_weights("bf16", n, k)
    for _ in range(3):
        mma_gemv.tc_gemv(x, None, w[0], None, None, x.dtype)
torch.cuda.synchronize()
print("done")
