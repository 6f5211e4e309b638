"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"): can a model look up a value
it saw earlier in its context?

A sequence lists n_pairs key-value pairs, then asks for every key again, in a new order:

    k3 v3  k7 v7  k1 v1  ...  |  k7 ?  k1 ?  k3 ?  ...       (each ? is the value the pair gave)

Keys are ids 0..n_keys-1 and values n_keys..n_keys+n_values-1, drawn afresh for every sequence, so
nothing can be memorised in the weights: the model must store each pair when it reads it and
retrieve it when the key comes back. Only the answers are scored (the other targets are
IGNORE_INDEX). Softmax attention keeps every pair (its KV cache grows with them); a linear
attention's state has a fixed size, so it holds a limited number of pairs, which is what this task
measures: accuracy against the number of pairs.

`recall_batch` makes the data, `train_recall` trains one model on fresh batches and returns its
accuracy on held-out sequences.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import IGNORE_INDEX
from .models import TransformerModel


def recall_batch(n_pairs: int, batch_size: int, *, n_keys: int = 64, n_values: int = 64, generator=None):
    """(x, y): (batch_size, 4 n_pairs - 1) int64 inputs and targets; y is IGNORE_INDEX except where the
    input is a queried key and the target its value."""
    if not 1 <= n_pairs <= min(n_keys, n_values):
        raise ValueError(f"n_pairs={n_pairs} must be between 1 and min(n_keys, n_values)={min(n_keys, n_values)} "
                         "(each sequence uses distinct keys): lower n_pairs or raise n_keys and n_values")
    g = generator
    keys = torch.rand(batch_size, n_keys, generator=g).argsort(-1)[:, :n_pairs]                # (B, N) distinct
    values = n_keys + torch.randint(0, n_values, (batch_size, n_pairs), generator=g)          # (B, N)
    order = torch.rand(batch_size, n_pairs, generator=g).argsort(-1)                          # query order
    qk, qv = keys.gather(1, order), values.gather(1, order)
    seq = torch.cat([torch.stack([keys, values], -1).flatten(1), torch.stack([qk, qv], -1).flatten(1)], 1)
    x, y = seq[:, :-1], seq[:, 1:].clone()                                                    # (B, 4N - 1)
    scored = torch.zeros_like(y, dtype=torch.bool)
    scored[:, 2 * n_pairs::2] = True                   # inputs that are queried keys: their target is the value
    y[~scored] = IGNORE_INDEX
    return x, y


@dataclass
class RecallRun:
    attention: str
    n_pairs: int
    seed: int
    accuracy: float        # share of queried values predicted exactly (argmax), on held-out sequences
    final_loss: float      # mean training loss over the last 20 steps
    train_time: float      # seconds
    parameters: int


def recall_model(attention: str, n_pairs: int, *, embed_size: int = 64, n_heads: int = 4, n_blocks: int = 2,
                 n_keys: int = 64, n_values: int = 64) -> TransformerModel:
    """The task's model: a small transformer with learned positions, its context the sequence's length."""
    return TransformerModel(n_keys + n_values, embed_size, n_heads, n_blocks, block_size=4 * n_pairs - 1,
                            pos_emb="learned", attention=attention)


def train_recall(attention: str, n_pairs: int, seed: int, *, steps: int = 300, batch_size: int = 64,
                 learning_rate: float = 3e-3, eval_sequences: int = 512, **model_kw) -> RecallRun:
    """Train recall_model(attention, n_pairs) for `steps` AdamW steps on fresh batches (the same
    batches for every attention at one seed and n_pairs), then score it on eval_sequences new ones."""
    n_keys, n_values = model_kw.get("n_keys", 64), model_kw.get("n_values", 64)
    torch.manual_seed(seed)
    model = recall_model(attention, n_pairs, **model_kw)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    data = torch.Generator().manual_seed(seed * 1_000_003 + n_pairs)
    losses = []
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        x, y = recall_batch(n_pairs, batch_size, n_keys=n_keys, n_values=n_values, generator=data)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    train_time = time.perf_counter() - t0
    held_out = torch.Generator().manual_seed(10_000_019 + seed * 1_000_003 + n_pairs)
    x, y = recall_batch(n_pairs, eval_sequences, n_keys=n_keys, n_values=n_values, generator=held_out)
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(-1)
    scored = y != IGNORE_INDEX
    accuracy = float((pred[scored] == y[scored]).float().mean())
    return RecallRun(attention, n_pairs, seed, accuracy, float(sum(losses[-20:]) / len(losses[-20:])), train_time,
                     sum(p.numel() for p in model.parameters()))


def memory_recall(attention: str, n_pairs: int, head_dim: int = 16, *, seed: int = 0, trials: int = 64) -> float:
    """The memory alone, untrained: store n_pairs random (key, value) pairs in one head, query every
    key, and count a hit when the output is closer (cosine) to the key's own value than to any other
    stored value. Returns the share of hits (chance: 1 / n_pairs).

    softmax: the cached keys and values, softmax(q K^T / sqrt(d)) V (keys N(0, 1) per entry);
    linear: the state (S, z) of causal linear attention after the pairs, read with phi(q);
    gated_delta: the delta rule's state (alpha = beta = 1: no forgetting, full writes, unit keys).
    """
    from .models.linear_attention import feature_map, gated_delta_recurrent, linear_attention_recurrent

    g = torch.Generator().manual_seed(seed * 1_000_003 + n_pairs)
    k = torch.randn(trials, 1, n_pairs, head_dim, generator=g, dtype=torch.float64)  # (B, H=1, N, d)
    v = torch.randn(trials, 1, n_pairs, head_dim, generator=g, dtype=torch.float64)
    if attention == "softmax":
        y = (k @ k.transpose(-2, -1) / head_dim ** 0.5).softmax(-1) @ v                # every key queried
    elif attention == "linear":
        _, S, z = linear_attention_recurrent(k, k, v)                                  # store the pairs
        q = feature_map(k)
        y = (q @ S) / (q @ z.unsqueeze(-1))                                            # then read them
    elif attention == "gated_delta":
        k = F.normalize(k, dim=-1)
        ones = torch.ones(trials, 1, n_pairs, dtype=torch.float64)
        _, S = gated_delta_recurrent(k, k, v, ones, ones)
        y = k @ S
    else:
        raise ValueError(f"attention={attention!r}: use softmax, linear or gated_delta")
    cos = F.normalize(y, dim=-1) @ F.normalize(v, dim=-1).transpose(-2, -1)            # (B, 1, N, N)
    hits = cos.argmax(-1) == torch.arange(n_pairs)
    return float(hits.double().mean())
