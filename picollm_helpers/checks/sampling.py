"""Lesson 03's exercises: the nucleus (top-p) filter and the top-k filter."""

import torch

from ..sampling import top_k_filter, top_p_filter
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
