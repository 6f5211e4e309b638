"""Lesson 04's exercises: RMSNorm, one attention head, multi-head causal self-attention, the
block (pre- and post-norm) and one KV-cache step. The classes are checked against the kit's
models/transformer.py: the same constructor arguments and parameter names, the kit's weights
copied in, the same inputs."""

import math

import torch
import torch.nn.functional as F

from ..models.transformer import Block, CausalSelfAttention, RMSNorm, causal_mask
from ._core import Case, Check, Mismatch


def _randomize(module, seed):
    """Weights far from their initial values (RMSNorm starts at all ones, which hides a missing weight)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def _module_observe(kit_class, make, input_shape):
    """Build the kit's module (randomized weights) and the student's class with the same arguments,
    copy the weights over, and run the student's on a random input of input_shape."""

    def observe(cls, seed, *args):
        torch.manual_seed(seed)
        ref = _randomize(make(kit_class, *args), seed)
        mod = make(cls, *args)
        try:
            mod.load_state_dict(ref.state_dict())
        except RuntimeError as e:
            raise Mismatch(f"the kit's {kit_class.__name__} weights do not load into yours (the parameter names "
                           f"or shapes differ): {str(e).splitlines()[0][:300]}") from None
        mod.eval()
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(*input_shape, generator=g)
        with torch.no_grad():
            return mod(x)

    return observe


# RMSNorm ---------------------------------------------------------------------------------------

def _rms_cases():
    return [Case(label, lambda s=s, eps=eps: (s, eps)) for s, (label, eps) in enumerate([
        ("dim 8, eps=None (the dtype's machine epsilon)", None),
        ("dim 8, eps=1e-5", 1e-5),
        ("dim 8, a large eps=0.5 (it must be added inside the square root)", 0.5),
    ])]


check_rms_norm = Check(
    "rms_norm", RMSNorm, _rms_cases,
    observe=_module_observe(RMSNorm, lambda cls, eps: cls(8, eps=eps), (2, 5, 8)),
    used="the kit's RMSNorm", kit_names=("RMSNorm",))


# One attention head -------------------------------------------------------------------------------

def attention_head(x, w_q, w_k, w_v):
    """The kit's reference: one causal head with torch's fused kernel. x (B, T, E), w_* (E, hd) -> (B, T, hd)."""
    return F.scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v, is_causal=True)


def _head_cases():
    def make(seed, B, T, E, hd, scale=1.0):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(B, T, E, generator=g),
                *(torch.randn(E, hd, generator=g) * scale / math.sqrt(E) for _ in range(3)))

    return [
        Case("T=1: a token can only attend to itself, so the output is its own value", lambda: make(0, 1, 1, 4, 4)),
        Case("B=1, T=4, E=8, head size 4", lambda: make(1, 1, 4, 8, 4)),
        Case("B=2, T=7, E=16, head size 8, larger weights (sharper softmax)", lambda: make(2, 2, 7, 16, 8, 3.0)),
        Case("B=3, T=12, E=8, head size 2", lambda: make(3, 3, 12, 8, 2)),
    ]


check_attention_head = Check(
    "attention_head", attention_head, _head_cases, atol=1e-5, rtol=1e-4)


# Multi-head causal self-attention ----------------------------------------------------------------

def _mha_cases():
    return [Case(label, lambda s=s, E=E, H=H: (s, E, H)) for s, (label, E, H) in enumerate([
        ("embed_size 16, 4 heads, B=2, T=6", 16, 4),
        ("embed_size 16, 1 head", 16, 1),
        ("embed_size 24, 3 heads", 24, 3),
    ])]


def _mha_observe(cls, seed, E, H):
    return _module_observe(CausalSelfAttention, lambda c, E, H: c(E, H), (2, 6, E))(cls, seed, E, H)


check_causal_self_attention = Check(
    "causal_self_attention", CausalSelfAttention, _mha_cases, observe=_mha_observe, atol=1e-5, rtol=1e-4,
    used="the kit's CausalSelfAttention", kit_names=("CausalSelfAttention",))


# The block ---------------------------------------------------------------------------------------

def _block_cases():
    return [Case(label, lambda s=s, post=post: (s, post)) for s, (label, post) in enumerate([
        ("pre-norm block (use_post_norm=False), embed_size 16, 4 heads", False),
        ("post-norm block (use_post_norm=True)", True),
    ])]


def _block_observe(cls, seed, post):
    return _module_observe(Block, lambda c, post: c(16, 4, use_post_norm=post), (2, 6, 16))(cls, seed, post)


check_transformer_block = Check(
    "transformer_block", Block, _block_cases, observe=_block_observe, atol=1e-5, rtol=1e-4,
    used="the kit's Block", kit_names=("Block",))


# One KV-cache step ---------------------------------------------------------------------------------

def cached_attention(attn, x_new, past_k, past_v):
    """The kit's reference: attention for the new tokens x_new (B, T_new, E) given the cached keys and
    values (B, H, T_past, hd) of the earlier ones; returns (y (B, T_new, E), k, v (B, H, T_past + T_new, hd))."""
    B, T, C = x_new.shape
    q, k, v = attn.qkv(x_new).view(B, T, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, H, T_past + T, hd)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dim)  # (B, H, T, T_past + T)
    att = att.masked_fill(~causal_mask(T, k.size(2), x_new.device), float("-inf")).softmax(dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    return attn.proj(y), k, v


def _cache_observe(impl, seed, chunks):
    """Feed a sequence through impl chunk by chunk, from an empty cache: (all outputs, final k, final v)."""
    torch.manual_seed(seed)
    attn = _randomize(CausalSelfAttention(16, 4), seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, sum(chunks), 16, generator=g)
    k = v = torch.zeros(2, 4, 0, 4)
    ys, start = [], 0
    with torch.no_grad():
        for n in chunks:
            y, k, v = impl(attn, x[:, start:start + n], k, v)
            ys.append(y)
            start += n
    return torch.cat(ys, dim=1), k, v


def _cache_cases():
    return [Case(label, lambda s=s, c=c: (s, c)) for s, (label, c) in enumerate([
        ("one token at a time, 5 steps from an empty cache", (1, 1, 1, 1, 1)),
        ("a prompt of 4 tokens at once (it needs the causal mask), then 3 single tokens", (4, 1, 1, 1)),
        ("a prompt of 2, then a chunk of 3 new tokens after the cache (mask aligned to the end)", (2, 3)),
    ])]


check_kv_cache_step = Check(
    "kv_cache_step", cached_attention, _cache_cases, observe=_cache_observe, atol=1e-5, rtol=1e-4)
