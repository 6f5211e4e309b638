"""Causal decoder-only transformer with RMSNorm.

Read it top to bottom: RMSNorm, the positional encodings, one attention layer, one block, the
model. Two things beyond a textbook GPT:

- Attention patterns are addressable by name, as in TransformerLens: blocks live in
  `model.blocks` and `model(idx, return_attn=True)` also returns {"blocks.3.attn": (B, H, T, T)}.
  Training uses F.scaled_dot_product_attention (fused, never stores the T x T weights); asking for
  the weights switches to the explicit softmax(QK^T / sqrt(d)) path, which gives the same output.
- Generation keeps a KV cache: `state = model.init_state(B)`, then `logits, state =
  model.step(idx_new, state)` feeds only the new tokens and reuses every earlier key and value.

Context length. Learned positions have a table of block_size rows, so forward() refuses longer
inputs. "none", "sinusoidal" and "rope" compute positions from a formula, so forward() accepts any
length (beyond block_size the model extrapolates to positions it never trained on). Generation
always looks at the last block_size tokens, in every mode, so the cache can be preallocated and
cached and uncached generation agree token for token.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import POS_EMBS


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the mean subtraction and bias.

    Same definition as torch.nn.RMSNorm, eps=None meaning torch.finfo(x.dtype).eps.
    """

    def __init__(self, dim, eps=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight


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


class KVCache:
    """Keys and values of the tokens seen so far, preallocated (B, H, max_len, head_dim) per layer.

    pos: how many positions are filled; tokens: (B, pos) the ids in the cache, kept so the model
    can slide the window when it is full. head_t: lm_head's weight transposed to (E, V), copied
    once per generation. A token's logits h @ head_t then stream the (E, V) matrix row by row,
    which on a CPU runs ~1.4x faster than lm_head's (V, E) dot products, and the output layer is
    most of the weights a generated token reads.
    """

    def __init__(self, n_layers, batch_size, n_heads, max_len, head_dim, device, dtype, head_weight):
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.max_len = max_len
        self.pos = 0
        self.tokens = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        self.head_t = head_weight.detach().t().to(device, dtype).contiguous()  # (E, V)


class CausalSelfAttention(nn.Module):
    def __init__(self, embed_size, n_heads, dropout=0.0):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = embed_size // n_heads
        self.qkv = nn.Linear(embed_size, 3 * embed_size, bias=False)  # all heads' q, k, v in one matmul
        self.proj = nn.Linear(embed_size, embed_size, bias=False)
        self.dropout = dropout
        self.attn_drop = nn.Dropout(dropout)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x, rope=None, kv=None, return_attn=False):
        """x: (B, T, C). rope: (cos, sin) or None. kv: (k_buf, v_buf, pos) of a KVCache or None.

        Returns y (B, T, C) and the attention weights (B, H, T, T_keys) when return_attn, else None.
        """
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:
            # Write the new keys/values after the cached ones and attend over all of them.
            k_buf, v_buf, pos = kv
            k_buf[:, :, pos:pos + T] = k
            v_buf[:, :, pos:pos + T] = v
            k, v = k_buf[:, :, :pos + T], v_buf[:, :, :pos + T]  # (B, H, pos+T, hd)
        offset = k.size(2) - T  # queries sit at positions offset..offset+T-1 of the keys
        dropout_p = self.dropout if self.training else 0.0

        att = None
        if return_attn:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T_keys)
            att = att.masked_fill(~causal_mask(T, k.size(2), x.device), float("-inf"))
            att = att.softmax(dim=-1)
            y = self.attn_drop(att) @ v  # (B, H, T, hd)
        elif offset == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif T == 1:
            # One new token may look at every cached key: no mask at all.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # Several new tokens after a cache: is_causal would align the mask top-left, we need
            # it bottom-right (query i sees keys up to offset + i).
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, k.size(2), x.device),
                                               dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_drop(self.proj(y)), att


def causal_mask(t_q, t_k, device):
    """(t_q, t_k) bool, True where query i (the last t_q of t_k positions) may see key j."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


class MLP(nn.Module):
    def __init__(self, embed_size, mlp_ratio=4, dropout=0.0):
        super().__init__()
        self.fc = nn.Linear(embed_size, mlp_ratio * embed_size, bias=False)
        self.proj = nn.Linear(mlp_ratio * embed_size, embed_size, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm (default): x + attn(norm(x)), the residual stream itself is never normalized.
    Post-norm (the original Transformer): norm(x + attn(x)), every block output is normalized."""

    def __init__(self, embed_size, n_heads, use_post_norm=False, mlp_ratio=4, dropout=0.0):
        super().__init__()
        self.use_post_norm = use_post_norm
        self.norm1 = RMSNorm(embed_size)
        self.attn = CausalSelfAttention(embed_size, n_heads, dropout)
        self.norm2 = RMSNorm(embed_size)
        self.mlp = MLP(embed_size, mlp_ratio, dropout)

    def forward(self, x, rope=None, kv=None, return_attn=False):
        if self.use_post_norm:
            a, att = self.attn(x, rope, kv, return_attn)
            x = self.norm1(x + a)
            x = self.norm2(x + self.mlp(x))
        else:
            a, att = self.attn(self.norm1(x), rope, kv, return_attn)
            x = x + a
            x = x + self.mlp(self.norm2(x))
        return x, att


class TransformerModel(nn.Module):
    """Decoder-only causal transformer.

    pos_emb: "none" (attention alone: only causality hints at order), "learned" (a block_size x E
    table added to the token embeddings, GPT-2), "sinusoidal" (fixed sin/cos added, Vaswani et al.),
    "rope" (q and k rotated by position inside attention, LLaMA).
    A final RMSNorm before lm_head exists in pre-norm mode only: there the residual stream grows
    unnormalized through the blocks, while in post-norm mode the last block already ends in a norm.
    Linear layers have no bias (as in LLaMA); tie_weights shares lm_head.weight with wte.weight.
    """

    def __init__(self, vocab_size, embed_size, n_heads, n_blocks, block_size, pos_emb="none",
                 use_post_norm=False, mlp_ratio=4, dropout=0.0, tie_weights=False):
        super().__init__()
        if pos_emb not in POS_EMBS:
            raise ValueError(f"pos_emb={pos_emb!r} is not known: use one of {', '.join(POS_EMBS)}")
        if embed_size % n_heads:
            raise ValueError(f"embed_size={embed_size} is not divisible by n_heads={n_heads}: "
                             "pick n_heads that divides embed_size")
        if pos_emb == "rope" and (embed_size // n_heads) % 2:
            raise ValueError(f"rope needs an even head size, got embed_size/n_heads={embed_size // n_heads}: "
                             "change embed_size or n_heads")
        self.vocab_size, self.embed_size, self.n_heads = vocab_size, embed_size, n_heads
        self.n_blocks, self.block_size, self.pos_emb = n_blocks, block_size, pos_emb
        self.use_post_norm = use_post_norm
        self.head_dim = embed_size // n_heads

        self.wte = nn.Embedding(vocab_size, embed_size)
        self.wpe = nn.Embedding(block_size, embed_size) if pos_emb == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(embed_size, n_heads, use_post_norm, mlp_ratio, dropout) for _ in range(n_blocks))
        self.norm_f = nn.Identity() if use_post_norm else RMSNorm(embed_size)
        self.lm_head = nn.Linear(embed_size, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.wte.weight

        # GPT-2 init: N(0, 0.02), and the projections that write into the residual stream scaled
        # by 1/sqrt(2 * n_blocks) so its variance does not grow with depth.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_blocks))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def _run(self, idx, cache=None, return_attn=False):
        """idx (B, T) -> final hidden states (B, T, E) and {name: attention weights}."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if self.pos_emb == "learned" and start + T > self.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size={self.block_size} "
                             f"(learned positions have {self.block_size} rows): pass at most the last "
                             f"{self.block_size} tokens")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,) absolute positions
        x = self.wte(idx)  # (B, T, E)
        if self.pos_emb == "learned":
            x = x + self.wpe(pos)
        elif self.pos_emb == "sinusoidal":
            x = x + sinusoidal_embedding(pos, self.embed_size).to(x.dtype)
        rope = rope_cos_sin(pos, self.head_dim, x.dtype) if self.pos_emb == "rope" else None
        x = self.drop(x)
        attn = {}
        for i, block in enumerate(self.blocks):
            kv = (cache.k[i], cache.v[i], start) if cache is not None else None
            x, att = block(x, rope, kv, return_attn)
            if return_attn:
                attn[f"blocks.{i}.attn"] = att
        if cache is not None:
            cache.pos = start + T
        return self.norm_f(x), attn

    def hidden(self, idx):
        """(B, T) ids -> (B, T, E) final hidden states; forward(idx) == lm_head(hidden(idx))."""
        return self._run(idx)[0]

    def forward(self, idx, return_attn=False):
        """(B, T) ids -> logits (B, T, V); with return_attn also {"blocks.i.attn": (B, H, T, T)}."""
        h, attn = self._run(idx, return_attn=return_attn)
        logits = self.lm_head(h)  # (B, T, V)
        return (logits, attn) if return_attn else logits

    # Incremental generation (see sampling.generate).
    def init_state(self, batch_size, device=None, dtype=None):
        """An empty KV cache for batch_size sequences, block_size positions long."""
        w = self.wte.weight
        return KVCache(self.n_blocks, batch_size, self.n_heads, self.block_size, self.head_dim,
                       device or w.device, dtype or w.dtype, head_weight=self.lm_head.weight)

    def step(self, idx, state):
        """Feed the new tokens idx (B, T_new); return logits of the last position (B, V) and the state.

        Only the new tokens are computed; earlier keys/values come from the cache. When the window
        of block_size positions is full, it slides: the last block_size tokens are run again from
        position 0 (exactly what an uncached forward over the cropped context computes), so beyond
        block_size each new token costs a full forward, as without a cache.
        """
        tokens = torch.cat([state.tokens, idx], dim=1)  # (B, pos + T_new)
        if state.pos + idx.size(1) > state.max_len:
            idx = tokens[:, -state.max_len:]
            state.pos = 0
        state.tokens = tokens[:, -state.max_len:]
        h, _ = self._run(idx, cache=state)
        return h[:, -1] @ state.head_t, state  # lm_head on the last position only: (B, V)
