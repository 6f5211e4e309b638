"""Lesson 10's exercises: causal linear attention in its parallel and recurrent forms, and the gated
delta rule's recurrent form, each checked against models/linear_attention.py on small hand-made and
random (q, k, v). The recurrent forms are checked on what they return after the last position too
(the state), and from a state left by earlier positions, so that generation can continue them."""

import torch
import torch.nn.functional as F

from ..models.linear_attention import causal_linear_attention, gated_delta_recurrent, linear_attention_recurrent
from ._core import Case, Check


def _qkv(seed, B, H, T, d, d_v=None, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, d, generator=g) * scale for _ in range(2))
    return q, k, torch.randn(B, H, T, d_v or d, generator=g)


# Parallel form -------------------------------------------------------------------------------------

def _parallel_cases():
    return [
        Case("T=1: one position sees only itself, so its output is its own value", lambda: _qkv(0, 1, 1, 1, 4)),
        Case("B=1, H=1, T=5, d=4", lambda: _qkv(1, 1, 1, 5, 4)),
        Case("B=2, H=3, T=9, d=8, value size 6", lambda: _qkv(2, 2, 3, 9, 8, 6)),
        Case("larger q and k (features far from 1)", lambda: _qkv(3, 2, 2, 7, 4, scale=3.0)),
    ]


check_causal_linear_attention = Check(
    "causal_linear_attention", causal_linear_attention, _parallel_cases, atol=1e-5, rtol=1e-4,
    used="the kit's causal_linear_attention", kit_names=("causal_linear_attention",))


# Recurrent form -----------------------------------------------------------------------------------

def _recurrent_observe(impl, q, k, v, split):
    """Run impl over the positions in two calls (split positions, then the rest), the second
    continuing the state of the first: (all outputs, S, z after the last)."""
    if split == 0:
        return impl(q, k, v)
    y1, S, z = impl(q[:, :, :split], k[:, :, :split], v[:, :, :split])
    y2, S, z = impl(q[:, :, split:], k[:, :, split:], v[:, :, split:], S, z)
    return torch.cat([y1, y2], dim=2), S, z


def _recurrent_cases():
    return [
        Case("T=1 from an empty state", lambda: (*_qkv(0, 1, 1, 1, 4), 0)),
        Case("B=1, H=1, T=6, d=4, from an empty state", lambda: (*_qkv(1, 1, 1, 6, 4), 0)),
        Case("B=2, H=3, T=8, d=4, value size 5", lambda: (*_qkv(2, 2, 3, 8, 4, 5), 0)),
        Case("3 positions, then 4 more continuing the returned state (S, z)", lambda: (*_qkv(3, 2, 2, 7, 4), 3)),
    ]


check_linear_attention_recurrent = Check(
    "linear_attention_recurrent", linear_attention_recurrent, _recurrent_cases, observe=_recurrent_observe,
    atol=1e-5, rtol=1e-4, used="the kit's linear_attention_recurrent", kit_names=("linear_attention_recurrent",))


# The gated delta rule -------------------------------------------------------------------------------

def _delta_inputs(seed, B, H, T, d, alpha_low=0.3, beta_low=0.1):
    q, k, v = _qkv(seed, B, H, T, d)
    g = torch.Generator().manual_seed(seed + 100)
    alpha = alpha_low + (1 - alpha_low) * torch.rand(B, H, T, generator=g)   # decays well away from 1
    beta = beta_low + (1 - beta_low) * torch.rand(B, H, T, generator=g)
    return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, alpha, beta


def _delta_observe(impl, q, k, v, alpha, beta, split):
    if split == 0:
        return impl(q, k, v, alpha, beta)
    y1, S = impl(q[:, :, :split], k[:, :, :split], v[:, :, :split], alpha[:, :, :split], beta[:, :, :split])
    y2, S = impl(q[:, :, split:], k[:, :, split:], v[:, :, split:], alpha[:, :, split:], beta[:, :, split:], S)
    return torch.cat([y1, y2], dim=2), S


def _delta_cases():
    def the_same_key(seed):
        q, k, v, a, b = _delta_inputs(seed, 1, 1, 4, 4)
        k = k[:, :, :1].expand_as(k).contiguous()           # one key written four times: the delta rule overwrites
        return q, k, v, torch.ones_like(a), torch.ones_like(b), 0

    return [
        Case("T=1 from an empty state", lambda: (*_delta_inputs(0, 1, 1, 1, 4), 0)),
        Case("one key written 4 times with alpha = beta = 1: the memory holds the last value only",
             lambda: the_same_key(1)),
        Case("B=2, H=2, T=7, d=4, alpha in (0.3, 1), beta in (0.1, 1)", lambda: (*_delta_inputs(2, 2, 2, 7, 4), 0)),
        Case("4 positions, then 3 more continuing the returned S", lambda: (*_delta_inputs(3, 2, 1, 7, 8), 4)),
    ]


check_gated_delta_recurrent = Check(
    "gated_delta_recurrent", gated_delta_recurrent, _delta_cases, observe=_delta_observe, atol=1e-5, rtol=1e-4,
    used="the kit's gated_delta_recurrent", kit_names=("gated_delta_recurrent",))
