"""Lesson 07's exercises: the head scores (previous-token, induction, duplicate-token), a mean-ablation
through run_with_hooks, and the logit lens."""

import torch

from ..interp import ablate_head, duplicate_token_scores, induction_from_patterns, logit_lens, pattern_scores
from ..interp import run_with_hooks as _run_with_hooks
from ..models.transformer import TransformerModel
from ._core import Case, Check


def previous_token_score(pattern):
    """The kit's reference: pattern (B, H, T, T) -> (H,), each head's mean weight from query q to key q-1
    over the queries that have a previous token (q >= 1) and over the batch."""
    return pattern_scores({"blocks.0.attn.hook_pattern": pattern})["previous_token"][0]


def induction_score(pattern, seq_len):
    """The kit's reference: pattern (B, H, 2n, 2n) on n = seq_len tokens shown twice -> (H,), each head's mean
    weight from a query q of the second copy on key q - n + 1 (the token after the query's earlier copy)."""
    return induction_from_patterns({"blocks.0.attn": pattern}, seq_len)[0]


def duplicate_token_score(pattern, idx):
    """The kit's reference: pattern (B, H, T, T), idx (B, T) -> (H,), the attention a query puts on the earlier
    positions holding its own token, summed, averaged over every query (of every prompt) that has one."""
    return duplicate_token_scores({"blocks.0.attn": pattern}, idx)[0]


def mean_ablated_logits(model, idx, layer, heads):
    """The kit's reference: logits (B, T, V) of model on idx with heads (a list) of block `layer` mean-ablated:
    each head's output in hook_z replaced by its average over the batch and the positions."""
    return _run_with_hooks(model, idx, ablate_head(layer, list(heads), how="mean"))


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


def _second_copy_head(n, shift):
    """(2n, 2n) on n tokens shown twice: the first copy reads itself; query q of the second copy reads
    key q - n + shift (shift 0: its earlier copy, a duplicate-token head; shift 1: the token after
    that copy, an induction head)."""
    p = torch.eye(2 * n)
    q = torch.arange(n, 2 * n)
    p[q, q] = 0.0
    p[q, q - n + shift] = 1.0
    return p


def _induction_head(n):
    return _second_copy_head(n, shift=1)


def _duplicate_head(n):
    return _second_copy_head(n, shift=0)


def _ids(seed, B, T, vocab):
    return torch.randint(vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def _tiny_model(seed, n_blocks=2, n_heads=4):
    torch.manual_seed(seed)
    return TransformerModel(vocab_size=23, embed_size=16, n_heads=n_heads, n_blocks=n_blocks, block_size=16,
                            pos_emb="learned").eval()


def _prev_cases():
    return [
        Case("one pure previous-token head (score 1) beside a pure self head (score 0), T=6",
             lambda: torch.stack([_prev_head(6), torch.eye(6)])[None]),
        Case("a uniform head, T=5: query q gives 1/(q+1) to key q-1", lambda: _uniform(5)[None, None]),
        Case("random causal patterns, B=2, H=4, T=8", lambda: _causal_softmax(0, 2, 4, 8)),
        Case("random sharp causal patterns, B=3, H=2, T=12", lambda: _causal_softmax(1, 3, 2, 12, sharp=4.0)),
    ]


def _induction_cases():
    return [
        Case("an exact induction head (score 1), a duplicate-token head and a previous-token head (0), n=4",
             lambda: (torch.stack([_induction_head(4), _duplicate_head(4), _prev_head(8)])[None], 4)),
        Case("a uniform head, n=3: query q of the second copy gives 1/(q+1) to key q-2",
             lambda: (_uniform(6)[None, None], 3)),
        Case("random causal patterns, B=2, H=3, n=5", lambda: (_causal_softmax(2, 2, 3, 10), 5)),
        Case("random sharp causal patterns, B=3, H=2, n=6", lambda: (_causal_softmax(3, 3, 2, 12, sharp=4.0), 6)),
    ]


def _repeat(n, B=1, seed=0):
    first = _ids(seed, B, n, 50)
    return torch.cat([first, first], dim=1)  # (B, 2n) each sequence shown twice


def _duplicate_cases():
    return [
        Case("on ids shown twice: an exact duplicate-token head (1), an induction head (0), a self head (0), n=4",
             lambda: (torch.stack([_duplicate_head(4), _induction_head(4), torch.eye(8)])[None], _repeat(4))),
        Case("a uniform head on ids 0 1 0 1 0: the queries with an earlier copy sum 1/(q+1) over its copies",
             lambda: (_uniform(5)[None, None], torch.tensor([[0, 1, 0, 1, 0]]))),
        Case("random causal patterns on random ids from 4 values, B=2, H=3, T=9",
             lambda: (_causal_softmax(4, 2, 3, 9), _ids(5, 2, 9, 4))),
        Case("random sharp patterns, B=3, H=2, T=10; the prompts have different numbers of duplicates",
             lambda: (_causal_softmax(6, 3, 2, 10, sharp=4.0),
                      torch.stack([torch.arange(10), torch.tensor([1, 2, 1, 2, 3, 4, 5, 6, 7, 8]),
                                   _ids(7, 1, 10, 3)[0]]))),
    ]


def _ablation_cases():
    return [
        Case("a 2-block, 4-head model (random weights), B=3, T=10: head 2 of block 1",
             lambda: (_tiny_model(0), _ids(8, 3, 10, 23), 1, [2])),
        Case("the same kind of model, B=4, T=12: heads 0 and 3 of block 0 together",
             lambda: (_tiny_model(1), _ids(9, 4, 12, 23), 0, [0, 3])),
        Case("a 1-block, 2-head model, B=2, T=7: head 1", lambda: (_tiny_model(2, 1, 2), _ids(10, 2, 7, 23), 0, [1])),
    ]


def _lens_cases():
    return [
        Case("a 2-block model (random weights), B=2, T=6", lambda: (_tiny_model(3), _ids(11, 2, 6, 23))),
        Case("a 3-block model, B=1, T=9", lambda: (_tiny_model(4, 3, 2), _ids(12, 1, 9, 23))),
    ]


check_previous_token_score = Check(
    "previous_token_score", previous_token_score, _prev_cases, atol=1e-6, rtol=1e-5, kit_names=("pattern_scores",))
check_induction_score = Check(
    "induction_score", induction_score, _induction_cases, atol=1e-6, rtol=1e-5,
    kit_names=("induction_from_patterns", "induction_scores"))
check_duplicate_token_score = Check(
    "duplicate_token_score", duplicate_token_score, _duplicate_cases, atol=1e-6, rtol=1e-5,
    kit_names=("duplicate_token_scores",))
check_mean_ablated_logits = Check(
    "mean_ablated_logits", mean_ablated_logits, _ablation_cases, atol=1e-5, rtol=1e-4, kit_names=("ablate_head",))
check_logit_lens = Check("logit_lens", logit_lens, _lens_cases, atol=1e-5, rtol=1e-4, kit_names=("logit_lens",))
