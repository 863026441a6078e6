import torch
from kiln.kernels.rmsnorm import fused_add_rms_norm, fused_add_rms_norm_quant
from kiln.kernels.quant_act import quant_per_token, quant_per_token_ref
for dtype in (torch.float16, torch.bfloat16):
  for seed in range(6):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    m, hidden = 1000, 4096
    x = (torch.randn(m, hidden, generator=gen, device="cuda") * 2).to(dtype)
    residual = (torch.randn(m, hidden, generator=gen, device="cuda") * 2).to(dtype)
    w = (torch.rand(hidden, generator=gen, device="cuda") + 0.5).to(dtype)
    normed, res_a = fused_add_rms_norm(x, residual.clone(), w, 1e-5)
    rows, res_b = fused_add_rms_norm_quant(x, residual.clone(), w, 1e-5, torch.float8_e4m3fn)
    q, s = quant_per_token(normed, torch.float8_e4m3fn)
    qr, sr = quant_per_token_ref(normed, torch.float8_e4m3fn)
    bad = (rows.q[:m].view(torch.uint8) != q.view(torch.uint8)).nonzero()
    sbad = (rows.scale[:m] != s).nonzero()
    print(dtype, seed, "res equal", torch.equal(res_a, res_b), "code mismatches", len(bad), "scale mismatches", len(sbad),
          "kernel vs ref codes", int((q.view(torch.uint8) != qr.view(torch.uint8)).sum()),
          "fused vs ref", int((rows.q[:m].view(torch.uint8) != qr.view(torch.uint8)).sum()))
    for r, c in bad[:5].tolist():
        v = normed[r, c].float().item(); sc = s[r, 0].item()
        print("  row", r, "col", c, "normed", v, "scale sep/fused", sc, rows.scale[r, 0].item(), "v/scale", v / sc,
              "codes sep/fused/ref", q[r, c].float().item(), rows.q[r, c].float().item(), qr[r, c].float().item())
