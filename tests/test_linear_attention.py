"""Linear attention and the gated delta rule (models/linear_attention.py), the attention choice of
the transformer, and the associative-recall task (recall.py)."""

import pytest
import torch
import torch.nn.functional as F

from picollm_helpers import RunConfig, build_model, generate
from picollm_helpers.config import IGNORE_INDEX
from picollm_helpers.errors import ConfigError
from picollm_helpers.models import param_count_formula
from picollm_helpers.models.linear_attention import (
    RecurrentState,
    causal_linear_attention,
    fla_available,
    gated_delta_chunked,
    gated_delta_fla,
    gated_delta_recurrent,
    linear_attention_chunked,
    linear_attention_recurrent,
)
from picollm_helpers.recall import recall_batch, recall_vocab_size, train_recall

ATTENTIONS = ("softmax", "linear", "gated_delta")


def _qkv(seed, B=2, H=3, T=37, d=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, d, generator=g, dtype=dtype) for _ in range(3)]


def _gates(seed, B=2, H=3, T=37, low=0.0):
    g = torch.Generator().manual_seed(seed + 7)
    alpha = low + (1 - low) * torch.rand(B, H, T, generator=g, dtype=torch.float64)
    return alpha.clamp_min(1e-3), torch.rand(B, H, T, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_the_three_forms_of_linear_attention_agree(chunk):
    q, k, v = _qkv(0)
    y_par = causal_linear_attention(q, k, v)
    y_rec, S, z = linear_attention_recurrent(q, k, v)
    y_chk, S2, z2 = linear_attention_chunked(q, k, v, chunk=chunk)
    assert torch.allclose(y_par, y_rec, atol=1e-12) and torch.allclose(y_par, y_chk, atol=1e-12)
    assert torch.allclose(S, S2, atol=1e-10) and torch.allclose(z, z2, atol=1e-10)


def test_linear_attention_is_causal_and_a_weighted_mean_of_the_values():
    q, k, v = _qkv(1)
    y = causal_linear_attention(q, k, v)
    v2 = v.clone()
    v2[:, :, 20:] += 5.0                                 # change the future
    k2 = k.clone()
    k2[:, :, 20:] -= 3.0
    assert torch.allclose(causal_linear_attention(q, k2, v2)[:, :, :20], y[:, :, :20], atol=1e-12)
    assert torch.allclose(y[:, :, 0], v[:, :, 0], atol=1e-5)          # position 0 sees itself only
    assert (y <= v.cummax(2).values + 1e-5).all() and (y >= v.cummin(2).values - 1e-5).all()  # eps: ~1e-6


@pytest.mark.parametrize("chunk,low", [(1, 0.5), (8, 0.5), (16, 0.0), (64, 0.9)])
def test_the_gated_delta_rules_chunked_form_equals_the_recurrent_one(chunk, low):
    q, k, v = _qkv(2)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    alpha, beta = _gates(2, low=low)                     # low=0.0: decays down to 1e-3 (log-space must hold)
    y_rec, S = gated_delta_recurrent(q, k, v, alpha, beta)
    y_chk, S2 = gated_delta_chunked(q, k, v, alpha, beta, chunk=chunk)
    assert torch.isfinite(y_chk).all()
    assert torch.allclose(y_rec, y_chk, atol=1e-10) and torch.allclose(S, S2, atol=1e-10)


def test_the_delta_rule_overwrites_a_key_where_plain_linear_attention_averages():
    d = 4
    k = torch.zeros(1, 1, 3, d, dtype=torch.float64)
    k[..., 0] = 1.0                                      # one key, written three times
    v = torch.tensor([1.0, 2.0, 7.0], dtype=torch.float64).view(1, 1, 3, 1).expand(1, 1, 3, d)
    ones = torch.ones(1, 1, 3, dtype=torch.float64)
    y, _ = gated_delta_recurrent(k, k, v, ones, ones)
    assert torch.allclose(y[0, 0, -1], v[0, 0, -1])      # the last value, exactly
    y_lin = causal_linear_attention(k * 50, k * 50, v)   # phi > 0 everywhere: the values are averaged
    assert not torch.allclose(y_lin[0, 0, -1], v[0, 0, -1], atol=0.5)


def _model(attention, block_size=24, pos_emb="learned", seed=1):
    cfg = RunConfig(embed_size=32, n_heads=4, n_blocks=2, block_size=block_size, attention=attention,
                    pos_emb=pos_emb)
    torch.manual_seed(seed)
    m = build_model("transformer", cfg, vocab_size=50)
    with torch.no_grad():                                # weights far from init: confident, distinct tokens
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.eval(), cfg


@pytest.mark.parametrize("attention,pos_emb", [(a, p) for a in ATTENTIONS for p in ("learned", "none", "rope")
                                                if (a, p) != ("linear", "rope")])  # refused: see below
def test_cached_and_uncached_generation_give_the_same_tokens(attention, pos_emb):
    m, _ = _model(attention, pos_emb=pos_emb)
    for n_new in (5, 40):                                # 40: past block_size=24, the window slides
        cached = generate(m, None, [3, 1, 4, 1, 5], n_new, greedy=True, use_cache=True)
        plain = generate(m, None, [3, 1, 4, 1, 5], n_new, greedy=True, use_cache=False)
        assert cached.ids == plain.ids
        assert len(set(cached.new_ids)) > 1              # not a constant stream that would agree trivially


@pytest.mark.parametrize("attention", ["linear", "gated_delta"])
def test_the_step_continues_the_state_and_matches_the_forward(attention):
    m, _ = _model(attention, block_size=64)
    idx = torch.randint(0, 50, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m(idx)                                    # (2, 30, V)
        state = m.init_state(2)
        assert isinstance(state, RecurrentState)
        logits, state = m.step(idx[:, :10], state)
        assert torch.allclose(logits, full[:, 9], atol=1e-4)
        sizes = {state.nbytes()}
        for t in range(10, 30):
            logits, state = m.step(idx[:, t:t + 1], state)
            assert torch.allclose(logits, full[:, t], atol=1e-4)
            sizes.add(state.nbytes())
    assert len(sizes) == 1                               # a fixed-size state: it does not grow with the context
    assert state.pos == 30


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_every_attention_trains(attention):
    m, cfg = _model(attention, seed=3)
    m.train()
    assert param_count_formula("transformer", cfg, 50) == sum(p.numel() for p in m.parameters())
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x = torch.randint(0, 50, (8, 24), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]                  # it memorises the fixed batch


def test_the_kits_train_runs_each_attention_and_its_checkpoint_rebuilds_it(tmp_path):
    from picollm_helpers import load_checkpoint, train
    from picollm_helpers.batching import TokenDataset
    from picollm_helpers.tokenizer import CompactTokenizer, get_tokenizer

    lines = [" ".join(str((i * j) % 17) for j in range(12)) for i in range(40)]
    base = get_tokenizer()
    tok = CompactTokenizer(base, [i for line in lines for i in base.encode_ordinary(line)])
    seqs = [tok.encode_ordinary(line)[:17] for line in lines]
    lengths = torch.tensor([len(s) for s in seqs])
    tokens = torch.tensor([t for s in seqs for t in s], dtype=torch.int32)
    ds = TokenDataset(tokens, torch.cumsum(lengths, 0) - lengths, lengths, "lines", tok.eot_token)
    for attention in ("linear", "gated_delta"):
        cfg = RunConfig(tinystories_weight=0.0, input_files=("lines.txt",), block_size=16, embed_size=16,
                        n_heads=2, n_blocks=1, batch_size=8, epochs=1, max_steps_per_epoch=3, attention=attention,
                        prompt="1 2", max_new_tokens=4, top_p_values=(1.0,), device_id="cpu",
                        output_dir=str(tmp_path / attention), profile="smoke")
        torch.manual_seed(0)
        m = build_model("transformer", cfg, vocab_size=tok.n_vocab)
        h = train(m, cfg, ds, ds, tok, name="transformer")
        assert h.steps == 3 and h.final_test_loss == h.final_test_loss   # finite, not NaN
        ckpt = next((tmp_path / attention).rglob("*.pt"))
        m2, info = load_checkpoint(ckpt)
        assert info["config"].attention == attention and m2.attention == attention
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_an_unknown_attention_and_linear_with_rope_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="attention='cosine'.*softmax, linear, gated_delta"):
        RunConfig(attention="cosine")
    with pytest.raises(ConfigError, match="rope"):
        RunConfig(attention="linear", pos_emb="rope")
    assert RunConfig(attention="gated_delta", pos_emb="rope").attention == "gated_delta"
    assert "attention" not in RunConfig().to_dict()      # the default keeps old cache keys and checkpoints
    assert RunConfig(attention="linear").to_dict()["attention"] == "linear"


def test_recall_batches_score_only_the_answers_and_the_answer_is_the_pairs_value():
    n_keys, n_values = 20, 30
    x, y = recall_batch(5, 16, n_keys=n_keys, n_values=n_values, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 10)
    assert int(x.max()) < recall_vocab_size(n_keys, n_values) and int(y.max()) < recall_vocab_size(n_keys, n_values)
    pair_end, query_end = n_keys * n_values, n_keys * n_values + n_keys
    for b in range(16):
        pairs = dict(divmod(int(t), n_values) for t in x[b, :5])          # key -> value
        assert len(pairs) == 5 and all(int(t) < pair_end for t in x[b, :5])
        assert (y[b, :5] == IGNORE_INDEX).all()                           # the pairs are not scored
        queried = [int(t) - pair_end for t in x[b, 5:]]
        assert sorted(queried) == sorted(pairs)                           # every key asked once
        for key, answer in zip(queried, y[b, 5:].tolist()):
            assert answer == query_end + pairs[key]
    with pytest.raises(ValueError, match="n_pairs=40"):
        recall_batch(40, 2, n_keys=20, n_values=30)


def test_softmax_attention_learns_a_small_recall_task():
    run = train_recall("softmax", 4, seed=0, steps=150, embed_size=32, n_heads=2, n_keys=8, n_values=8,
                       eval_sequences=256)
    assert run.accuracy > 0.9                            # chance is 1/8


@pytest.mark.skipif(not fla_available("cuda"), reason="needs CUDA and the optional flash-linear-attention package")
def test_the_fla_kernel_agrees_with_the_kits_gated_delta_rule():
    q, k, v = (t.float().cuda() for t in _qkv(4, B=2, H=2, T=128, d=64))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    alpha, beta = (t.float().cuda() for t in _gates(4, B=2, H=2, T=128, low=0.8))
    y_kit, S_kit = gated_delta_chunked(q, k, v, alpha, beta)
    y_fla, S_fla = gated_delta_fla(q, k, v, alpha, beta)
    assert torch.allclose(y_kit, y_fla.float(), atol=2e-3, rtol=2e-3)
    assert torch.allclose(S_kit, S_fla.float(), atol=2e-3, rtol=2e-3)
