import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from picollm_helpers import run_with_cache, run_with_hooks
from picollm_helpers.interp import (
    ablate_head,
    attention_patterns,
    duplicate_token_scores,
    head_scores,
    hook_names,
    induction_from_patterns,
    induction_scores,
    logit_lens,
    pattern_scores,
    repeated_tokens,
    top_attended,
    top_heads,
    uniform_pattern,
)
from picollm_helpers.models import TransformerModel
from picollm_helpers.models.transformer import HookPoint


def _one_hot_rows(cols, T):
    """(T, T) pattern where query q attends fully to key cols[q]."""
    a = torch.zeros(T, T)
    a[torch.arange(T), torch.as_tensor(cols)] = 1.0
    return a


def test_pattern_scores_recognise_hand_made_heads():
    T = 6
    prev = _one_hot_rows([0] + list(range(T - 1)), T)
    sink = _one_hot_rows([0] * T, T)
    self_ = torch.eye(T)
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    attn = {"blocks.1.attn": torch.stack([uniform, sink])[None],  # (1, H=2, T, T)
            "blocks.0.attn": torch.stack([prev, self_])[None]}
    s = pattern_scores(attn)
    assert s["previous_token"].shape == (2, 2)
    # Layer order follows the block index, not the dict order.
    assert s["previous_token"][0, 0] == 1.0 and s["self"][0, 1] == 1.0 and s["first_token"][1, 1] == 1.0
    assert s["previous_token"][0, 1] == 0.0
    assert torch.isclose(s["entropy"][1, 0], torch.tensor([math.log(q + 1) for q in range(1, T)]).mean())
    assert s["entropy"][0, 0] < 1e-6
    best = top_heads(s, k=1)
    assert best["previous_token"][0][:2] == (0, 0)
    assert best["first_token"][0][:2] == (1, 1)
    assert best["entropy"][0][2] < 1e-6  # the most focused head, not the most spread out


class _InductionOracle(nn.Module):
    """A one-layer 'model' whose only head is a perfect induction head, the other a previous-token head.

    Its patterns pass through a hook point named like a transformer's, so attention_patterns finds them.
    """

    block_size = 64

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].attn = nn.Module()
        self.blocks[0].attn.hook_pattern = HookPoint()

    def forward(self, idx):
        B, T = idx.shape
        ind = torch.zeros(B, T, T)
        for b in range(B):
            for q in range(T):
                earlier = [k for k in range(q) if idx[b, k] == idx[b, q]]
                ind[b, q, earlier[-1] + 1 if earlier else 0] = 1.0
        prev = _one_hot_rows([0] + list(range(T - 1)), T).expand(B, T, T)
        self.blocks[0].attn.hook_pattern(torch.stack([ind, prev], dim=1))
        return torch.zeros(B, T, 5)


def test_induction_score_separates_an_induction_head():
    model = _InductionOracle()
    scores = induction_scores(model, torch.arange(1000), seq_len=10, batch=4)
    assert scores.shape == (1, 2)
    assert scores[0, 0] == 1.0 and scores[0, 1] < 0.01
    full = head_scores(model, torch.tensor([[1, 2, 3, 1, 2, 3]]), token_pool=torch.arange(1000))
    assert set(full) == {"previous_token", "first_token", "self", "entropy", "induction", "duplicate_token"}
    assert full["previous_token"][0, 1] == 1.0
    # The induction head reads the token AFTER the earlier copy, not the copy: no duplicate-token score.
    assert full["duplicate_token"][0, 0] < 0.05
    per = head_scores(model, torch.tensor([[1, 2, 3, 1, 2, 3]] * 3), token_pool=torch.arange(1000),
                      induction_batch=5, per_prompt=True)
    assert per["induction"].shape == (5, 1, 2) and per["previous_token"].shape == (3, 1, 2)
    torch.testing.assert_close(per["induction"].mean(0), induction_scores(model, torch.arange(1000), batch=5))


def test_duplicate_token_score_on_hand_made_heads():
    idx = torch.tensor([[5, 7, 5, 9, 7, 7]])  # queries 2, 4, 5 have earlier copies of their token
    T = idx.size(1)
    dup = torch.zeros(T, T)
    dup[0, 0] = dup[1, 1] = dup[3, 3] = 1.0  # no earlier copy: attend to itself
    dup[2, 0] = 1.0
    dup[4, 1] = 1.0
    dup[5, 1] = dup[5, 4] = 0.5  # two earlier 7s share the attention
    prev = _one_hot_rows([0] + list(range(T - 1)), T)
    attn = {"blocks.0.attn": torch.stack([dup, prev, uniform_pattern(T)])[None]}  # (1, 3, T, T)
    s = duplicate_token_scores(attn, idx)
    assert s.shape == (1, 3)
    assert s[0, 0] == 1.0
    assert s[0, 1] == pytest.approx(1 / 3)  # the previous-token head lands on a copy only at query 5
    # uniform: query 2 gives 1/3 to its one copy, query 4 1/5, query 5 2/6
    assert s[0, 2] == pytest.approx((1 / 3 + 1 / 5 + 2 / 6) / 3)
    assert torch.isnan(duplicate_token_scores(attn, torch.tensor([[1, 2, 3, 4, 5, 6]]))).all()


def test_scores_of_exact_and_uniform_patterns_on_repeated_tokens():
    n = 8
    idx = repeated_tokens(torch.arange(1000), n, batch=2, seed=3)
    assert idx.shape == (2, 2 * n) and torch.equal(idx[:, :n], idx[:, n:])
    assert torch.equal(idx, repeated_tokens(torch.arange(1000), n, batch=2, seed=3))  # seeded
    T = 2 * n
    ind = torch.zeros(T, T)
    ind[:n] = torch.eye(T)[:n]
    ind[torch.arange(n, T), torch.arange(1, n + 1)] = 1.0  # q reads the token after its earlier copy
    u = uniform_pattern(T)
    attn = {"blocks.0.attn": torch.stack([ind, u])[None].expand(2, 2, T, T)}
    s = induction_from_patterns(attn, n)
    assert s[0, 0] == 1.0
    assert s[0, 1] == pytest.approx(float((1 / torch.arange(n + 1, T + 1)).mean()))
    assert induction_from_patterns(attn, n, per_prompt=True).shape == (2, 1, 2)
    with pytest.raises(ValueError, match="seq_len"):
        induction_from_patterns(attn, n + 1)


def test_top_attended_lists_each_query():
    a = torch.tensor([[1.0, 0, 0], [0.25, 0.75, 0], [0.5, 0.2, 0.3]])
    out = top_attended(a, ["A", "B", "C"], k=2)
    assert out[0] == [("A", 1.0)]
    assert [t for t, _ in out[1]] == ["B", "A"] and [t for t, _ in out[2]] == ["A", "C"]


# ----- hooks on a real transformer

V = 41


def tiny(pos_emb="rope", use_post_norm=False, **kw):
    torch.manual_seed(0)
    return TransformerModel(V, 16, n_heads=4, n_blocks=2, block_size=16, pos_emb=pos_emb,
                            use_post_norm=use_post_norm, **kw)


def no_hooks_left(model):
    return not any(m.active for m in model.modules() if isinstance(m, HookPoint))


@pytest.mark.parametrize("use_post_norm", [False, True], ids=["pre", "post"])
def test_run_with_cache_shapes(use_post_norm):
    model = tiny(use_post_norm=use_post_norm)
    idx = torch.randint(0, V, (3, 10))
    logits, cache = run_with_cache(model, idx)
    assert set(cache) == set(hook_names(model)) and len(cache) == 2 + 2 * 9
    B, T, E, H, hd = 3, 10, 16, 4, 4
    want = {"hook_embed": (B, T, E), "hook_final": (B, T, E)}
    for i in range(2):
        want |= {f"blocks.{i}.hook_resid_pre": (B, T, E), f"blocks.{i}.hook_resid_mid": (B, T, E),
                 f"blocks.{i}.hook_resid_post": (B, T, E), f"blocks.{i}.mlp.hook_post": (B, T, 4 * E),
                 f"blocks.{i}.attn.hook_pattern": (B, H, T, T), f"blocks.{i}.attn.hook_z": (B, T, H, hd)}
        want |= {f"blocks.{i}.attn.hook_{c}": (B, H, T, hd) for c in "qkv"}
    assert {n: tuple(a.shape) for n, a in cache.items()} == want
    torch.testing.assert_close(logits, model(idx), rtol=1e-5, atol=1e-5)
    # The stream is one stream: block 0's output is block 1's input, lm_head reads hook_final.
    assert torch.equal(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(model.lm_head(cache["hook_final"]), logits)
    if use_post_norm:  # no final norm: the last block's output is what lm_head reads
        assert torch.equal(cache["hook_final"], cache["blocks.1.hook_resid_post"])


def test_attention_patterns_come_from_hook_pattern():
    model = tiny()
    idx = torch.randint(0, V, (2, 8))
    _, cache = run_with_cache(model, idx, lambda n: n.endswith("hook_pattern"))
    attn = attention_patterns(model, idx[1])  # (T,) works too: a batch of one
    assert list(attn) == ["blocks.0.attn", "blocks.1.attn"]
    for name, a in attn.items():
        assert a.shape == (1, 4, 8, 8)
        torch.testing.assert_close(a[0], cache[f"{name}.hook_pattern"][1])


def test_zero_ablating_a_head_equals_zeroing_its_proj_columns():
    model = tiny(pos_emb="learned").double()
    idx = torch.randint(0, V, (2, 12))
    layer, head, hd = 1, 2, 4
    ablated = run_with_hooks(model, idx, ablate_head(layer, head))
    edited = copy.deepcopy(model)
    with torch.no_grad():  # attn.proj reads head h from input columns h*hd .. (h+1)*hd
        edited.blocks[layer].attn.proj.weight[:, head * hd:(head + 1) * hd] = 0.0
    torch.testing.assert_close(ablated, edited(idx), rtol=1e-12, atol=1e-12)
    assert (ablated - model(idx)).abs().max() > 1e-4  # the head mattered


def test_mean_ablation_replaces_the_head_by_a_constant_and_changes_the_loss():
    model = tiny().double()
    x, y = torch.randint(0, V, (4, 12)), torch.randint(0, V, (4, 12))
    loss = lambda logits: F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    layer, head, hd = 0, 1, 4
    _, ref = run_with_cache(model, x, [f"blocks.{layer}.attn.hook_z"])
    avg = ref[f"blocks.{layer}.attn.hook_z"][:, :, head].mean(dim=(0, 1))  # (hd,)
    mean_ablated = run_with_hooks(model, x, ablate_head(layer, head, how="mean", mean=avg))
    torch.testing.assert_close(run_with_hooks(model, x, ablate_head(layer, head, how="mean")), mean_ablated)
    # A constant head output is a bias on attn.proj: zero its columns, add W[:, cols] @ avg.
    edited = copy.deepcopy(model)
    old = edited.blocks[layer].attn.proj
    new = nn.Linear(16, 16, bias=True).double()
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.weight[:, head * hd:(head + 1) * hd] = 0.0
        new.bias.copy_(old.weight[:, head * hd:(head + 1) * hd] @ avg)
    edited.blocks[layer].attn.proj = new
    torch.testing.assert_close(mean_ablated, edited(x), rtol=1e-12, atol=1e-12)
    base, zero = loss(model(x)), loss(run_with_hooks(model, x, ablate_head(layer, head)))
    assert abs(loss(mean_ablated) - base) > 1e-6 and abs(loss(mean_ablated) - zero) > 1e-6


def test_run_with_hooks_replaces_and_cleans_up():
    model = tiny()
    model.train()
    idx = torch.randint(0, V, (2, 8))
    seen = {}

    def look(act, name):
        seen[name] = (act.requires_grad, model.training)

    out = run_with_hooks(model, idx, {"blocks.0.attn.hook_q": look, "blocks.1.hook_resid_mid": look})
    assert seen == {"blocks.0.attn.hook_q": (False, False), "blocks.1.hook_resid_mid": (False, False)}
    assert model.training and no_hooks_left(model)  # training flag back, nothing left registered
    torch.testing.assert_close(out, run_with_hooks(model, idx, {}))  # returning None changes nothing
    uniform = run_with_hooks(model, idx, {"blocks.0.attn.hook_pattern":  # replace the pattern itself
                                          lambda a, name: torch.ones_like(a).tril() / torch.arange(1, 9)[:, None]})
    assert (uniform - out).abs().max() > 1e-4

    def boom(act, name):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_with_hooks(model, idx, {"blocks.0.hook_resid_pre": look, "blocks.1.attn.hook_pattern": boom})
    assert model.training and no_hooks_left(model)
    with pytest.raises(IndexError):  # the forward itself fails: token id V is out of the vocabulary
        run_with_cache(model, torch.full((1, 4), V))
    assert model.training and no_hooks_left(model)


def test_unknown_hook_names_raise_with_the_list():
    model = tiny()
    with pytest.raises(ValueError, match=r"'blocks.7.attn.hook_z'.*blocks\.\{i\}\.attn\.hook_pattern.*i = 0\.\.1"):
        run_with_cache(model, torch.zeros(1, 4, dtype=torch.long), ["hook_embed", "blocks.7.attn.hook_z"])
    with pytest.raises(ValueError, match="hook_resid_pre"):
        run_with_hooks(model, torch.zeros(1, 4, dtype=torch.long), {"blocks.0.attn": lambda a, n: None})
    with pytest.raises(ValueError, match="how="):
        ablate_head(0, 0, how="random")
    assert no_hooks_left(model)


def test_cache_and_names_follow_the_forward_order():
    model = tiny()
    _, cache = run_with_cache(model, torch.randint(0, V, (1, 5)))
    assert list(cache) == hook_names(model)  # hooks fire in the order hook_names lists them


@pytest.mark.parametrize("use_post_norm", [False, True])
def test_logit_lens_reads_every_stream_and_ends_at_the_model_logits(use_post_norm):
    model = tiny(use_post_norm=use_post_norm).eval()
    idx = torch.randint(V, (2, 7), generator=torch.Generator().manual_seed(1))
    lens = logit_lens(model, idx)
    assert lens.shape == (len(model.blocks) + 1, 2, 7, V) and not lens.requires_grad
    torch.testing.assert_close(lens[-1], run_with_hooks(model, idx, {}))         # the last row is the model
    _, cache = run_with_cache(model, idx, ["hook_embed"])
    with torch.no_grad():
        torch.testing.assert_close(lens[0], model.lm_head(model.norm_f(cache["hook_embed"])))
    assert no_hooks_left(model)


# ----------------------------------------------------------------------------------------------
# Token roles

def test_role_windows_map_character_spans_to_the_tokens_that_cover_them():
    from picollm_helpers import get_tokenizer, stories
    from picollm_helpers.interp import role_windows

    tok = get_tokenizer()
    labelled = stories.generate_role_stories(30, seed=5)
    ids, spans = role_windows(tok, labelled, 64)
    long_enough = [(t, r) for t, r in labelled if len(tok.encode_ordinary(t)) >= 64]
    assert ids.shape == (len(long_enough), 64) and len(spans) == len(long_enough)
    for (text, roles), row, window in zip(long_enough, ids, spans):
        assert row.tolist() == tok.encode_ordinary(text)[:64]
        assert window and all(stop <= 64 for _, stop, *_ in window)
        for first, stop, role, a, b in window:
            words = tok.decode(row[first:stop].tolist())
            assert words.strip() == text[a:b], (words, text[a:b], role)   # a token carries its leading space
            assert (role, a, b) in {(r, x, y) for x, y, r in roles}
        assert len(window) == sum(1 for x, y, r in roles if len(tok.encode_ordinary(text[:y])) <= 64)


def test_role_pairs_link_each_query_to_its_words():
    from picollm_helpers.interp import RELATIONS, role_pairs

    # "Lily was sad. She saw Lily's kite" by hand, in token positions (one token per word here)
    window = [(0, 1, "hero name", 0, 4), (0, 1, "subject", 0, 4), (1, 2, "verb", 5, 8),
              (4, 5, "hero pronoun", 14, 17), (4, 5, "subject", 14, 17), (5, 6, "verb", 18, 21),
              (6, 7, "hero name", 22, 26), (7, 8, "friend pronoun", 27, 29)]
    pairs = role_pairs([window], 10)
    assert set(pairs) == set(RELATIONS)
    on = {name: sorted(map(tuple, p[0].nonzero().tolist())) for name, p in pairs.items()}
    assert on["verb -> its subject"] == [(1, 0), (5, 4)]
    assert on["pronoun -> its name"] == [(4, 0)]            # the friend pronoun has no friend's name to find
    assert on["hero's verb -> first mention"] == [(5, 0)]   # "Lily was": its subject IS the first mention


def test_pair_attention_scores_exact_heads_one_and_leaves_out_queries_without_keys():
    from picollm_helpers.interp import pair_attention

    T = 6
    pairs = torch.zeros(2, T, T, dtype=torch.bool)
    pairs[0, 3, 1] = pairs[0, 5, 2] = pairs[1, 4, 0] = True
    exact = torch.zeros(2, T, T)
    exact[0, 3, 1] = exact[0, 5, 2] = exact[1, 4, 0] = 1.0
    uniform = uniform_pattern(T).expand(2, T, T)
    both = torch.stack([exact, uniform], 1)[:, None]                       # (B, L=1, H=2, T, T)
    got = pair_attention(both, pairs)
    assert got.shape == (1, 2)
    assert got[0, 0] == 1.0
    assert math.isclose(float(got[0, 1]), (1 / 4 + 1 / 6 + 1 / 5) / 3, rel_tol=1e-6)
    assert pair_attention(both, pairs.roll(1, 0))[0, 0] == 0.0             # another window's pairs: none hit
    with pytest.raises(ValueError, match="no query"):
        pair_attention(both, torch.zeros_like(pairs))
