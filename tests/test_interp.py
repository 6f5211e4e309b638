import math

import torch
import torch.nn as nn

from picollm_helpers.interp import head_scores, induction_scores, pattern_scores, top_attended, top_heads


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
    """A one-layer 'model' whose only head is a perfect induction head, the other a previous-token head."""

    block_size = 64

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, return_attn=False):
        B, T = idx.shape
        ind = torch.zeros(B, T, T)
        for b in range(B):
            for q in range(T):
                earlier = [k for k in range(q) if idx[b, k] == idx[b, q]]
                ind[b, q, earlier[-1] + 1 if earlier else 0] = 1.0
        prev = _one_hot_rows([0] + list(range(T - 1)), T).expand(B, T, T)
        return torch.zeros(B, T, 5), {"blocks.0.attn": torch.stack([ind, prev], dim=1)}


def test_induction_score_separates_an_induction_head():
    model = _InductionOracle()
    scores = induction_scores(model, torch.arange(1000), seq_len=10, batch=4)
    assert scores.shape == (1, 2)
    assert scores[0, 0] == 1.0 and scores[0, 1] < 0.01
    full = head_scores(model, torch.tensor([[1, 2, 3, 1, 2, 3]]), token_pool=torch.arange(1000))
    assert set(full) == {"previous_token", "first_token", "self", "entropy", "induction"}
    assert full["previous_token"][0, 1] == 1.0


def test_top_attended_lists_each_query():
    a = torch.tensor([[1.0, 0, 0], [0.25, 0.75, 0], [0.5, 0.2, 0.3]])
    out = top_attended(a, ["A", "B", "C"], k=2)
    assert out[0] == [("A", 1.0)]
    assert [t for t, _ in out[1]] == ["B", "A"] and [t for t, _ in out[2]] == ["A", "C"]
