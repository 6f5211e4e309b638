"""Position encodings the transformer can use: sinusoidal (Vaswani et al. 2017) and rotary (RoPE, Su et al.
2021). Learned positions are an nn.Embedding in models/transformer.py; lesson 06 compares them all.
"""

import torch


def _f64(device):
    """float64 for position angles (large positions keep their precision); MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def sinusoidal_embedding(pos, dim):
    """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(same).

    pos: (T,) int64 -> (T, dim) float64. Computed from the formula, so any position works.
    """
    dt = _f64(pos.device)
    half = (dim + 1) // 2
    inv_freq = 10000.0 ** (-torch.arange(half, dtype=dt, device=pos.device) * 2 / dim)
    ang = pos.to(dt)[:, None] * inv_freq  # (T, half)
    return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(1)[:, :dim]  # sin, cos interleaved


def rope_cos_sin(pos, head_dim, dtype):
    """Rotary angles for positions pos (T,): cos, sin each (T, head_dim/2).

    Pair i of each head rotates by angle p * 10000^(-2i/head_dim).
    """
    dt = _f64(pos.device)
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=dt, device=pos.device) / head_dim)
    ang = pos.to(dt)[:, None] * inv_freq  # (T, head_dim/2)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate (x1, x2) pairs of x (B, H, T, head_dim) by their position's angle.

    The pairs are (x[..., i], x[..., i + head_dim/2]) (the GPT-NeoX / LLaMA layout). Rotating
    q at position m and k at position n makes q.k depend on m - n only: relative position.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, head_dim/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rope_rotate(x, pos):
    """x (..., T, head_dim) rotated as at positions pos (T,): apply_rope with rope_cos_sin's angles.

    Pair i = (x[..., i], x[..., i + head_dim/2]) turns by pos * 10000^(-2i/head_dim), the halves layout
    of GPT-NeoX and LLaMA; Su et al. pair neighbours (2i, 2i+1): the same rotation on permuted
    coordinates, but not the same numbers. The result has x's dtype (lesson 06's exercise).
    """
    return apply_rope(x, *rope_cos_sin(pos, x.shape[-1], x.dtype))
