"""Linear attention and the gated delta rule: attention whose memory is a fixed-size state.

Softmax attention (models/transformer.py) compares a query with every earlier key, so a generated
token costs time and memory that grow with the context (the KV cache). Linear attention
(Katharopoulos et al. 2020, "Transformers are RNNs") replaces exp(q.k) by a product of features,
phi(q).phi(k) with phi(x) = elu(x) + 1 > 0; the sums over earlier positions then factor:

    y_t = sum_{s<=t} (phi(q_t).phi(k_s)) v_s / sum_{s<=t} phi(q_t).phi(k_s)
        = phi(q_t)^T S_t / phi(q_t)^T z_t,    S_t = S_{t-1} + phi(k_t) v_t^T  (hd x hd),
                                              z_t = z_{t-1} + phi(k_t)        (hd)

The same layer has three forms, equal up to float rounding:

  parallel   masked (phi(Q) phi(K)^T) V with its normaliser: T x T per head, like softmax attention
  recurrent  the state (S, z) updated token by token: what generation uses, O(1) per token
  chunked    the parallel form inside chunks of C positions, the state carried between chunks:
             O(T C) for training, without T x T matrices

A state that only adds forgets nothing and can hold about hd independent key-value pairs per head.
The gated delta rule (Yang et al. 2024, "Gated Delta Networks", arXiv 2412.06464) forgets and
overwrites: with unit-length keys, a decay alpha_t in (0, 1) and a write strength beta_t in (0, 1),

    S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T,    y_t = S_t^T q_t

(decay the memory, read what it holds for k_t, write back a correction towards v_t). Its chunked
form solves one small triangular system per chunk (the "UT transform" of DeltaNet).

Both layers also mix each position's q, k and v with the previous position's (a learned token
shift, as RWKV and the short convolutions of GLA and Gated DeltaNet do): a linear state cannot
attend sharply to "the token just before", and associative recall needs exactly that to pair a
key with the value after it. The state object, `RecurrentState`, holds per layer (S, z) or S and
the last position's q/k/v row; it replaces the KV cache in `TransformerModel.step`.

GPU path: with CUDA and the optional `fla` package (flash-linear-attention) installed, the gated
delta rule's chunked form may run on its kernels (`use_fla=True`); elsewhere the code here runs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .hooks import HookPoint
from .positions import apply_rope

LINEAR_KINDS = ("linear", "gated_delta")
EPS = 1e-6          # added to linear attention's normaliser (it is > 0: phi > 0)
CHUNK = 32          # positions per chunk in the chunked forms


def feature_map(x):
    """phi(x) = elu(x) + 1: positive everywhere, so the normaliser phi(q).sum phi(k) is > 0."""
    return F.elu(x) + 1


# ---- plain linear attention: three forms -----------------------------------------------------

def causal_linear_attention(q, k, v, eps=EPS):
    """Parallel form. q, k, v (B, H, T, d) -> y (B, H, T, d): row t averages v_s for s <= t,
    weighted by phi(q_t).phi(k_s)."""
    q, k = feature_map(q), feature_map(k)
    scores = (q @ k.transpose(-2, -1)).tril()                 # (B, H, T, T): keys after t get 0
    return (scores @ v) / (scores.sum(-1, keepdim=True) + eps)


def _empty_state(q, v):
    """The linear attention state before any position: S (B, H, d, d_v) and z (B, H, d), zeros."""
    B, H, _, d = q.shape
    return q.new_zeros(B, H, d, v.size(-1)), q.new_zeros(B, H, d)


def linear_attention_recurrent(q, k, v, S=None, z=None, eps=EPS):
    """Recurrent form, one position at a time. q, k, v (B, H, T, d); S (B, H, d, d_v) and z (B, H, d)
    the state after the positions before (None: empty). Returns y (B, H, T, d_v), S, z after the last."""
    T = q.size(2)
    q, k = feature_map(q), feature_map(k)
    if S is None:
        S, z = _empty_state(q, v)
    ys = []
    for t in range(T):
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]       # add phi(k_t) v_t^T first ...
        z = z + k[:, :, t]
        num = (q[:, :, t, :, None] * S).sum(-2)                 # ... then read: phi(q_t)^T S_t  (B, H, d_v)
        den = (q[:, :, t] * z).sum(-1, keepdim=True)            # phi(q_t)^T z_t                 (B, H, 1)
        ys.append(num / (den + eps))
    return torch.stack(ys, dim=2), S, z


def linear_attention_chunked(q, k, v, S=None, z=None, chunk=CHUNK, eps=EPS):
    """Chunked form: the parallel form inside each chunk of `chunk` positions, plus what the state
    (S, z) carries from the chunks before. Same arguments and results as linear_attention_recurrent."""
    T = q.size(2)
    q, k = feature_map(q), feature_map(k)
    if S is None:
        S, z = _empty_state(q, v)
    ys = []
    for a in range(0, T, chunk):
        qc, kc, vc = q[:, :, a:a + chunk], k[:, :, a:a + chunk], v[:, :, a:a + chunk]  # (B, H, C, d)
        scores = (qc @ kc.transpose(-2, -1)).tril()             # (B, H, C, C) inside the chunk
        num = qc @ S + scores @ vc                              # earlier chunks + this one
        den = qc @ z.unsqueeze(-1) + scores.sum(-1, keepdim=True)
        ys.append(num / (den + eps))
        S = S + kc.transpose(-2, -1) @ vc                       # the chunk's phi(k)^T v, added at once
        z = z + kc.sum(2)
    return torch.cat(ys, dim=2), S, z


# ---- the gated delta rule: recurrent and chunked --------------------------------------------

def gated_delta_recurrent(q, k, v, alpha, beta, S=None):
    """q, k (B, H, T, d) with unit-length rows; v (B, H, T, d_v); alpha, beta (B, H, T) in (0, 1);
    S (B, H, d, d_v) or None. Returns y (B, H, T, d_v) and S after the last position."""
    B, H, T, d = q.shape
    if S is None:
        S = q.new_zeros(B, H, d, v.size(-1))
    ys = []
    for t in range(T):
        kt, a, b = k[:, :, t], alpha[:, :, t, None, None], beta[:, :, t, None]
        S = a * S                                               # forget a little
        old = (kt[..., None] * S).sum(-2)                       # what the memory returns for k_t (B, H, d_v)
        S = S + kt[..., None] * (b * (v[:, :, t] - old))[:, :, None, :]  # write the correction
        ys.append((q[:, :, t, :, None] * S).sum(-2))            # read with q_t, after the write
    return torch.stack(ys, dim=2), S


def gated_delta_chunked(q, k, v, alpha, beta, S=None, chunk=CHUNK):
    """gated_delta_recurrent's result, a chunk at a time. Inside a chunk starting from state S0, with
    g_t = alpha_1 ... alpha_t (cumulative decay) and u_t = beta_t (v_t - alpha_t S_{t-1}^T k_t) the
    value actually written, S_t = g_t S0 + sum_{s<=t} (g_t / g_s) k_s u_s^T. Writing that out for u
    gives the lower-triangular system (I + A) U = beta (V - g K S0), A[t, s] = beta_t (g_t/g_s) k_t.k_s
    for s < t: one triangular solve per chunk instead of a loop over its positions."""
    B, H, T, d = q.shape
    if S is None:
        S = q.new_zeros(B, H, d, v.size(-1))
    ys = []
    for a in range(0, T, chunk):
        qc, kc, vc = q[:, :, a:a + chunk], k[:, :, a:a + chunk], v[:, :, a:a + chunk]  # (B, H, C, d)
        bc = beta[:, :, a:a + chunk, None]                      # (B, H, C, 1)
        C = qc.size(2)
        lg = alpha[:, :, a:a + chunk].log().cumsum(-1)          # (B, H, C) log g_t
        diff = lg[..., :, None] - lg[..., None, :]              # (B, H, C, C) log(g_t / g_s)
        seen = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        decay = diff.masked_fill(~seen, float("-inf")).exp()    # g_t / g_s for s <= t, else 0
        g = lg.exp()[..., None]                                 # (B, H, C, 1)
        A = (bc * decay * (kc @ kc.transpose(-2, -1))).tril(-1)  # strictly lower
        eye = torch.eye(C, device=q.device, dtype=q.dtype)
        U = torch.linalg.solve_triangular(eye + A, bc * (vc - g * (kc @ S)), upper=False,
                                          unitriangular=True)   # (B, H, C, d_v) the values written
        ys.append(g * (qc @ S) + (decay * (qc @ kc.transpose(-2, -1))) @ U)
        last = decay[..., -1, :, None]                          # (B, H, C, 1) g_C / g_s
        S = g[..., -1:, :] * S + kc.transpose(-2, -1) @ (last * U)
    return torch.cat(ys, dim=2), S


def fla_available(device) -> bool:
    """True when the optional flash-linear-attention kernels can run here (CUDA and `fla` installed)."""
    if torch.device(device).type != "cuda":
        return False
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except Exception:
        return False
    return True


def gated_delta_fla(q, k, v, alpha, beta, S=None):
    """gated_delta_chunked on flash-linear-attention's CUDA kernel (its layout is (B, T, H, d), its
    decay the log of alpha). Needs fla_available(q.device)."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    def t(x):
        return x.transpose(1, 2).contiguous()
    y, S = chunk_gated_delta_rule(t(q), t(k), t(v), t(alpha.log()), t(beta), scale=1.0, initial_state=S,
                                  output_final_state=True)
    return y.transpose(1, 2), S


# ---- the layer and its state -----------------------------------------------------------------

class RecurrentState:
    """What a linear-attention model carries from one generated token to the next, in place of a
    KV cache: per layer the state (S, z) (plain linear) or S (gated delta), and the last position's
    q/k/v row for the token shift. Its size does not depend on how many tokens were read.

    The same interface as KVCache where TransformerModel.step uses it: pos (positions read), tokens
    (B, pos) the ids read (to slide the window), max_len, head_t, advance(n). Setting pos back to 0,
    which step does when the window of block_size tokens is full and it re-reads the last
    block_size, empties the state.
    """

    def __init__(self, n_layers, batch_size, max_len, device, dtype, head_t):
        self.layers = [None] * n_layers       # per layer: None (nothing read) or a tuple of tensors
        self.max_len = max_len
        self._pos = 0
        self.tokens = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        self.head_t = head_t

    @property
    def pos(self):
        return self._pos

    @pos.setter
    def pos(self, value):
        if value == 0:
            self.layers = [None] * len(self.layers)
        self._pos = value

    def advance(self, n):
        self._pos += n

    def nbytes(self) -> int:
        """Bytes the state holds (the tensors of every layer)."""
        return sum(t.numel() * t.element_size() for layer in self.layers if layer for t in layer)


class LinearAttention(nn.Module):
    """Causal linear attention ("linear") or the gated delta rule ("gated_delta"), multi-head, with
    the softmax layer's qkv and proj (the same names and shapes), a learned token shift (`shift`,
    3E numbers) and, for gated_delta, `gates`: a Linear E -> 2H giving each head's alpha and beta.

    forward(x, rope, cache) as CausalSelfAttention's; cache is a RecurrentState (or None). Several
    positions at once (training, a prompt) run the chunked form, one new token the recurrent form;
    with a cache both continue its state.
    Hook points: hook_q, hook_k, hook_v (B, H, T, hd), after the shift (and for gated_delta after
    rope and the unit-length normalisation), and hook_z (B, T, H, hd).
    """

    def __init__(self, embed_size, n_heads, kind="linear", dropout=0.0, layer_idx=0, use_fla=False):
        super().__init__()
        if kind not in LINEAR_KINDS:
            raise ValueError(f"kind={kind!r} is not a linear attention: use one of {', '.join(LINEAR_KINDS)}")
        self.kind, self.n_heads, self.head_dim = kind, n_heads, embed_size // n_heads
        self.layer_idx, self.use_fla = layer_idx, use_fla
        self.qkv = nn.Linear(embed_size, 3 * embed_size, bias=False)
        self.proj = nn.Linear(embed_size, embed_size, bias=False)
        # each channel of q, k, v: (1 - shift) x this position's + shift x the previous position's
        self.shift = nn.Parameter(torch.full((3 * embed_size,), 0.5))
        if kind == "gated_delta":
            self.gates = nn.Linear(embed_size, 2 * n_heads, bias=True)
            with torch.no_grad():  # start remembering: alpha = sigmoid(3) ~ 0.95; beta = sigmoid(0) = 0.5
                self.gates.bias.copy_(torch.cat([torch.full((n_heads,), 3.0), torch.zeros(n_heads)]))
        self.resid_drop = nn.Dropout(dropout)
        self.hook_q, self.hook_k, self.hook_v, self.hook_z = HookPoint(), HookPoint(), HookPoint(), HookPoint()

    def forward(self, x, rope=None, cache=None):
        """x (B, T, E) -> (B, T, E)."""
        B, T, E = x.shape
        H, hd = self.n_heads, self.head_dim
        state = cache.layers[self.layer_idx] if cache is not None else None
        qkv = self.qkv(x)                                              # (B, T, 3E)
        first = state[-1] if state is not None else qkv.new_zeros(B, 1, 3 * E)  # the row before position 0
        prev = torch.cat([first, qkv[:, :-1]], dim=1)                  # (B, T, 3E) the previous position's
        mixed = qkv + self.shift * (prev - qkv)
        q, k, v = mixed.view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)    # (B, H, T, hd) each
        if self.kind == "linear":
            if rope is not None:
                raise ValueError("linear attention needs positive features (phi > 0) and rope would rotate "
                                 "them: use pos_emb='none', 'learned' or 'sinusoidal' with attention='linear'")
            q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
            S, z = (None, None) if state is None else state[:2]
            if cache is not None and T == 1:
                y, S, z = linear_attention_recurrent(q, k, v, S, z)
            else:
                y, S, z = linear_attention_chunked(q, k, v, S, z)
            new = (S, z)
        else:
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)      # unit-length keys: the delta rule's
            q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
            alpha, beta = torch.sigmoid(self.gates(x)).transpose(1, 2).split(H, dim=1)  # (B, H, T) each
            S = None if state is None else state[0]
            if cache is not None and T == 1:
                y, S = gated_delta_recurrent(q, k, v, alpha, beta, S)
            elif self.use_fla and fla_available(x.device):
                y, S = gated_delta_fla(q, k, v, alpha, beta, S)
            else:
                y, S = gated_delta_chunked(q, k, v, alpha, beta, S)
            new = (S,)
        if cache is not None:
            cache.layers[self.layer_idx] = (*new, qkv[:, -1:])
        z = self.hook_z(y.transpose(1, 2))                             # (B, T, H, hd)
        return self.resid_drop(self.proj(z.reshape(B, T, E)))
