"""Causal decoder-only transformer with RMSNorm.

Read it top to bottom: RMSNorm, the positional encodings, the hook points, the KV cache, one
attention layer, the MLP, one block, the output layer, the model. forward(idx) maps token ids
(B, T) to logits (B, T, V), always. Beyond a textbook GPT:

- Every intermediate activation has a name, as in TransformerLens. An identity layer, a
  `HookPoint`, sits at each interesting place, so `model.get_submodule("blocks.3.attn.hook_pattern")`
  is where a forward hook can read or replace that activation (`interp.run_with_cache` and
  `interp.run_with_hooks` do this for you). The names, for block i:

      hook_embed                   (B, T, E)        token + position embedding
      blocks.i.hook_resid_pre      (B, T, E)        the residual stream entering block i
      blocks.i.attn.hook_q         (B, H, T, hd)    queries, after rope when pos_emb="rope"
      blocks.i.attn.hook_k         (B, H, T, hd)    keys, after rope likewise
      blocks.i.attn.hook_v         (B, H, T, hd)    values (rope never touches them)
      blocks.i.attn.hook_pattern   (B, H, T, T_k)   softmax(QK^T / sqrt(hd)), each row sums to 1
      blocks.i.attn.hook_z         (B, T, H, hd)    each head's output, before attn.proj mixes them
      blocks.i.hook_resid_mid      (B, T, E)        the stream between the attention and the MLP
      blocks.i.mlp.hook_post       (B, T, 4E)       the MLP's hidden layer after the GELU (4 = mlp_ratio)
      blocks.i.hook_resid_post     (B, T, E)        the stream leaving block i
      hook_final                   (B, T, E)        after the final norm: what lm_head reads

  (hd = head_dim = E / H. During generation T counts the new tokens and T_k the cached ones too.)
- Training uses F.scaled_dot_product_attention, a fused kernel that never stores the T x T
  weights. Only when something hooks `hook_pattern` does attention take the explicit
  softmax(QK^T / sqrt(d)) path, which gives the same output and hands the weights to the hook.
- Generation keeps a KV cache: `state = model.init_state(B)`, then `logits, state =
  model.step(idx_new, state)` feeds only the new tokens and reuses every earlier key and value.
- attention="linear" or "gated_delta" (lesson 10) puts models/linear_attention.py's layer in every
  block instead of CausalSelfAttention; init_state then returns a fixed-size RecurrentState, which
  the same step() continues (hook_pattern does not exist there: no T x T weights are formed).

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

from ..config import ATTENTIONS, POS_EMBS
from .hooks import HookPoint
from .positions import apply_rope, rope_cos_sin, sinusoidal_embedding


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


class KVCache:
    """Keys and values of the tokens seen so far, preallocated (B, H, max_len, head_dim) per layer.

    Each attention layer calls `update(layer, k, v)` with its new keys and values and attends over
    what it returns; the model calls `advance(T)` once per step, after every layer has written at
    `pos`. pos: how many positions are filled. tokens: (B, pos) the ids in the cache, kept so the
    model can slide the window when it is full. head_t: lm_head's weight as an (E, V) copy, made
    once per generation (see LMHead.decode).
    """

    def __init__(self, n_layers, batch_size, n_heads, max_len, head_dim, device, dtype, head_t):
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.max_len = max_len
        self.pos = 0
        self.tokens = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        self.head_t = head_t  # (E, V)

    def update(self, layer, k, v):
        """Write one layer's new k, v (B, H, T, hd) after the cached ones; return all (B, H, pos+T, hd)."""
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n):
        """n more positions are filled (called once per model step, after the last layer)."""
        self.pos += n


def causal_mask(t_q, t_k, device):
    """(t_q, t_k) bool, True where query i (the last t_q of t_k positions) may see key j."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. Hook points: hook_q and hook_k (after rope, when the model
    uses it), hook_v, each (B, H, T, hd); hook_pattern (B, H, T, T_keys), which switches to the
    explicit path; hook_z (B, T, H, hd), the heads' outputs before proj. With a KV cache, hook_k and
    hook_v see the new tokens only, and a replacement there is what gets cached.
    """

    def __init__(self, embed_size, n_heads, dropout=0.0, layer_idx=0):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = embed_size // n_heads
        self.layer_idx = layer_idx  # which of the KV cache's layers is ours
        self.qkv = nn.Linear(embed_size, 3 * embed_size, bias=False)  # all heads' q, k, v in one matmul
        self.proj = nn.Linear(embed_size, embed_size, bias=False)
        self.dropout = dropout
        self.attn_drop = nn.Dropout(dropout)
        self.resid_drop = nn.Dropout(dropout)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern, self.hook_z = HookPoint(), HookPoint()

    def forward(self, x, rope=None, cache=None):
        """x: (B, T, C), rope: (cos, sin) or None, cache: a KVCache or None -> (B, T, C)."""
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H, pos+T, hd): cached keys, then ours
        if self.hook_pattern.active:
            # Someone wants the weights: compute them explicitly (T x T per head) and let the hook
            # read or replace them. Same output as the fused path below, up to float rounding.
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, T_keys)
            att = att.masked_fill(~causal_mask(T, k.size(2), x.device), float("-inf"))
            att = self.hook_pattern(att.softmax(dim=-1))
            y = self.attn_drop(att) @ v  # (B, H, T, hd)
        else:
            y = self._sdpa(q, k, v)
        z = self.hook_z(y.transpose(1, 2))  # (B, T, H, hd): one head_dim slice per head
        return self.resid_drop(self.proj(z.reshape(B, T, C)))  # proj mixes the heads

    def _sdpa(self, q, k, v):
        """The fused kernel, with the mask the query positions need."""
        T, T_keys = q.size(2), k.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if T == T_keys:  # no cache (or an empty one): the usual lower-triangular mask
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        if T == 1:  # one new token may look at every cached key: no mask at all
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        # Several new tokens after a cache: is_causal would align the mask top-left, we need it
        # bottom-right (query i sees keys up to T_keys - T + i).
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, T_keys, q.device),
                                              dropout_p=dropout_p)


class MLP(nn.Module):
    def __init__(self, embed_size, mlp_ratio=4, dropout=0.0):
        super().__init__()
        self.fc = nn.Linear(embed_size, mlp_ratio * embed_size, bias=False)
        self.proj = nn.Linear(mlp_ratio * embed_size, embed_size, bias=False)
        self.drop = nn.Dropout(dropout)
        self.hook_post = HookPoint()

    def forward(self, x):
        return self.drop(self.proj(self.hook_post(F.gelu(self.fc(x)))))


class Block(nn.Module):
    """Pre-norm (default): x + attn(norm(x)), the residual stream itself is never normalized.
    Post-norm (the original Transformer): norm(x + attn(x)), every block output is normalized.

    hook_resid_pre is the block's input, hook_resid_post its output. hook_resid_mid is the stream
    the MLP sublayer reads and adds to: x + attn(norm1(x)) in pre-norm, norm1(x + attn(x)) in
    post-norm (there the stream between sublayers is the normalized one).
    """

    def __init__(self, embed_size, n_heads, use_post_norm=False, mlp_ratio=4, dropout=0.0, layer_idx=0,
                 attention="softmax"):
        super().__init__()
        self.use_post_norm = use_post_norm
        # (Hook points are created in the order forward reaches them, so named_modules lists them so.)
        self.hook_resid_pre = HookPoint()
        self.norm1 = RMSNorm(embed_size)
        if attention == "softmax":
            self.attn = CausalSelfAttention(embed_size, n_heads, dropout, layer_idx)
        else:  # "linear" or "gated_delta": a fixed-size state instead of a KV cache (lesson 10)
            from .linear_attention import LinearAttention
            self.attn = LinearAttention(embed_size, n_heads, attention, dropout, layer_idx)
        self.hook_resid_mid = HookPoint()
        self.norm2 = RMSNorm(embed_size)
        self.mlp = MLP(embed_size, mlp_ratio, dropout)
        self.hook_resid_post = HookPoint()

    def forward(self, x, rope=None, cache=None):
        x = self.hook_resid_pre(x)
        if self.use_post_norm:
            x = self.hook_resid_mid(self.norm1(x + self.attn(x, rope, cache)))
            x = self.norm2(x + self.mlp(x))
        else:
            x = self.hook_resid_mid(x + self.attn(self.norm1(x), rope, cache))
            x = x + self.mlp(self.norm2(x))
        return self.hook_resid_post(x)


class LMHead(nn.Linear):
    """The output layer: hidden states (..., E) -> logits (..., V), a Linear without bias.

    forward is nn.Linear's. `decode(h, weight_t)` is the same map for generation, where each step
    needs the logits of one position: weight_t = `transposed()`, an (E, V) copy of the weight made
    once per generation. h @ weight_t then streams that matrix row by row, which on a CPU runs
    ~1.4x faster than F.linear's V dot products with the (V, E) weight, and the output layer is
    most of the weights a generated token reads.
    """

    def __init__(self, embed_size, vocab_size):
        super().__init__(embed_size, vocab_size, bias=False)

    def transposed(self, device=None, dtype=None):
        """The weight as a contiguous (E, V) tensor, detached: a snapshot for one generation."""
        return self.weight.detach().t().to(device=device, dtype=dtype).contiguous()

    @staticmethod
    def decode(h, weight_t):
        """(B, E) @ (E, V) -> (B, V) logits, equal to lm_head(h) when weight_t = lm_head.transposed()."""
        return h @ weight_t


class TransformerModel(nn.Module):
    """Decoder-only causal transformer.

    pos_emb: "none" (attention alone: only causality hints at order), "learned" (a block_size x E
    table added to the token embeddings, GPT-2), "sinusoidal" (fixed sin/cos added, Vaswani et al.),
    "rope" (q and k rotated by position inside attention, LLaMA).
    A final RMSNorm before lm_head exists in pre-norm mode only: there the residual stream grows
    unnormalized through the blocks, while in post-norm mode the last block already ends in a norm
    (so hook_final equals the last block's hook_resid_post there).
    Linear layers have no bias (as in LLaMA); tie_weights shares lm_head.weight with wte.weight.

    embed_scale=True puts the token embeddings at the scale of the sinusoids, as the original
    Transformer does (Vaswani et al. 2017, section 3.4): wte is initialised N(0, 1/E) and its rows are
    multiplied by sqrt(E), so each coordinate of a token's vector has standard deviation 1 (a sine or
    cosine has RMS 1/sqrt(2)). At GPT-2's N(0, 0.02) with no multiplier an added sinusoid is ~35x the
    token signal, and the model first has to grow its token embeddings to be heard (lesson 06 measures
    the stall). embed_scale=None (the default) is therefore on for "sinusoidal" and off for the others;
    the rule is the same for every pos_emb, so a comparison that sets it for all is like for like.
    """

    def __init__(self, vocab_size, embed_size, n_heads, n_blocks, block_size, pos_emb="none",
                 use_post_norm=False, mlp_ratio=4, dropout=0.0, tie_weights=False, embed_scale=None,
                 attention="softmax"):
        super().__init__()
        if pos_emb not in POS_EMBS:
            raise ValueError(f"pos_emb={pos_emb!r} is not known: use one of {', '.join(POS_EMBS)}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention={attention!r} is not known: use one of {', '.join(ATTENTIONS)}")
        if attention == "linear" and pos_emb == "rope":
            raise ValueError("attention='linear' needs positive features and rope would rotate them: use "
                             "pos_emb='none', 'learned' or 'sinusoidal', or attention='gated_delta' with rope")
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
        if embed_scale is None:
            embed_scale = pos_emb == "sinusoidal"
        self.embed_scale = embed_scale
        self.attention = attention
        self.embed_mult = math.sqrt(embed_size) if embed_scale else 1.0  # what wte's rows are multiplied by

        self.wte = nn.Embedding(vocab_size, embed_size)
        self.wpe = nn.Embedding(block_size, embed_size) if pos_emb == "learned" else None
        self.hook_embed = HookPoint()
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(embed_size, n_heads, use_post_norm, mlp_ratio, dropout, layer_idx=i,
                                          attention=attention) for i in range(n_blocks))
        self.norm_f = nn.Identity() if use_post_norm else RMSNorm(embed_size)
        self.hook_final = HookPoint()
        self.lm_head = LMHead(embed_size, vocab_size)
        if tie_weights:
            self.lm_head.weight = self.wte.weight

        # GPT-2 init: N(0, 0.02), and the projections that write into the residual stream scaled
        # by 1/sqrt(2 * n_blocks) so its variance does not grow with depth.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_blocks))
        if embed_scale and not tie_weights:  # (tied, wte is lm_head's weight too: keep its init)
            nn.init.normal_(self.wte.weight, mean=0.0, std=embed_size ** -0.5)

    def extra_repr(self):
        extra = ["embed_scale=True"] if self.embed_scale else []
        if self.attention != "softmax":
            extra.append(f"attention={self.attention!r}")
        return ", ".join(extra)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def _run(self, idx, cache=None):
        """idx (B, T) -> final hidden states (B, T, E); with a cache, idx continues what it holds."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if self.pos_emb == "learned" and start + T > self.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size={self.block_size} "
                             f"(learned positions have {self.block_size} rows): pass at most the last "
                             f"{self.block_size} tokens")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,) absolute positions
        x = self.wte(idx)  # (B, T, E)
        if self.embed_scale:
            x = x * self.embed_mult
        if self.pos_emb == "learned":
            x = x + self.wpe(pos)
        elif self.pos_emb == "sinusoidal":
            x = x + sinusoidal_embedding(pos, self.embed_size).to(x.dtype)
        rope = rope_cos_sin(pos, self.head_dim, x.dtype) if self.pos_emb == "rope" else None
        x = self.drop(self.hook_embed(x))
        for block in self.blocks:
            x = block(x, rope, cache)
        if cache is not None:
            cache.advance(T)
        return self.hook_final(self.norm_f(x))

    def hidden(self, idx):
        """(B, T) ids -> (B, T, E) final hidden states; forward(idx) == lm_head(hidden(idx))."""
        return self._run(idx)

    def forward(self, idx):
        """(B, T) ids -> logits (B, T, V)."""
        return self.lm_head(self._run(idx))

    # Incremental generation (see sampling.generate).
    def init_state(self, batch_size, device=None, dtype=None):
        """An empty KV cache for batch_size sequences, block_size positions long (a linear attention's
        RecurrentState, of fixed size, when attention is "linear" or "gated_delta")."""
        w = self.wte.weight
        device, dtype = device or w.device, dtype or w.dtype
        if self.attention != "softmax":
            from .linear_attention import RecurrentState
            return RecurrentState(self.n_blocks, batch_size, self.block_size, device, dtype,
                                  head_t=self.lm_head.transposed(device, dtype))
        return KVCache(self.n_blocks, batch_size, self.n_heads, self.block_size, self.head_dim,
                       device, dtype, head_t=self.lm_head.transposed(device, dtype))

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
        h = self._run(idx, cache=state)
        return self.lm_head.decode(h[:, -1], state.head_t), state  # the last position only: (B, V)
