"""Locate non-finite gradients on the GPU: ours vs the float64 chunked reference, adversarial key."""
import torch
from logattn_ref import torch_attention as ta, triton_kernels as tk
torch.manual_seed(0)
for n, scale, adv, C in [(2048, 1, True, 64), (2048, 1, False, 64), (4099, 10, True, 128), (777, 1000, False, 128), (300, 1, True, 128)]:
    q, k = (torch.randn(2, 3, n, 64, device="cuda", dtype=torch.float64) * scale for _ in range(2))
    v = torch.randn(2, 3, n, 64, device="cuda", dtype=torch.float64)
    if adv:
        k[..., n // 2 + 3, :] += 1e3
    dy = torch.randn_like(v)
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    ta.log_attention(*ref, method="chunked").backward(dy)
    ins = [x.float().requires_grad_() for x in (q, k, v)]
    tk.log_attention_triton(*ins, chunk_size=C).backward(dy.float())
    out = dict(n=n, scale=scale, adv=adv, C=C)
    for nm, a, b in zip("qkv", ins, ref):
        bad = (~torch.isfinite(a.grad)).nonzero()
        out[nm] = dict(ours_nonfinite=int(bad.shape[0]), ref_nonfinite=int((~torch.isfinite(b.grad)).sum()),
                       rows=sorted(set(bad[:, 2].tolist()))[:8],
                       err=((a.grad.double() - b.grad).nan_to_num(0).abs().max() / b.grad.nan_to_num(0).abs().max().clamp_min(1e-3)).item())
    print(out, flush=True)
