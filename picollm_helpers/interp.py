"""Scores that say what each attention head does, computed from its attention pattern.

A head's pattern for one sequence is a (T, T) matrix A: row q is how query position q spreads its
attention over key positions k <= q (each row sums to 1). Reading heatmaps by eye invites stories;
these scores turn the common head types into numbers, averaged over query positions and prompts:

- previous_token: mean A[q, q-1]            (a head that looks one token back)
- first_token:    mean A[q, 0]              (an "attention sink" on the first position)
- self:           mean A[q, q]              (a head that looks at its own token)
- entropy:        mean -sum_k A[q,k] log A[q,k], in nats  (low: focused, high: spread out)
- induction:      on a random token sequence repeated twice, mean A[q, q - n + 1] over the second
                  copy: the query attends to the token that FOLLOWED its previous occurrence, the
                  signature of an induction head (Olsson et al., 2022).

Query position 0 can only attend to itself, so it is left out of every average.
Patterns come from `model(idx, return_attn=True)`, named like "blocks.3.attn" as in TransformerLens.
"""

from __future__ import annotations

import torch

SCORES = ("previous_token", "first_token", "self", "entropy", "induction")


@torch.no_grad()
def attention_patterns(model, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"blocks.i.attn": (B, H, T, T)} for token ids idx (B, T) (or (T,))."""
    if idx.dim() == 1:
        idx = idx[None]
    was_training = model.training
    model.eval()
    _, attn = model(idx.to(next(model.parameters()).device), return_attn=True)
    model.train(was_training)
    return attn


def _stack(attn: dict[str, torch.Tensor]) -> torch.Tensor:
    """Patterns of every layer in block order: (L, B, H, T, T)."""
    names = sorted(attn, key=lambda name: int(name.split(".")[1]))
    return torch.stack([attn[name].float().cpu() for name in names])


def pattern_scores(attn: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """previous_token, first_token, self and entropy scores, each (L, H), from a patterns dict."""
    a = _stack(attn)  # (L, B, H, T, T)
    T = a.size(-1)
    if T < 2:
        raise ValueError("head scores need a sequence of at least 2 tokens; use a longer prompt.")
    q = torch.arange(1, T)  # query positions that have a past
    rows = a[..., 1:, :]  # (L, B, H, T-1, T)
    entropy = -(rows * rows.clamp_min(1e-12).log()).sum(-1)  # (L, B, H, T-1)
    return {
        "previous_token": a[..., q, q - 1].mean(dim=(1, 3)),
        "first_token": a[..., q, 0].mean(dim=(1, 3)),
        "self": a[..., q, q].mean(dim=(1, 3)),
        "entropy": entropy.mean(dim=(1, 3)),
    }


@torch.no_grad()
def induction_scores(model, token_pool: torch.Tensor, *, seq_len: int | None = None,
                     batch: int = 8, seed: int = 0) -> torch.Tensor:
    """(L, H) induction scores on `batch` random sequences of `seq_len` ids from token_pool, repeated.

    The first copy is unpredictable, so a head can only find the right key in the second copy by
    matching the current token with its earlier occurrence and moving one position on.
    """
    block_size = getattr(model, "block_size", 64)
    seq_len = seq_len or max(2, min(32, block_size // 2))
    if 2 * seq_len > block_size:
        raise ValueError(f"seq_len={seq_len} repeated twice exceeds block_size={block_size}; "
                         f"use seq_len <= {block_size // 2}.")
    gen = torch.Generator().manual_seed(seed)
    pool = torch.as_tensor(token_pool).unique()
    first = pool[torch.randint(len(pool), (batch, seq_len), generator=gen)]  # (batch, n)
    idx = torch.cat([first, first], dim=1)  # (batch, 2n)
    a = _stack(attention_patterns(model, idx))  # (L, batch, H, 2n, 2n)
    q = torch.arange(seq_len, 2 * seq_len)  # queries in the second copy
    return a[..., q, q - seq_len + 1].mean(dim=(1, 3))


def head_scores(model, idx: torch.Tensor, *, token_pool: torch.Tensor | None = None,
                induction_len: int | None = None, induction_batch: int = 8, seed: int = 0
                ) -> dict[str, torch.Tensor]:
    """Every score of SCORES for every head: {score: (L, H) tensor}.

    idx: (B, T) or (T,) prompt ids for the pattern scores. token_pool: ids to draw the induction
    sequences from (default: the prompt's own ids; pass ids common in the training data for a
    fairer test).
    """
    scores = pattern_scores(attention_patterns(model, idx))
    pool = token_pool if token_pool is not None else torch.as_tensor(idx).flatten()
    scores["induction"] = induction_scores(model, pool, seq_len=induction_len,
                                           batch=induction_batch, seed=seed)
    return scores


def top_heads(scores: dict[str, torch.Tensor], k: int = 3) -> dict[str, list[tuple[int, int, float]]]:
    """For each score, the k heads with the highest value as (layer, head, value)
    (entropy: the k lowest, the most focused heads)."""
    out = {}
    for name, s in scores.items():
        flat = -s.flatten() if name == "entropy" else s.flatten()
        best = flat.topk(min(k, flat.numel())).indices
        out[name] = [(int(i) // s.size(1), int(i) % s.size(1), float(s.flatten()[i])) for i in best]
    return out


def top_attended(pattern: torch.Tensor, tokens: list[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """For one head's (T, T) pattern: each query's k most-attended key tokens with their weights."""
    out = []
    for q in range(pattern.size(0)):
        row = pattern[q, : q + 1]
        top = row.topk(min(k, q + 1))
        out.append([(tokens[int(i)], float(w)) for w, i in zip(top.values, top.indices)])
    return out


def token_labels(tokenizer, ids) -> list[str]:
    """One readable label per token id, for heatmap axes: spaces shown as '␣', newlines as '\\n'."""
    return [tokenizer.decode([int(i)]).replace(" ", "␣").replace("\n", "\\n") for i in ids]
