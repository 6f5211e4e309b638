from fractions import Fraction

import pytest
import torch

from picollm_helpers.errors import PicoLLMError
from picollm_helpers.models import KGramMLPSeqModel, LSTMSeqModel, TransformerModel
from picollm_helpers.sampling import (
    P_TOLERANCE,
    Generation,
    generate,
    sample_next,
    sampling_distribution,
    top_k_filter,
    top_p_filter,
)


def kept(logits, p):
    return torch.isfinite(top_p_filter(logits, p))


@pytest.mark.parametrize("p, n", [(0.5, 1), (0.5000005, 1), (0.500002, 2), (0.8, 2), (0.80001, 3), (1.0, 3), (1e-9, 1)])
def test_top_p_boundaries(p, n):
    logits = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    assert kept(logits, p).tolist() == [True] * n + [False] * (3 - n)


def test_top_p_boundary_in_float32_and_any_order():
    probs = torch.tensor([0.2, 0.5, 0.3])
    assert kept(probs.log(), 0.8).tolist() == [False, True, True]  # rounding does not pull in the 0.2
    batch = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]).log()
    assert kept(batch, 0.7).tolist() == [[True, True, False], [False, False, True]]


def boundary_family(steps):
    """Every three-token distribution on a grid of 1/steps (each probability >= 1/steps), in every order,
    with p at each partial sum below 1 of its sorted probabilities (the boundary cases) and 1/(2 steps)
    either side of it. Yields (probabilities as exact fractions, p as an exact fraction)."""
    for a in range(1, steps - 1):
        for b in range(1, steps - a):
            probs = [Fraction(a, steps), Fraction(b, steps), Fraction(steps - a - b, steps)]
            top = sorted(probs, reverse=True)
            for edge in {top[0], top[0] + top[1]}:
                for p in (edge - Fraction(1, 2 * steps), edge, edge + Fraction(1, 2 * steps)):
                    yield probs, p


def exact_nucleus(probs, p):
    """The nucleus in exact arithmetic: the smallest top-n whose mass reaches p (ties: the first in order)."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    n = next(n for n in range(1, len(probs) + 1) if sum(probs[i] for i in order[:n]) >= p)
    return sorted(order[:n])


@pytest.mark.parametrize("steps", [20, 100])
def test_top_p_is_the_exact_rule_on_float32_boundary_cases(steps):
    # float32 logits built as a lesson builds them, torch.tensor([0.05, 0.25, 0.7]).log(): the top-n mass comes
    # out a few 1e-7 off its decimal value, on either side; the filter must still keep what the exact rule keeps
    cases = list(boundary_family(steps))
    for p_value in sorted({p for _, p in cases}):
        group = [probs for probs, p in cases if p == p_value]
        logits = torch.tensor([[float(x) for x in probs] for probs in group]).log()  # (N, 3) float32
        kept_now = torch.isfinite(top_p_filter(logits, float(p_value)))
        for probs, row in zip(group, kept_now):
            assert row.nonzero().flatten().tolist() == exact_nucleus(probs, p_value), (probs, p_value)


def test_boundary_family_reaches_the_rounding():
    # the family is a real test: without the tolerance, float32 rounding decides some of its boundaries
    cases = list(boundary_family(20))
    assert len(cases) == 3 * 342
    wrong = 0
    for probs, p in cases:
        q = torch.tensor([float(x) for x in probs]).log().softmax(-1)  # float32, as the filter's input
        mass = q.sort(descending=True).values.cumsum(0)
        n = int((mass < float(p)).sum()) + 1                         # no tolerance
        wrong += n != len(exact_nucleus(probs, p))
    assert wrong > 0
    assert float(torch.tensor([0.05, 0.25, 0.7]).log().softmax(-1)[2]) != 0.7
    assert kept(torch.tensor([0.05, 0.25, 0.7]).log(), 0.7).tolist() == [False, False, True]
    assert kept(torch.tensor([0.05, 0.25, 0.7]).log(), 0.95).tolist() == [False, True, True]
    assert kept(torch.tensor([0.05, 0.25, 0.7]).log(), 0.96).tolist() == [True, True, True]


def test_top_p_keeps_logit_values():
    logits = torch.tensor([[2.0, 1.0, -1.0, -3.0]])
    out = top_p_filter(logits, 0.9)
    mask = torch.isfinite(out)
    assert mask.tolist() == [[True, True, False, False]]
    assert torch.equal(out[mask], logits[mask]) and (out[~mask] == float("-inf")).all()


@pytest.mark.parametrize("p", [0, 0.0, -0.1, 1.5, float("nan")])
def test_top_p_out_of_range_raises(p):
    with pytest.raises(ValueError, match=r"\(0, 1\]") as err:
        top_p_filter(torch.zeros(4), p)
    assert f"top_p={p!r}" in str(err.value)
    with pytest.raises(ValueError, match="top_p"):
        sample_next(torch.zeros(1, 4), top_p=p)


def test_tiny_p_is_greedy():
    torch.manual_seed(0)
    logits = torch.randn(64, 100)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, top_p=1e-6, generator=g), logits.argmax(-1))
    assert torch.equal(sample_next(logits, greedy=True), logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))


def test_sampling_frequencies_match_renormalised_nucleus():
    probs = torch.tensor([0.06, 0.4, 0.1, 0.25, 0.04, 0.15])
    n = 20000
    logits = probs.log().expand(n, -1)  # (n, V): n independent draws in one batch
    draws = sample_next(logits, top_p=0.75, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(draws, minlength=6).double()
    # nucleus at p=0.75: 0.4 + 0.25 + 0.15 = 0.8 reaches it, 0.4 + 0.25 does not
    nucleus = torch.tensor([0, 0.4, 0, 0.25, 0, 0.15], dtype=torch.float64) / 0.8
    assert counts[nucleus == 0].sum() == 0
    expected = n * nucleus[nucleus > 0]
    chi2 = ((counts[nucleus > 0] - expected) ** 2 / expected).sum().item()
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([2.0, 1.0, 0.0]).expand(5000, -1)
    top = lambda t: (sample_next(logits, temperature=t, generator=torch.Generator().manual_seed(0)) == 0).float().mean()
    assert top(0.3) > top(1.0) > top(3.0)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1)


def test_top_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, False, True]]
    assert torch.equal(top_k_filter(logits, 10), logits)
    draws = sample_next(logits.expand(500, -1), top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(8, 50)
    draw = lambda s: sample_next(logits, top_p=0.9, generator=torch.Generator().manual_seed(s))
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(torch.stack([draw(s) for s in range(5)]), draw(0).expand(5, -1))


# ----- generate


class CharTok:
    chars = "abcdefghijklmnopqrstuvwxyz .,"

    def encode(self, s):
        return [self.chars.index(c) for c in s]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


V = len(CharTok.chars)


def models():
    torch.manual_seed(0)
    return [LSTMSeqModel(V, 16), KGramMLPSeqModel(V, 3, 16, 1),
            TransformerModel(V, 16, 2, 2, block_size=16, pos_emb="rope")]


@pytest.mark.parametrize("model", models(), ids=["lstm", "kgram", "transformer"])
def test_generate_result(model):
    tok = CharTok()
    model.train()
    out = generate(model, tok, "once upon a", 10, top_p=0.9, seed=0)
    assert isinstance(out, Generation) and model.training  # training mode is restored
    assert out.text.startswith("once upon a") and len(out.ids) == 11 + 10
    assert out.ids[:11] == tok.encode("once upon a") and out.text == tok.decode(out.ids)
    assert out.new_ids == out.ids[11:] and out.new_text == out.text[11:] and str(out) == out.text
    again = generate(model, tok, "once upon a", 10, top_p=0.9, seed=0)
    assert again.ids == out.ids
    uncached = generate(model, tok, "once upon a", 10, top_p=0.9, seed=0, use_cache=False)
    assert uncached.ids == out.ids
    many = generate(model, tok, tok.encode("once"), 8, seed=1, num_samples=3)  # ids as prompt
    assert len(many.text) == 3 and all(len(ids) == 12 for ids in many.ids)
    assert len(set(map(tuple, many.ids))) > 1
    assert generate(model, tok, "ab", 0).ids == [0, 1]


def test_generate_empty_prompt_raises():
    model = models()[0]
    with pytest.raises(ValueError, match="empty"):
        generate(model, CharTok(), "", 5)
    with pytest.raises(ValueError, match="empty"):
        generate(model, CharTok(), [], 5)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, CharTok(), "a", 5, top_p=1.5)


def test_generate_with_tiktoken_encoding():
    tiktoken = pytest.importorskip("tiktoken")
    # A tiny BPE-free Encoding: one token per byte, enough to exercise encode_ordinary/decode.
    enc = tiktoken.Encoding("bytes", pat_str=r".", mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={})
    torch.manual_seed(0)
    model = TransformerModel(256, 16, 2, 1, block_size=32)
    out = generate(model, enc, "Once", 5, greedy=True)
    assert out.text.startswith("Once") and len(out.ids) == 4 + 5


def test_top_p_keeps_the_smallest_set_reaching_p_on_full_vocabulary_distributions():
    g = torch.Generator().manual_seed(0)
    V = 50257
    for trial in range(60):
        logits = torch.randn(V, generator=g) * (0.5 + 3.0 * torch.rand(1, generator=g).item())  # float32
        p = float(torch.rand(1, generator=g)) * 0.98 + 0.01
        n_kept = int(kept(logits, p).sum())
        mass = logits.double().softmax(-1).sort(descending=True).values.cumsum(-1)  # mass of the top k+1
        reach = p - P_TOLERANCE                                            # the documented boundary
        assert mass[n_kept - 1] >= reach, (trial, p)                       # the kept set reaches p
        assert n_kept == 1 or mass[n_kept - 2] < reach, (trial, p)         # and no smaller one does


@pytest.mark.parametrize("kw, words", [
    (dict(temperature=float("nan")), "temperature=nan"),
    (dict(temperature=-1.0), "temperature=-1.0"),
    (dict(temperature="1"), "temperature='1'"),
    (dict(top_p="0.9"), "top_p='0.9'"),
    (dict(top_k=2.5), "top_k=2.5"),
    (dict(top_k=True), "top_k=True"),
])
def test_generate_checks_its_sampling_settings_up_front(kw, words):
    model = models()[2]
    with pytest.raises(ValueError) as e:
        generate(model, None, [1, 2, 3], 5, **kw)
    assert words in str(e.value)


# ----- non-finite logits and generate's arguments


@pytest.mark.parametrize("bad, words", [
    (float("nan"), "NaN"),
    (float("inf"), r"\+inf"),
])
def test_top_p_and_sampling_refuse_non_finite_logits(bad, words):
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0]])
    logits[0, 2] = bad                                    # before: a NaN kept, the real top token (1) dropped
    for call in (lambda: top_p_filter(logits, 0.5), lambda: sample_next(logits, greedy=True),
                 lambda: sample_next(logits, top_p=0.9, generator=torch.Generator().manual_seed(0))):
        with pytest.raises(PicoLLMError, match=words):
            call()
    everything_excluded = torch.full((1, 4), float("-inf"))
    for call in (lambda: top_p_filter(everything_excluded, 0.9), lambda: sample_next(everything_excluded)):
        with pytest.raises(PicoLLMError, match="all -inf"):
            call()
    some_excluded = torch.tensor([[float("-inf"), 5.0, 1.0, float("-inf")]])  # -inf from a filter: fine
    assert int(top_p_filter(some_excluded, 0.5).argmax()) == 1 and int(sample_next(some_excluded, greedy=True)) == 1


@pytest.mark.parametrize("kw, words", [
    (dict(max_new_tokens=2.5), "max_new_tokens=2.5 must be a whole number >= 0"),
    (dict(max_new_tokens=True), "max_new_tokens=True"),
    (dict(max_new_tokens=-1), "max_new_tokens=-1"),
    (dict(max_new_tokens=3, num_samples=1.5), "num_samples=1.5 must be a whole number >= 1"),
])
def test_generate_refuses_counts_that_are_not_whole_numbers(kw, words):
    with pytest.raises(PicoLLMError, match=words):
        generate(models()[2], CharTok(), "ab", **kw)


def test_sampling_distribution_is_the_tempered_nucleus_renormalised():
    toy = torch.tensor([0.10, 0.50, 0.05, 0.20, 0.15]).log()
    for t, p, n in [(1.0, 0.9, 4), (0.5, 0.9, 3), (2.0, 0.9, 5), (2.0, 0.5, 2), (1.0, 0.5, 1)]:
        q = sampling_distribution(toy, t, p)
        assert int((q > 0).sum()) == n, (t, p)
        assert torch.allclose(q.sum(), torch.tensor(1.0))
        tempered = (toy / t).softmax(-1)
        assert torch.allclose(q[q > 0], tempered[q > 0] / tempered[q > 0].sum())
    g = torch.Generator().manual_seed(3)
    draws = torch.multinomial(sampling_distribution(toy, 1.0, 0.5).expand(200, -1), 1, generator=g)
    assert set(draws.flatten().tolist()) == {1}  # only dog is in the nucleus at p = 0.5
    with pytest.raises(ValueError, match="temperature=0"):
        sampling_distribution(toy, 0.0, 0.9)
