import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from picollm_helpers.models import (
    KGramMLPSeqModel,
    LSTMSeqModel,
    RMSNorm,
    TransformerModel,
    build_model,
    kgram_forward_loop,
    param_count_formula,
)
from picollm_helpers.models.transformer import (
    CausalSelfAttention,
    HookPoint,
    KVCache,
    apply_rope,
    rope_cos_sin,
    sinusoidal_embedding,
)
from picollm_helpers.sampling import generate

V = 37
POS_EMBS = ["none", "learned", "sinusoidal", "rope"]


def make(kind, **kw):
    torch.manual_seed(0)
    if kind == "lstm":
        return LSTMSeqModel(V, 16, num_layers=kw.get("num_layers", 2))
    if kind == "kgram":
        return KGramMLPSeqModel(V, k=3, embed_size=16, num_inner_layers=2, chunk_size=kw.get("chunk_size", 1),
                                input_mode=kw.get("input_mode", "embedding"))
    return TransformerModel(V, 16, n_heads=2, n_blocks=2, block_size=kw.get("block_size", 12),
                            pos_emb=kw.get("pos_emb", "learned"), use_post_norm=kw.get("use_post_norm", False))


ALL = [("lstm", {}), ("kgram", {}), ("kgram", {"input_mode": "onehot"}), ("kgram", {"chunk_size": 3})] + [
    ("transformer", {"pos_emb": p}) for p in POS_EMBS] + [("transformer", {"use_post_norm": True})]
IDS = [f"{k}-{'-'.join(map(str, kw.values()))}" for k, kw in ALL]


def randomize_norms(model):
    # RMSNorm weights start at 1; give them values so tests see them used.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RMSNorm):
                m.weight.uniform_(0.5, 1.5)


@pytest.mark.parametrize("kind, kw", ALL, ids=IDS)
def test_shapes_dtypes_and_hidden(kind, kw):
    model = make(kind, **kw)
    idx = torch.randint(0, V, (3, 10))
    logits = model(idx)
    assert logits.shape == (3, 10, V) and logits.dtype == torch.float32
    h = model.hidden(idx)
    assert h.shape == (3, 10, model.lm_head.in_features)
    assert model.lm_head.out_features == V
    torch.testing.assert_close(model.lm_head(h), logits)


@pytest.mark.parametrize("kind, kw", ALL, ids=IDS)
def test_causality(kind, kw):
    model = make(kind, **kw).double()
    idx = torch.randint(0, V, (2, 10))
    base = model(idx)
    for j in (0, 4, 9):
        changed = idx.clone()
        changed[:, j] = (changed[:, j] + 1) % V
        out = model(changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-12)
        assert (out[:, j] - base[:, j]).abs().max() > 1e-6  # the changed token itself is seen


def cfg(**kw):
    base = dict(embed_size=16, kgram_k=3, num_inner_mlp_layers=1, kgram_chunk_size=1, kgram_input="embedding",
                n_heads=2, n_blocks=2, block_size=12, pos_emb="none", use_post_norm=False, lstm_layers=1,
                dropout=0.0)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("kind, c", [
    ("lstm", cfg()), ("lstm", cfg(lstm_layers=3)),
    ("kgram_mlp_seq", cfg()), ("kgram_mlp_seq", cfg(kgram_k=4, num_inner_mlp_layers=0)),
    ("kgram_mlp_seq", cfg(kgram_input="onehot", num_inner_mlp_layers=2)),
    ("transformer", cfg()), ("transformer", cfg(pos_emb="learned")), ("transformer", cfg(pos_emb="rope")),
    ("transformer", cfg(use_post_norm=True, n_blocks=3)),
])
def test_param_count_formula(kind, c):
    model = build_model(kind, c, vocab_size=V)
    assert sum(p.numel() for p in model.parameters()) == param_count_formula(kind, c, vocab_size=V)


def test_build_model_from_runconfig_and_errors():
    from picollm_helpers.config import RunConfig
    c = RunConfig(tinystories_weight=1.0, embed_size=16, n_heads=2, n_blocks=1, block_size=8, use_position_emb=True)
    model = build_model("transformer", c, vocab_size=V)
    assert model.pos_emb == "learned" and model.block_size == 8
    assert sum(p.numel() for p in model.parameters()) == param_count_formula("transformer", c, V)
    assert isinstance(build_model("lstm", c, V), LSTMSeqModel)
    assert isinstance(build_model("kgram_mlp_seq", c, V), KGramMLPSeqModel)
    with pytest.raises(ValueError, match="gru"):
        build_model("gru", c, V)
    with pytest.raises(ValueError, match="alibi"):
        TransformerModel(V, 16, 2, 1, 8, pos_emb="alibi")


def test_weight_tying_is_optional():
    untied = TransformerModel(V, 16, 2, 1, 8)
    tied = TransformerModel(V, 16, 2, 1, 8, tie_weights=True)
    assert tied.lm_head.weight is tied.wte.weight
    n = lambda m: sum(p.numel() for p in m.parameters())  # parameters() counts a shared tensor once
    assert n(untied) - n(tied) == V * 16


@pytest.mark.parametrize("eps", [None, 1e-5])
def test_rmsnorm_matches_torch(eps):
    torch.manual_seed(0)
    ours, ref = RMSNorm(24, eps=eps), torch.nn.RMSNorm(24, eps=eps)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 24) * 3
    torch.testing.assert_close(ours(x), ref(x))


# ----- transformer attention


def record_patterns(model):
    """Hook every block's hook_pattern; returns (patterns list filled by each forward, handles)."""
    seen = []
    handles = [blk.attn.hook_pattern.register_forward_hook(lambda m, args, out: seen.append(out))
               for blk in model.blocks]
    return seen, handles


def test_hook_names_for_every_block():
    model = make("transformer", pos_emb="rope")
    names = [n for n, m in model.named_modules() if isinstance(m, HookPoint)]
    per_block = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern",
                 "attn.hook_z", "hook_resid_mid", "mlp.hook_post", "hook_resid_post"]
    expected = ["hook_embed"] + [f"blocks.{i}.{n}" for i in range(2) for n in per_block] + ["hook_final"]
    assert names == expected  # listed in the order the forward pass reaches them


@pytest.mark.parametrize("pos_emb", POS_EMBS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_explicit_attention_equals_sdpa(pos_emb, dtype, tol):
    # The fused kernel sums in its own order: equal up to float rounding (1e-5 in float32).
    model = make("transformer", pos_emb=pos_emb).to(dtype).eval()
    idx = torch.randint(0, V, (2, 9))
    fused = model(idx)
    seen, handles = record_patterns(model)
    explicit = model(idx)
    for h in handles:
        h.remove()
    torch.testing.assert_close(explicit, fused, rtol=tol, atol=tol)
    assert len(seen) == 2
    for a in seen:
        assert a.shape == (2, 2, 9, 9)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 9, dtype=dtype))
        assert (a.triu(diagonal=1) == 0).all()  # no query looks at a later key
        assert (a[..., torch.ones(9, 9, dtype=torch.bool).tril()] > 0).all()  # earlier keys all get weight


def test_only_a_pattern_hook_leaves_the_fused_path(monkeypatch):
    model = make("transformer", pos_emb="rope").eval()
    idx = torch.randint(0, V, (2, 9))
    base = model(idx)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))

    seen = []
    handles = [m.register_forward_hook(lambda m, args, out: seen.append(out.shape))
               for n, m in model.named_modules() if isinstance(m, HookPoint) and not n.endswith("hook_pattern")]
    assert torch.equal(model(idx), base)  # hooks that return nothing change nothing
    assert len(calls) == 2 and len(seen) == len(handles)  # every hook ran, attention stayed fused
    for h in handles:
        h.remove()

    calls.clear()
    _, handles = record_patterns(model)
    model(idx)
    assert calls == []  # a pattern hook switches both blocks to the explicit softmax
    for h in handles:
        h.remove()
    assert not any(m.active for m in model.modules() if isinstance(m, HookPoint))


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 6, 8, dtype=torch.float64), torch.randn(2, 1, 6, 8, dtype=torch.float64)

    def scores(start):
        cos, sin = rope_cos_sin(torch.arange(start, start + 6), 8, torch.float64)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)

    torch.testing.assert_close(scores(0), scores(37))
    torch.testing.assert_close(scores(0), scores(100_000))
    assert (scores(0) - q @ k.transpose(-1, -2)).abs().max() > 1e-3  # rotation is not a no-op

    # The same through an attention layer: shifted positions give the same pattern.
    attn = CausalSelfAttention(16, 2).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    seen = []
    attn.hook_pattern.register_forward_hook(lambda m, args, out: seen.append(out))
    for s in (0, 5):
        attn(x, rope=rope_cos_sin(torch.arange(s, s + 6), 8, torch.float64))
    torch.testing.assert_close(seen[0], seen[1])


def test_sinusoidal_embedding_formula():
    pe = sinusoidal_embedding(torch.arange(50), 16)
    p, i = 7, 3
    assert pe.shape == (50, 16)
    assert math.isclose(pe[p, 2 * i], math.sin(p / 10000 ** (2 * i / 16)), abs_tol=1e-12)
    assert math.isclose(pe[p, 2 * i + 1], math.cos(p / 10000 ** (2 * i / 16)), abs_tol=1e-12)


@pytest.mark.parametrize("pos_emb", POS_EMBS)
def test_embed_scale_puts_tokens_at_the_sinusoids_scale(pos_emb):
    from picollm_helpers.config import RunConfig
    from picollm_helpers.interp import run_with_cache

    E = 64
    torch.manual_seed(0)
    plain = TransformerModel(V, E, n_heads=4, n_blocks=1, block_size=12, pos_emb=pos_emb, embed_scale=False)
    torch.manual_seed(0)
    scaled = TransformerModel(V, E, n_heads=4, n_blocks=1, block_size=12, pos_emb=pos_emb, embed_scale=True)
    # the token signal: rows at std 1/sqrt(E), times sqrt(E) -> per-coordinate RMS ~1 (a sinusoid's is 1/sqrt(2))
    assert abs(scaled.wte.weight.std().item() - E ** -0.5) < 0.01 and abs(plain.wte.weight.std().item() - 0.02) < 0.002
    idx = torch.randint(0, V, (2, 10))
    _, cache = run_with_cache(scaled, idx, names=["hook_embed"])
    pos = torch.arange(10)
    expected = scaled.wte(idx) * math.sqrt(E)
    if pos_emb == "learned":
        expected = expected + scaled.wpe(pos)
    elif pos_emb == "sinusoidal":
        expected = expected + sinusoidal_embedding(pos, E).float()
    torch.testing.assert_close(cache["hook_embed"], expected)
    assert 0.8 < (scaled.wte(idx) * math.sqrt(E)).pow(2).mean().sqrt().item() < 1.2
    # Off by default except with sinusoidal positions, whose sinusoid would drown GPT-2-scale tokens; off, the
    # config dictionary lacks it (so the model-cache keys of the other encodings do not change).
    sinusoidal = pos_emb == "sinusoidal"
    assert TransformerModel(V, E, n_heads=4, n_blocks=1, block_size=12, pos_emb=pos_emb).embed_scale is sinusoidal
    cfg = RunConfig(embed_size=E, n_heads=4, n_blocks=1, block_size=12, pos_emb=pos_emb, embed_scale=False)
    assert "embed_scale" not in cfg.to_dict() and not build_model("transformer", cfg, V).embed_scale
    assert build_model("transformer", cfg.replace(embed_scale=None), V).embed_scale is sinusoidal
    on = cfg.replace(embed_scale=True)
    assert on.to_dict()["embed_scale"] is True and RunConfig.from_dict(on.to_dict()) == on
    built = build_model("transformer", on, V)
    assert built.embed_scale and "embed_scale=True" in repr(built)
    assert "embed_scale" not in repr(plain)


def reference_transformer(m, idx):
    """The transformer written out with plain tensor ops (learned positions)."""
    def rms(x, w):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps) * w

    B, T = idx.shape
    H, hd = m.n_heads, m.head_dim
    x = m.wte.weight[idx] + m.wpe.weight[:T]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for blk in m.blocks:
        def attn(h, blk=blk):
            q, k, v = (h @ blk.attn.qkv.weight.T).chunk(3, dim=-1)
            q, k, v = (t.reshape(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
            w = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(future, float("-inf")).softmax(-1)
            return (w @ v).transpose(1, 2).reshape(B, T, H * hd) @ blk.attn.proj.weight.T

        def mlp(h, blk=blk):
            return F.gelu(h @ blk.mlp.fc.weight.T) @ blk.mlp.proj.weight.T

        if m.use_post_norm:
            x = rms(x + attn(x), blk.norm1.weight)
            x = rms(x + mlp(x), blk.norm2.weight)
        else:
            x = x + attn(rms(x, blk.norm1.weight))
            x = x + mlp(rms(x, blk.norm2.weight))
    if not m.use_post_norm:
        x = rms(x, m.norm_f.weight)
    return x @ m.lm_head.weight.T


def test_pre_and_post_norm_match_reference_and_differ():
    pre = make("transformer", pos_emb="learned").double()
    randomize_norms(pre)
    post = make("transformer", pos_emb="learned", use_post_norm=True).double()
    missing, unexpected = post.load_state_dict(pre.state_dict(), strict=False)
    assert missing == [] and unexpected == ["norm_f.weight"]  # post-norm has no final norm
    idx = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(pre(idx), reference_transformer(pre, idx))
        torch.testing.assert_close(post(idx), reference_transformer(post, idx))
        assert (pre(idx) - post(idx)).abs().max() > 1e-3


def test_long_inputs_forward():
    idx = torch.randint(0, V, (1, 30))  # block_size is 12
    for pos_emb in ("none", "sinusoidal", "rope"):
        assert make("transformer", pos_emb=pos_emb)(idx).shape == (1, 30, V)  # formula positions extrapolate
    with pytest.raises(ValueError, match="block_size=12"):
        make("transformer", pos_emb="learned")(idx)


# ----- generation state: cached == uncached


class CharTok:
    """A toy tokenizer over V characters."""
    chars = "".join(chr(ord("a") + i) for i in range(26)) + " .,!?0123456"

    def encode(self, s):
        return [self.chars.index(c) for c in s]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


@pytest.mark.parametrize("kind, kw", ALL, ids=IDS)
def test_step_logits_equal_full_forward(kind, kw):
    model = make(kind, **kw).double().eval()
    idx = torch.randint(0, V, (2, 11))
    full = model(idx)  # (2, 11, V)
    state = model.init_state(2)
    logits, state = model.step(idx[:, :5], state)  # a 5-token prompt
    torch.testing.assert_close(logits, full[:, 4])
    logits, state = model.step(idx[:, 5:8], state)  # several tokens after a cache
    torch.testing.assert_close(logits, full[:, 7])
    for t in range(8, 11):  # then one at a time
        logits, state = model.step(idx[:, t:t + 1], state)
        torch.testing.assert_close(logits, full[:, t])


@pytest.mark.parametrize("kind, kw", ALL, ids=IDS)
@pytest.mark.parametrize("prompt_len", [4, 30])
def test_greedy_generation_cached_equals_uncached(kind, kw, prompt_len, capsys):
    # block_size is 12: 4 + 20 tokens slides the window, a 30-token prompt is cropped.
    model = make(kind, **kw).double()
    prompt = torch.randint(0, V, (prompt_len,)).tolist()
    a = generate(model, CharTok(), prompt, 20, greedy=True, use_cache=True)
    b = generate(model, CharTok(), prompt, 20, greedy=True, use_cache=False)
    assert a.ids == b.ids and len(a.ids) == prompt_len + 20 and a.ids[:prompt_len] == prompt
    if kind == "transformer" and prompt_len > 12:
        assert "block_size=12" in capsys.readouterr().out


@pytest.mark.parametrize("pos_emb", POS_EMBS)
@pytest.mark.parametrize("explicit", [False, True], ids=["fused", "explicit"])
def test_step_one_token_at_a_time_equals_forward_at_every_position(pos_emb, explicit):
    model = make("transformer", pos_emb=pos_emb).double().eval()  # block_size 12
    idx = torch.randint(0, V, (2, 20))
    full = model(idx[:, :12])  # (2, 12, V)
    if explicit:  # the explicit softmax path must read the cache the same way
        record_patterns(model)
    state = model.init_state(2)
    for t in range(20):
        logits, state = model.step(idx[:, t:t + 1], state)
        # past block_size the window slides: the last 12 tokens, positions 0..11 again
        want = full[:, t] if t < 12 else model(idx[:, t - 11:t + 1])[:, -1]
        torch.testing.assert_close(logits, want, rtol=1e-10, atol=1e-10)
        assert state.pos == min(t + 1, 12)


def test_kv_cache_update_appends_and_returns_all():
    cache = KVCache(2, 1, 2, 6, 4, "cpu", torch.float32, head_t=torch.zeros(4, V))
    k1, v1, k2, v2 = torch.randn(4, 1, 2, 3, 4).unbind(0)  # 3 positions, then 2 more
    k, v = cache.update(0, k1, v1)
    assert torch.equal(k, k1) and torch.equal(v, v1)
    cache.advance(3)
    k, v = cache.update(0, k2[:, :, :2], v2[:, :, :2])
    assert torch.equal(k, torch.cat([k1, k2[:, :, :2]], dim=2)) and torch.equal(v, torch.cat([v1, v2[:, :, :2]], 2))
    assert (cache.k[1] == 0).all()  # each layer has its own buffers


def test_kv_cache_is_preallocated():
    model = make("transformer", pos_emb="rope")
    state = model.init_state(3)
    assert len(state.k) == 2 and state.k[0].shape == (3, 2, 12, 8) and state.pos == 0
    _, state = model.step(torch.zeros(3, 5, dtype=torch.long), state)
    assert state.pos == 5 and state.k[0].shape == (3, 2, 12, 8)


# ----- k-gram


def test_kgram_onehot_equals_dense_onehot():
    model = make("kgram", input_mode="onehot").double()
    idx = torch.randint(0, V, (2, 7))
    padded = F.pad(idx, (2, 0), value=model.pad_id)  # k=3
    windows = torch.stack([padded[:, t:t + 3] for t in range(7)], dim=1)  # (2, 7, 3)
    dense = F.one_hot(windows, V).flatten(2).double()  # (2, 7, 3*V): the literal one-hot input
    h = model.inner(F.silu(model.in_proj(dense)))
    torch.testing.assert_close(model(idx), model.lm_head(h))
    # and the same gradient for the first layer's weight
    grad_dense, = torch.autograd.grad(model.lm_head(h).sum(), model.in_proj.weight)
    grad_gather, = torch.autograd.grad(model(idx).sum(), model.in_proj.weight)
    torch.testing.assert_close(grad_gather, grad_dense)


@pytest.mark.parametrize("input_mode", ["embedding", "onehot"])
def test_kgram_loop_reference_equals_vectorized(input_mode):
    model = make("kgram", input_mode=input_mode)
    idx = torch.randint(0, V, (3, 6))
    torch.testing.assert_close(kgram_forward_loop(model, idx), model(idx), rtol=1e-5, atol=1e-5)
    chunked = make("kgram", input_mode=input_mode, chunk_size=4)
    torch.testing.assert_close(chunked(idx), model(idx))


def test_kgram_depends_on_last_k_tokens_only():
    model = make("kgram")
    idx = torch.randint(0, V, (1, 10))
    changed = idx.clone()
    changed[0, 5] = (changed[0, 5] + 1) % V
    diff = (model(idx) - model(changed)).abs().amax(-1)[0]  # (T,)
    assert (diff[5:8] > 0).all() and (diff[:5] == 0).all() and (diff[8:] == 0).all()
