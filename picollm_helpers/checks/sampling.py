"""Lesson 03's exercises: the nucleus (top-p) filter, the top-k filter, and the distribution a token
is drawn from (temperature, then the nucleus, renormalised)."""

import torch

from ..sampling import sampling_distribution, top_k_filter, top_p_filter
from ._core import Case, Check


def _random_logits(seed, shape, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _top_p_cases():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    cases = [
        # Hand-made: the nucleus must include the token whose probability crosses p.
        Case("p=0.6 on probabilities [0.5, 0.3, 0.15, 0.05]: the second token crosses 0.6, so two are kept",
             lambda: (probs.log(), 0.6)),
        Case("p=0.5 on the same: the first token reaches 0.5 exactly, so one is kept",
             lambda: (probs.log(), 0.5)),
        Case("p=0.05, tiny: only the most probable token", lambda: (probs.log(), 0.05)),
        Case("p=1: every token is kept", lambda: (probs.log(), 1.0)),
        Case("tokens not in sorted order: [0.05, 0.5, 0.15, 0.3], p=0.7",
             lambda: (torch.tensor([0.05, 0.5, 0.15, 0.3]).log(), 0.7)),
        Case("a batch of 2 rows, each with its own nucleus, p=0.9",
             lambda: (torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.05, 0.1, 0.8]]).log(), 0.9)),
        Case("logits, not log-probabilities: [2.0, 1.0, 0.0, -1.0] (softmax first), p=0.8",
             lambda: (torch.tensor([2.0, 1.0, 0.0, -1.0]), 0.8)),
        # The boundary in float32, as torch.tensor([...]).log() builds it: a mass within 1e-6 of p reaches p
        # (the lesson's rule), whichever way rounding moved it. Each case fails a filter without that slack.
        Case("float32 [0.05, 0.25, 0.7], p=0.7: 0.7 reaches 0.7 (its float32 softmax is 0.69999999), one kept",
             lambda: (torch.tensor([0.05, 0.25, 0.7]).log(), 0.7)),
        Case("float32 [0.05, 0.1, 0.85], p=0.95: 0.85 + 0.1 reaches 0.95 (float32 rounding aside), two kept",
             lambda: (torch.tensor([0.05, 0.1, 0.85]).log(), 0.95)),
        Case("float32 [0.15, 0.15, 0.7], p=0.85: 0.7 + 0.15 reaches 0.85 (float32 rounding aside), two kept",
             lambda: (torch.tensor([0.15, 0.15, 0.7]).log(), 0.85)),
        Case("float32 [0.5, 0.3, 0.2], p=0.80001: the top two fall 1e-5 short of p, so all three are kept",
             lambda: (torch.tensor([0.5, 0.3, 0.2]).log(), 0.80001)),
    ]
    cases += [Case(f"random logits of shape {shape}, p={p}", lambda s=seed, sh=shape, p=p: (_random_logits(s, sh), p))
              for seed, (shape, p) in enumerate([((50,), 0.9), ((3, 100), 0.5), ((2, 4, 30), 0.95),
                                                 ((1000,), 0.99), ((5, 257), 0.3)])]
    return cases


check_top_p_filter = Check(
    "top_p_filter", top_p_filter, _top_p_cases, atol=0.0, rtol=0.0, kit_names=("top_p_filter",))


def _top_k_cases():
    cases = [
        Case("k=2 of [1.0, 3.0, 2.0, 0.0]: keeps 3.0 and 2.0", lambda: (torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)),
        Case("k=1: greedy, only the largest", lambda: (torch.tensor([0.5, -1.0, 2.5, 2.0]), 1)),
        Case("k larger than the vocabulary: everything is kept", lambda: (torch.tensor([0.1, 0.2, 0.3]), 10)),
        Case("a batch of 2 rows, k=2, each row its own top 2",
             lambda: (torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]), 2)),
    ]
    cases += [Case(f"random logits of shape {shape}, k={k}", lambda s=seed, sh=shape, k=k: (_random_logits(s, sh), k))
              for seed, (shape, k) in enumerate([((50,), 5), ((3, 100), 20), ((2, 4, 30), 1)], start=10)]
    return cases


check_top_k_filter = Check(
    "top_k_filter", top_k_filter, _top_k_cases, atol=0.0, rtol=0.0, kit_names=("top_k_filter",))


def _distribution_cases():
    toy = torch.tensor([0.10, 0.50, 0.05, 0.20, 0.15]).log()  # lesson 03's five words
    cases = [
        Case("the five words of section 1, temperature 1, p=0.9: the nucleus renormalised",
             lambda: (toy.clone(), 1.0, 0.9)),
        Case("the same at temperature 0.5: sharper, so fewer tokens reach 0.9", lambda: (toy.clone(), 0.5, 0.9)),
        Case("the same at temperature 2: flatter, so more tokens are needed", lambda: (toy.clone(), 2.0, 0.9)),
        Case("temperature 2, p=0.5: the nucleus is taken after the temperature (one token at T=1, two at T=2)",
             lambda: (toy.clone(), 2.0, 0.5)),
        Case("temperature 0.7, p=1: no filter, only the temperature", lambda: (toy.clone(), 0.7, 1.0)),
        Case("a batch of 2 rows, temperature 1.5, p=0.8",
             lambda: (torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 1.0]]), 1.5, 0.8)),
    ]
    cases += [Case(f"random logits of shape {shape}, temperature {t}, p={p}",
                   lambda s=seed, sh=shape, t=t, p=p: (_random_logits(s, sh), t, p))
              for seed, (shape, t, p) in enumerate([((50,), 0.8, 0.9), ((3, 100), 1.3, 0.5), ((2, 4, 30), 1.0, 0.95)],
                                                   start=20)]
    return cases


def _distribution_observe(impl, logits, temperature, p):
    out = impl(logits, temperature, p)
    return out.double() if isinstance(out, torch.Tensor) else out  # any float dtype will do


check_sampling_distribution = Check(
    "sampling_distribution", sampling_distribution, _distribution_cases, observe=_distribution_observe,
    atol=1e-6, rtol=1e-5, kit_names=("sampling_distribution",))
