"""What each attention choice costs per generated token and per training step, against the context
length: softmax with its KV cache, linear attention and the gated delta rule with their fixed-size
state (`python -m picollm_helpers.bench attention`; lesson 10 draws the same measurements).

A generated token at context length L: the model reads a prompt of L tokens (into its KV cache or
its state), then each of `n_tokens` more tokens is timed through the readable `model.step`, the same
code path for every attention (the softmax model's faster decode step is measured by `quick`).
Memory: the bytes the cache or state holds after L tokens (the KV cache's filled part).
A training step: forward, backward and AdamW on random tokens of length T, batch `batch`.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ..config import ATTENTIONS
from ..models.transformer import KVCache, TransformerModel


def state_nbytes(state) -> int:
    """Bytes a generation state holds: a KV cache's filled positions, or a RecurrentState's tensors."""
    if isinstance(state, KVCache):
        return sum(t[:, :, :state.pos].numel() * t.element_size() for t in state.k + state.v)
    return state.nbytes()


def _model(attention, max_len, embed_size, n_heads, n_blocks, vocab, seed=0):
    torch.manual_seed(seed)
    return TransformerModel(vocab, embed_size, n_heads, n_blocks, block_size=max_len, pos_emb="none",
                            attention=attention).eval()


@torch.inference_mode()
def generation_cost(contexts, attentions=ATTENTIONS, *, n_tokens=8, embed_size=64, n_heads=4, n_blocks=2,
                    vocab=1000, seed=0) -> list[dict]:
    """One row per (attention, context length): ms per generated token (median of n_tokens) and the
    bytes of the state after the context. Untrained models of the same shape (timing needs no training)."""
    rows = []
    max_len = max(contexts) + n_tokens + 1
    models = {a: _model(a, max_len, embed_size, n_heads, n_blocks, vocab, seed) for a in attentions}
    g = torch.Generator().manual_seed(seed)
    for L in contexts:
        prompt = torch.randint(0, vocab, (1, L), generator=g)
        for a, m in models.items():
            state = m.init_state(1)
            logits, state = m.step(prompt, state)
            nbytes = state_nbytes(state)
            times = []
            for _ in range(n_tokens):
                nxt = logits.argmax(-1, keepdim=True)            # (1, 1)
                t0 = time.perf_counter()
                logits, state = m.step(nxt, state)
                times.append(time.perf_counter() - t0)
            rows.append({"attention": a, "context": L, "ms_per_token": 1e3 * statistics.median(times),
                         "state_bytes": nbytes})
    return rows


def train_step_cost(lengths, attentions=ATTENTIONS, *, batch=4, repeat=3, embed_size=64, n_heads=4, n_blocks=2,
                    vocab=1000, seed=0) -> list[dict]:
    """One row per (attention, sequence length T): ms per training step (median of `repeat`, after one
    warm-up step), the attentions timed in alternation at each T."""
    rows = []
    for T in lengths:
        steps = {}
        for a in attentions:
            m = _model(a, T, embed_size, n_heads, n_blocks, vocab, seed).train()
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
            x = torch.randint(0, vocab, (batch, T + 1), generator=torch.Generator().manual_seed(seed))

            def step(m=m, opt=opt, x=x):
                loss = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            steps[a] = step
        times = {a: [] for a in attentions}
        for r in range(repeat + 1):
            for a, step in steps.items():
                t0 = time.perf_counter()
                step()
                if r:                                           # round 0 warms up
                    times[a].append(time.perf_counter() - t0)
        rows += [{"attention": a, "length": T, "ms_per_step": 1e3 * statistics.median(ts)} for a, ts in times.items()]
    return rows


def crossover(rows, a="softmax", b="linear", x="length", y="ms_per_step"):
    """The first x at which b's y is below a's (and stays below at every larger x), or None."""
    xs = sorted({r[x] for r in rows})
    val = {(r["attention"], r[x]): r[y] for r in rows}
    below = [val[b, v] < val[a, v] for v in xs]
    for i, v in enumerate(xs):
        if all(below[i:]):
            return v
    return None


def bench_attention(results=None, contexts=(128, 512, 2048, 8192), lengths=(128, 512, 1024, 2048)):
    """The bench case: per-token generation cost and training-step cost of each attention, printed."""
    gen = generation_cost(contexts)
    print("generated token (readable model.step, batch 1, E=64, 2 blocks): ms per token | state KiB")
    print("  context " + "".join(f"{a:>22}" for a in ATTENTIONS))
    for L in contexts:
        cells = [next(r for r in gen if r["attention"] == a and r["context"] == L) for a in ATTENTIONS]
        print(f"  {L:>7} " + "".join(f"{c['ms_per_token']:>12.2f} | {c['state_bytes'] / 1024:>7.0f}" for c in cells))
    steps = train_step_cost(lengths)
    print("training step (batch 4): ms per step")
    print("  length  " + "".join(f"{a:>12}" for a in ATTENTIONS))
    ms = {(r["attention"], r["length"]): r["ms_per_step"] for r in steps}
    for T in lengths:
        print(f"  {T:>6}  " + "".join(f"{ms[a, T]:>12.1f}" for a in ATTENTIONS))
    for a in ATTENTIONS[1:]:
        print(f"  {a} trains faster than softmax from T = {crossover(steps, b=a)} on (None: not within {max(lengths)})")
    return {"attention_generation": gen, "attention_train_steps": steps}
