"""Lesson 07's exercise: the previous-token score of attention heads."""

import torch

from ..interp import pattern_scores
from ._core import Case, Check


def previous_token_score(pattern):
    """The kit's reference: pattern (B, H, T, T) -> (H,), each head's mean weight from query q to key q-1
    over the queries that have a previous token (q >= 1) and over the batch."""
    return pattern_scores({"blocks.0.attn.hook_pattern": pattern})["previous_token"][0]


def _causal_softmax(seed, B, H, T, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, H, T, T, generator=g) * sharp
    return scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)


def _prev_head(T):
    p = torch.zeros(T, T)
    p[0, 0] = 1.0
    p[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    return p


def _uniform(T):
    return torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]  # (T, T) each row spread evenly


def _cases():
    return [
        Case("one pure previous-token head (score 1) beside a pure self head (score 0), T=6",
             lambda: torch.stack([_prev_head(6), torch.eye(6)])[None]),
        Case("a uniform head, T=5: query q gives 1/(q+1) to key q-1", lambda: _uniform(5)[None, None]),
        Case("random causal patterns, B=2, H=4, T=8", lambda: _causal_softmax(0, 2, 4, 8)),
        Case("random sharp causal patterns, B=3, H=2, T=12", lambda: _causal_softmax(1, 3, 2, 12, sharp=4.0)),
    ]


check_previous_token_score = Check(
    "previous_token_score", previous_token_score, _cases, atol=1e-6, rtol=1e-5, kit_names=("pattern_scores",))
