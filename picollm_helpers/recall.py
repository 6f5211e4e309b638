"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"): can a model look up a value
it saw earlier in its context?

A sequence lists n_pairs key-value pairs, then asks for every key again, in a new order:

    (k3 v3) (k7 v7) (k1 v1) ...  |  k7  k1  k3 ...      the answer at each query: the pair's value

Keys and values are drawn afresh for every sequence, so nothing can be memorised in the weights:
the model must store each pair when it reads it and retrieve it when the key comes back. Only the
answers are scored (the other targets are IGNORE_INDEX). Softmax attention keeps every pair (its KV
cache grows with them); a linear attention's state has a fixed size, so it holds a limited number of
pairs, which is what this task measures: accuracy against the number of pairs.

One token per pair. Zoology writes a pair as two tokens, `k v`; a model then has to learn to copy
each key onto its value's position (a previous-token head feeding an induction head, lesson 07)
before it can look anything up. At laptop scale that circuit did not form in time: a 2-block softmax
model recalled 0.30 of 8 pairs (64 keys) after 1,000 steps. Here a pair is one token, id
k * n_values + v, and a query is the key's own token, so one attention layer can do the lookup (a
query matches its pair on the key, and reads the value off it) and the comparison is about the
memory, not about how fast a circuit forms. The vocabulary: the n_keys * n_values pair tokens, then
the n_keys query tokens, then the n_values answer tokens.

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


def recall_vocab_size(n_keys: int, n_values: int) -> int:
    """Pair tokens, query tokens, answer tokens."""
    return n_keys * n_values + n_keys + n_values


def recall_batch(n_pairs: int, batch_size: int, *, n_keys: int = 32, n_values: int = 16, generator=None):
    """(x, y): (batch_size, 2 n_pairs) int64 inputs and targets. x: n_pairs pair tokens
    (k * n_values + v, distinct keys), then the n_pairs keys again as query tokens
    (n_keys * n_values + k) in a new order. y: IGNORE_INDEX on the pairs; at each query, the answer
    token of the key's value (n_keys * n_values + n_keys + v)."""
    if not 1 <= n_pairs <= n_keys:
        raise ValueError(f"n_pairs={n_pairs} must be between 1 and n_keys={n_keys} (each sequence uses distinct "
                         "keys): lower n_pairs or raise n_keys")
    g = generator
    keys = torch.rand(batch_size, n_keys, generator=g).argsort(-1)[:, :n_pairs]               # (B, N) distinct
    values = torch.randint(0, n_values, (batch_size, n_pairs), generator=g)                  # (B, N)
    order = torch.rand(batch_size, n_pairs, generator=g).argsort(-1)                         # query order
    queries = n_keys * n_values + keys.gather(1, order)
    x = torch.cat([keys * n_values + values, queries], 1)                                    # (B, 2N)
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, n_pairs:] = n_keys * n_values + n_keys + values.gather(1, order)
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


def recall_model(attention: str, n_pairs: int, *, embed_size: int = 64, n_heads: int = 4, n_blocks: int = 1,
                 n_keys: int = 32, n_values: int = 16) -> TransformerModel:
    """The task's model: a one-block transformer without position encoding (the lookup is by
    content: a query finds its pair wherever it stands), its context the sequence's length."""
    return TransformerModel(recall_vocab_size(n_keys, n_values), embed_size, n_heads, n_blocks,
                            block_size=2 * n_pairs, pos_emb="none", attention=attention)


def train_recall(attention: str, n_pairs: int, seed: int, *, steps: int = 300, batch_size: int = 64,
                 learning_rate: float = 3e-3, eval_sequences: int = 512, **model_kw) -> RecallRun:
    """Train recall_model(attention, n_pairs) for `steps` AdamW steps on fresh batches (the same
    initialisation and batches for every attention at one seed and n_pairs), then score it on
    eval_sequences new ones."""
    n_keys, n_values = model_kw.get("n_keys", 32), model_kw.get("n_values", 16)
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
