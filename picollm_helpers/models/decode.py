"""Fast greedy/sampled decoding for TransformerModel: the same tokens as `model.step`, in fewer operations.

Lesson 04 teaches the readable KV-cache step (`TransformerModel.step`): every module called as
written, the cache sliced to the positions filled so far. At batch 1 a token costs little
arithmetic (reading the weights once dominates), so what the readable step spends beyond that is
the fixed cost of its ~100 small operations: each goes through Python, the dispatcher and, on a
CPU, a fork and join of the thread pool. This module computes the same one-token step with about
half as many, larger operations, from weights prepared once per generation:

- q, k and v of all heads come from one (B, E) @ (E, 3E) product with the weight transposed once
  (a row-streaming product, as LMHead.decode explains), and so do the MLP's two layers and the
  output projection; the projections add the residual in the same call (torch.baddbmm);
- RMSNorm is one fused call (F.rms_norm: the same definition, eps = the dtype's eps);
- position embeddings and rope's angles are looked up in tables computed once, with the same
  functions the readable path calls (so the same values);
- the new key and value are written into the preallocated cache with one copy each;
- on a CPU, a model whose weights fit in STREAM_BYTES runs on one thread (syncing a thread pool
  per small operation costs more than a second core gains); a larger one splits every block's
  product into one part per thread (_parts, _mm), so that all cores read weights at once: reading
  them is then what a token costs (decode_threads);
- the output layer, most of what a token reads at a GPT-2 vocabulary, is kept as blocks of whole
  rows, HEAD_PARTS_PER_THREAD per thread, each output a dot product of one contiguous row with the
  hidden state (_rows, _rows_mm): the layout in which it is read as fast as a plain sum over it.

At batch 1 on a CPU, where a C compiler is at hand, even these are too many: the step then runs as
one compiled call per token, models/decode_native.c (see decode_native.py: the same computation,
0.84-0.91x the time to read the weights once where the eager step below takes 1.3-1.9x, on two
AVX2 cores). FastState.native holds it; the eager step below is what runs without it, at batch 2 to 8,
and under `decode_native.disabled()`.

Anything this step does not cover goes through the readable `model.step` unchanged: the prompt
(several tokens at once), a full window (block_size positions: the readable step slides it), and a
model with a hook registered on any hook point (hooks must see the activations they ask for).
`decode_fn(model, batch_size)` returns the pair generate() uses: a step function and its state.

torch.compile: the one-token step can also be compiled with a static shape (the whole cache and a
mask instead of a slice): `decode_fn(..., compile=True)` runs `static_step_one` under torch.compile.
It is not faster here. Inductor turns a batched product with a single row or column (every
product at batch 1) into its own reduction loop, fused with the norm or GELU before it, and that
loop reads the weights below the memory's speed; the products it leaves to the library are
separate calls, as in the eager step, and the static cache makes attention read all max_len
positions. On two AVX2 cores, for the benchmark's 61 MiB model: ~10 ms per token compiled against
~2 ms eager in the column layout the blocks use; 2.1 ms against 1.7 ms eager with the output layer
in row parts; after 4-10 s of compiling. generate() never compiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..timing import flop_params
from .decode_native import NativeStep
from .transformer import HookPoint, KVCache, TransformerModel, rope_cos_sin, sinusoidal_embedding


def _fast_kind(model) -> bool:
    """True for a softmax TransformerModel: the models the fast step computes (a linear attention's
    fixed-size state steps through its own readable model.step)."""
    return isinstance(model, TransformerModel) and getattr(model, "attention", "softmax") == "softmax"


def _hooked(model) -> bool:
    """True when any hook point of the model has a hook (the readable step must run then)."""
    return any(m.active for m in model.modules() if isinstance(m, HookPoint))


class FastState(KVCache):
    """A KV cache (the readable step's own, so both steps can share it) with the weights the fast
    step reads, prepared once per generation: per block (norm1 weight, qkv^T (E, 3E), proj^T (E, E),
    norm2 weight, fc^T (E, 4E), mlp proj^T (4E, E)); the position table (max_len, E) for learned and
    sinusoidal positions; rope's (cos, sin) tables (max_len, hd/2)."""

    def __init__(self, model: TransformerModel, batch_size, device, dtype, parts=1, threads=None, native=True):
        super().__init__(model.n_blocks, batch_size, model.n_heads, model.block_size, model.head_dim,
                         device, dtype, head_t=model.lm_head.transposed(device, dtype))
        self.threads = threads      # run the fast step on this many threads (None: the caller's)
        self.compiled = None        # a compiled static_step_one, or None: the eager fast step
        self.vocab = model.vocab_size
        # batch 1 on a CPU: decode_native.c's one call per token, where it can be built (see decode_native)
        self.native = NativeStep.create(model, self, threads or 1) \
            if native and NativeStep.supports(model, batch_size, dtype) else None
        if self.native is not None:
            return  # it reads the model's weights in place: none of the tables below

        mats = [m.weight for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj)]
        block_parts = parts if all(m.size(0) % parts == 0 for m in mats) else 1  # residual adds need whole parts

        def t(w):
            return _parts(w.detach().t().to(device=device, dtype=dtype), block_parts)

        def w(p):
            return p.detach().to(device=device, dtype=dtype)
        self.layers = [(w(b.norm1.weight), t(b.attn.qkv.weight), t(b.attn.proj.weight),
                        w(b.norm2.weight), t(b.mlp.fc.weight), t(b.mlp.proj.weight)) for b in model.blocks]
        self.norm_f = None if model.use_post_norm else w(model.norm_f.weight)
        pos = torch.arange(model.block_size, device=device)  # every position the window can hold
        self.pos_table = None
        if model.pos_emb == "learned":
            self.pos_table = w(model.wpe.weight)
        elif model.pos_emb == "sinusoidal":
            self.pos_table = sinusoidal_embedding(pos, model.embed_size).to(dtype)
        self.rope = rope_cos_sin(pos, model.head_dim, dtype) if model.pos_emb == "rope" else None
        self.wte = w(model.wte.weight)
        self.head = _rows(model.lm_head.weight.detach().to(device=device, dtype=dtype),
                          HEAD_PARTS_PER_THREAD * parts)  # (P, V/P, E): the output layer, in row parts


def _parts(w_t, parts):
    """A (K, N) weight as `parts` contiguous column blocks, stacked (P, K, ceil(N/P)); the last is
    padded with zero columns. One part is a view of w_t (no copy); see _mm for why parts."""
    if parts == 1:
        return w_t.contiguous().unsqueeze(0)
    K, N = w_t.shape
    n = -(-N // parts)
    out = w_t.new_zeros(parts, K, n)
    for p in range(parts):
        block = w_t[:, p * n:(p + 1) * n]
        out[p, :, :block.size(1)] = block
    return out


def _mm(x, w, add=None):
    """x (B, K) @ w, a weight in parts (P, K, n) -> (B, P * n), plus add (B, P * n) when given.

    One batched product: each part is one (B, K) @ (K, n) product streaming its own contiguous
    rows, and the P parts run on P threads at once. At batch 1 a token's products are
    matrix-vector products, limited by how fast the weights are read; a single product split by
    the BLAS library scaled poorly, whole parts on separate cores read the weights ~1.4x faster on
    two cores (measured). The residual add rides along (baddbmm)."""
    P, K, n = w.shape
    B = x.size(0)
    xs = x.unsqueeze(0).expand(P, B, K)
    y = torch.bmm(xs, w) if add is None else torch.baddbmm(add.view(B, P, n).transpose(0, 1), xs, w)
    return y.transpose(0, 1).reshape(B, P * n)  # a view at batch 1


HEAD_PARTS_PER_THREAD = 4  # the output layer's row parts per thread (see _rows_mm)


def _rows(w, parts):
    """A Linear's (N, K) weight as `parts` blocks of whole rows, stacked (P, ceil(N/P), K), the last
    padded with zero rows: one copy, the padded weight viewed in blocks. See _rows_mm."""
    N, K = w.shape
    n = -(-N // parts)
    return F.pad(w, (0, 0, 0, parts * n - N)).view(parts, n, K)


def _rows_mm(x, w):
    """x (B, K) @ w^T, a weight in row parts (P, n, K) -> (B, P * n): the output layer's product.

    Each output is the dot product of one contiguous weight row with x. The output layer is most of
    what a token reads (V x E, far beyond the caches), and in this layout, with a few parts per
    thread, it is read as fast as a plain sum over it (two AVX2 cores, V=50257, E=256: 39-42 GB/s
    with 2-8 parts against 38 GB/s for the sum; 35 GB/s as _parts' column blocks, 24 GB/s as one
    x @ W^T, 10 GB/s with torch.mv, F.linear, or this layout in a single part). The blocks' small
    products keep _parts' layout, which is the faster one for them (measured)."""
    P, n, K = w.shape
    B = x.size(0)
    y = torch.bmm(w, x.t().unsqueeze(0).expand(P, K, B))  # (P, n, B)
    return y.permute(2, 0, 1).reshape(B, P * n)  # a view at batch 1


def _rope1(x, cos, sin):
    """apply_rope for one position: x (B, H, hd), cos and sin (hd/2,)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def fast_step_one(model: TransformerModel, idx, state: FastState):
    """One new token per sequence, idx (B, 1), at position state.pos < max_len -> logits (B, V).

    The same computation as model.step(idx, state) for that case, in fewer operations: one call of
    decode_native.c where the state holds it (batch 1 on a CPU), else the eager step below."""
    if state.native is not None:
        logits = state.native.step(int(idx[0, 0]), state.pos)
        state.advance(1)
        state.tokens = torch.cat([state.tokens, idx], dim=1)
        return logits
    B = idx.size(0)
    E, H, hd = model.embed_size, model.n_heads, model.head_dim
    pos = state.pos
    x = state.wte[idx[:, 0]]  # (B, E)
    if model.embed_scale:
        x = x * model.embed_mult
    if state.pos_table is not None:
        x = x + state.pos_table[pos]
    rope = (state.rope[0][pos], state.rope[1][pos]) if state.rope is not None else None
    eps = torch.finfo(x.dtype).eps
    end = pos + 1
    post = model.use_post_norm
    threads = torch.get_num_threads()
    if state.threads and state.threads < threads:
        torch.set_num_threads(state.threads)
    try:
        x = _blocks_one(model, x, state, pos, rope, eps, post, B, E, H, hd, end)
        state.advance(1)
        state.tokens = torch.cat([state.tokens, idx], dim=1)
        if state.norm_f is not None:
            x = F.rms_norm(x, (E,), state.norm_f, eps)
        return _rows_mm(x, state.head)[:, :state.vocab]  # (B, V)
    finally:
        torch.set_num_threads(threads)


def _blocks_one(model, x, state, pos, rope, eps, post, B, E, H, hd, end):
    for layer, (n1, qkv_t, proj_t, n2, fc_t, mproj_t) in enumerate(state.layers):
        h = x if post else F.rms_norm(x, (E,), n1, eps)
        qkv = _mm(h, qkv_t).view(B, 3, H, hd)  # (B, 3, H, hd)
        q, k, v = qkv.unbind(1)  # each (B, H, hd)
        if rope is not None:
            q, k = _rope1(q, *rope), _rope1(k, *rope)
        state.k[layer].select(2, pos).copy_(k)
        state.v[layer].select(2, pos).copy_(v)
        y = F.scaled_dot_product_attention(q.unsqueeze(2), state.k[layer][:, :, :end],
                                           state.v[layer][:, :, :end])  # (B, H, 1, hd)
        y = y.reshape(B, E)  # heads side by side, as the readable step's z.reshape
        if post:
            x = F.rms_norm(_mm(y, proj_t, x), (E,), n1, eps)
            x = F.rms_norm(_mm(F.gelu(_mm(x, fc_t)), mproj_t, x), (E,), n2, eps)
        else:
            x = _mm(y, proj_t, x)  # x + attn
            x = _mm(F.gelu(_mm(F.rms_norm(x, (E,), n2, eps), fc_t)), mproj_t, x)  # x + mlp
    return x


def fast_step(model: TransformerModel, idx, state: FastState):
    """model.step's contract ((B, T_new) -> (logits of the last position (B, V), state)): one token
    with room in the window takes the fast step (compiled when the state holds a compiled one),
    anything else the readable one."""
    if idx.size(1) == 1 and state.pos < state.max_len:
        if state.compiled is None:
            return fast_step_one(model, idx, state), state
        logits = state.compiled(model, idx, state, torch.tensor(state.pos, device=idx.device))
        state.advance(1)
        state.tokens = torch.cat([state.tokens, idx], dim=1)
        return logits, state
    return model.step(idx, state)


ONE_THREAD_BATCH = 8  # up to this many sequences, a token's operations are too small to share out
STREAM_BYTES = 16 * 2 ** 20  # weights a token reads beyond which its products are split over the cores


def decode_threads(model, batch_size, fast=True):
    """The thread count generate() runs its token loop at, for a transformer's fast step on a CPU at
    batch <= ONE_THREAD_BATCH (else None: the caller's).

    1 while the weights a token reads fit in STREAM_BYTES: each operation is then small, and syncing
    a thread pool around it costs more than a second core gains (on a busy 2-core machine, 2 threads
    made a token 3-15x slower). Beyond that, torch's thread count: reading the weights is what a
    token costs, one core reads memory at ~0.6-0.8x of what all cores read, and the step splits each
    product into that many parts, one per thread (see _mm; a 61 MiB model on two AVX2 cores: 2.9 ms
    per token on one thread, 2.1 ms on two, measured)."""
    if fast and _fast_kind(model) and model.wte.weight.device.type == "cpu" \
            and batch_size <= ONE_THREAD_BATCH and not _hooked(model):
        weight_bytes = flop_params(model) * model.wte.weight.element_size()
        return 1 if weight_bytes <= STREAM_BYTES else torch.get_num_threads()
    return None


_COMPILED = {}  # one compiled static step per process: torch.compile caches its graphs per shape


def _compiled_static_step():
    """static_step_one under torch.compile (Inductor; its C++ backend on a CPU), or None with one
    note where torch.compile is unavailable (no C++ compiler, an unsupported platform)."""
    if "step" not in _COMPILED:
        try:
            _COMPILED["step"] = torch.compile(static_step_one, dynamic=False)
        except Exception as e:  # torch.compile itself refuses (e.g. an unsupported Python)
            print(f"note: torch.compile is unavailable ({type(e).__name__}: {e}); decoding runs eagerly")
            _COMPILED["step"] = None
    return _COMPILED["step"]


def decode_fn(model, batch_size, fast=True, compile=False):
    """(step, state) for generate(): step(idx, state) -> (logits (B, V), state).

    fast=True and a TransformerModel without hooks: the fast step on a FastState. Otherwise
    (another model, a hook on some hook point, or fast=False): the model's own readable step and state.
    On a CPU at batch <= ONE_THREAD_BATCH the fast step runs on decode_threads' count (1 for a
    model of up to STREAM_BYTES of weights, else all threads, each product split in that many
    parts); generate() runs its whole token loop so.
    compile=True (only when asked: compiling takes ~10 s on two cores, see the module's note)
    runs the one-token step under torch.compile, falling back to the eager fast step with one note
    if compiling fails."""
    if not (fast and _fast_kind(model) and not _hooked(model)):
        return model.step, model.init_state(batch_size)
    w = model.wte.weight
    threads = decode_threads(model, batch_size)
    state = FastState(model, batch_size, w.device, w.dtype, parts=threads or 1, threads=threads, native=not compile)
    if compile:
        state.compiled = _compiled_static_step()

    def step(idx, s):
        try:
            return fast_step(model, idx, s)
        except Exception as e:
            if s.compiled is None:
                raise
            print(f"note: the compiled decode step failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:100]});"
                  " decoding runs eagerly")
            s.compiled = _COMPILED["step"] = None
            return fast_step(model, idx, s)
    return step, state


def static_step_one(model: TransformerModel, idx, state: FastState, pos):
    """fast_step_one with static shapes, for torch.compile: pos is a 0-d int64 tensor (so a new
    position is new data, not a new graph), the new key and value are written with index_copy_, and
    attention reads the whole cache with a mask (keys after pos hidden) instead of a slice."""
    B = idx.size(0)
    E, H, hd = model.embed_size, model.n_heads, model.head_dim
    x = state.wte[idx[:, 0]]  # (B, E)
    if model.embed_scale:
        x = x * model.embed_mult
    if state.pos_table is not None:
        x = x + state.pos_table.index_select(0, pos.view(1))
    rope = None
    if state.rope is not None:
        rope = (state.rope[0].index_select(0, pos.view(1)), state.rope[1].index_select(0, pos.view(1)))
    visible = (torch.arange(state.max_len, device=idx.device) <= pos).view(1, -1)  # (1, max_len): filled
    eps = torch.finfo(x.dtype).eps
    post = model.use_post_norm
    for layer, (n1, qkv_t, proj_t, n2, fc_t, mproj_t) in enumerate(state.layers):
        h = x if post else F.rms_norm(x, (E,), n1, eps)
        q, k, v = _mm(h, qkv_t).view(B, 3, H, hd).unbind(1)  # each (B, H, hd)
        if rope is not None:
            q, k = _rope1(q, *rope), _rope1(k, *rope)
        state.k[layer].index_copy_(2, pos.view(1), k.unsqueeze(2))
        state.v[layer].index_copy_(2, pos.view(1), v.unsqueeze(2))
        y = F.scaled_dot_product_attention(q.unsqueeze(2), state.k[layer], state.v[layer],
                                           attn_mask=visible).reshape(B, E)  # (B, E)
        if post:
            x = F.rms_norm(_mm(y, proj_t, x), (E,), n1, eps)
            x = F.rms_norm(_mm(F.gelu(_mm(x, fc_t)), mproj_t, x), (E,), n2, eps)
        else:
            x = _mm(y, proj_t, x)
            x = _mm(F.gelu(_mm(F.rms_norm(x, (E,), n2, eps), fc_t)), mproj_t, x)
    if state.norm_f is not None:
        x = F.rms_norm(x, (E,), state.norm_f, eps)
    return _rows_mm(x, state.head)[:, :state.vocab]  # (B, V)
