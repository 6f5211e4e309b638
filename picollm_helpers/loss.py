"""The language-model loss: mean next-token cross-entropy over the targets that are not padding.

Two ways to compute the same number and gradients:

- the plain reference, `F.cross_entropy` on the full (B, T, V) logits of `model(x)`;
- the fused, chunked output layer (`FusedLinearCE`, loss_chunk_size > 0): `model.hidden(x)`, then
  the output layer and its loss `chunk` rows at a time, with the gradient folded in as it goes, so
  the (B, T, V) logits never exist. With V = 50257 and a small model those logits dominate a CPU
  training step's time and memory.

`LossModule` wraps model + loss in one forward(), so DDP and torch.compile see the whole
training computation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import IGNORE_INDEX


class FusedLinearCE(torch.autograd.Function):
    """sum_i CE(h_i @ W.T + b, t_i), `chunk` rows at a time, never holding the (N, V) logits.

    The loss is a scalar, so the gradient of each chunk's logits, dCE/dlogits = softmax - onehot,
    is known as soon as that chunk's logits are. With grad enabled, forward therefore computes it
    chunk by chunk and folds it at once into grad_h (N, D), grad_W (V, D) and grad_b (V,), reusing
    one (chunk, V) buffer for every chunk; backward only scales the stored gradients by the
    incoming one. That is the plain path's three matmuls (logits, grad_h, grad_W) without its
    several (N, V) tensors (the "fused linear cross-entropy" of the Liger kernels). Without grad
    (evaluation) forward computes the loss alone.

    Softmax and loss are fp32. mm_dtype=torch.bfloat16 (what loss_sum passes under bf16
    autocast) runs the three matmuls in bf16, as lm_head would under autocast; gradients are
    still accumulated in fp32. Backward can run once per forward (no retain_graph).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk, with_grad, mm_dtype):
        # h: (N, D) hidden rows that have a real target; targets: (N,) ids in [0, V)
        N, D = h.shape
        V = weight.shape[0]
        f32, dev = torch.float32, h.device
        mm_dtype = mm_dtype or f32
        with torch.autocast(device_type=dev.type, enabled=False):
            hq, wq = h.to(mm_dtype), weight.to(mm_dtype)
            bq = bias.to(mm_dtype) if bias is not None else None
            c = max(1, min(int(chunk), N))
            logits_buf = torch.empty(c, V, dtype=mm_dtype, device=dev)        # reused by every chunk
            f32_buf = logits_buf if mm_dtype == f32 else torch.empty(c, V, dtype=f32, device=dev)
            prob_buf = torch.empty(c, V, dtype=f32, device=dev)               # softmax, then p - onehot
            rows = torch.arange(c, device=dev)
            loss = torch.zeros((), dtype=f32, device=dev)
            if with_grad:
                new = torch.empty if N else torch.zeros                       # the first chunk writes them
                grad_h = torch.empty(N, D, dtype=f32, device=dev)
                grad_w = new(V, D, dtype=f32, device=dev)
                grad_b = new(V, dtype=f32, device=dev) if bias is not None else None
                low_buf = None if mm_dtype == f32 else torch.empty(c, V, dtype=mm_dtype, device=dev)
            for i in range(0, N, c):
                hc, tc = hq[i:i + c], targets[i:i + c]                    # (n, D), (n,)
                n = hc.shape[0]
                z = logits_buf[:n]
                if bq is not None:
                    torch.addmm(bq, hc, wq.t(), out=z)                   # (n, V) logits
                else:
                    torch.mm(hc, wq.t(), out=z)                          # (n, V) logits
                zf = z if mm_dtype == f32 else f32_buf[:n].copy_(z)
                p = torch.ops.aten._softmax.out(zf, -1, False, out=prob_buf[:n])  # (n, V)
                # CE = -log p_target. Where p_target underflows toward 0 its log loses precision:
                # those rows (a loss above 69 nats: rare) take logsumexp(z) - z_target instead.
                p_t = p.gather(1, tc[:, None]).squeeze(1)                # (n,)
                nll = -p_t.log()
                tiny = p_t < 1e-30
                if bool(tiny.any()):
                    bad = tiny.nonzero().squeeze(1)
                    nll[bad] = torch.logsumexp(zf[bad], dim=-1) - zf[bad, tc[bad]]
                loss += nll.sum()
                if not with_grad:
                    continue
                p[rows[:n], tc] -= 1.0                                   # dCE/dlogits = p - onehot
                if mm_dtype == f32:
                    torch.mm(p, wq, out=grad_h[i:i + n])                 # (n, D)
                    if i == 0:
                        torch.mm(p.t(), hc, out=grad_w)                  # (V, D) = (V, n) @ (n, D)
                    else:
                        grad_w.addmm_(p.t(), hc)
                else:
                    d = low_buf[:n].copy_(p)
                    grad_h[i:i + n] = torch.mm(d, wq)
                    gw = torch.mm(d.t(), hc)                             # (V, D) in mm_dtype
                    grad_w.copy_(gw) if i == 0 else grad_w.add_(gw)
                if grad_b is not None:
                    torch.sum(p, dim=0, out=grad_b) if i == 0 else grad_b.add_(p.sum(dim=0))
        ctx.with_grad = with_grad
        if with_grad:
            ctx.grads = (grad_h, grad_w, grad_b)
            ctx.dtypes = (h.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if not ctx.with_grad:
            raise RuntimeError("the fused loss was computed without gradients (under torch.no_grad()); "
                               "compute it with grad enabled to call backward()")
        if ctx.grads is None:
            raise RuntimeError("backward through the fused loss ran already: it keeps its gradients for "
                               "one backward pass (retain_graph=True is not supported); use loss_chunk_size=0")
        grads, ctx.grads = ctx.grads, None
        out = [None if (g is None or not need) else (g.mul_(grad_out) if g.dtype == dt else (g * grad_out).to(dt))
               for g, dt, need in zip(grads, ctx.dtypes, ctx.needs_input_grad[:3])]
        return (*out, None, None, None, None)


@torch.compiler.disable
def fused_linear_ce(h, weight, bias, targets, chunk, with_grad, mm_dtype):
    # Under torch.compile the model around it is compiled; this loop of library matmuls runs as is.
    return FusedLinearCE.apply(h, weight, bias, targets, chunk, with_grad, mm_dtype)


def reference_loss_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The plain definition: F.cross_entropy summed over the full (B, T, V) logits' real targets."""
    logits = model(x)                                                    # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def fused_loss_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The same sum through model.hidden and FusedLinearCE, `chunk_size` rows at a time."""
    if not (hasattr(model, "hidden") and isinstance(getattr(model, "lm_head", None), nn.Linear)):
        raise ValueError(f"loss_chunk_size={chunk_size} needs a model with .hidden() and an "
                         f".lm_head nn.Linear; {type(model).__name__} has not: set loss_chunk_size=0")
    hidden = model.hidden(x).flatten(0, 1)                               # (B*T, D)
    targets = y.flatten()                                                # (B*T,)
    keep = targets != IGNORE_INDEX
    # Padding rows never reach the output layer: their loss is masked anyway.
    hidden, targets = hidden[keep], targets[keep]                        # (N, D), (N,)
    head = model.lm_head
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad
                                             or (head.bias is not None and head.bias.requires_grad))
    dev = hidden.device.type
    mm_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    return fused_linear_ce(hidden, head.weight, head.bias, targets, int(chunk_size), with_grad, mm_dtype)


def loss_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
    """Summed next-token CE over the targets that are not IGNORE_INDEX (padding): the fused path
    when chunk_size > 0, else the reference."""
    if chunk_size > 0:
        return fused_loss_sum(model, x, y, chunk_size)
    return reference_loss_sum(model, x, y)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
    """Mean next-token cross-entropy over non-padding targets (y == -100 is masked).

    chunk_size=0: F.cross_entropy on the full (B, T, V) logits. chunk_size>0: model.hidden(x) then
    the output layer and CE `chunk_size` rows at a time (fused with their gradient, see
    FusedLinearCE), never holding (B, T, V) logits; same value and gradients, less memory and
    time. Under bf16 autocast both paths run the output layer's matmuls in bf16.
    """
    n = (y != IGNORE_INDEX).sum()
    return loss_sum(model, x, y, chunk_size) / n.clamp(min=1)


class LossModule(nn.Module):
    """model + loss in one forward(), so DDP and torch.compile see the whole training computation."""

    def __init__(self, model: nn.Module, chunk_size: int):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, x, y):
        return loss_sum(self.model, x, y, self.chunk_size)
