"""Reading and editing a transformer's activations by name; scores that say what each head does.

Running with hooks. Every activation of `TransformerModel` passes through a named identity layer,
a HookPoint (the names are listed in `models/transformer.py`: "hook_embed",
"blocks.3.attn.hook_pattern", "blocks.3.attn.hook_z", ...; `hook_names(model)` lists them).

    logits, cache = run_with_cache(model, idx)                        # every activation
    logits, cache = run_with_cache(model, idx, ["blocks.0.attn.hook_pattern"])
    cache["blocks.0.attn.hook_pattern"]                               # (B, H, T, T)
    logits = run_with_hooks(model, idx, {"blocks.2.hook_resid_mid": fn})  # fn(act, name) -> new act or None

Attention patterns are computed only when a pattern hook point is asked for: otherwise attention
runs the fused kernel, which never forms them.

Head scores. A head's pattern for one sequence is a (T, T) matrix A: row q is how query position q
spreads its attention over key positions k <= q (each row sums to 1). Reading heatmaps by eye
invites stories; these scores turn the common head types into numbers, averaged over query
positions and prompts:

- previous_token: mean A[q, q-1]            (a head that looks one token back)
- first_token:    mean A[q, 0]              (an "attention sink" on the first position)
- self:           mean A[q, q]              (a head that looks at its own token)
- entropy:        mean -sum_k A[q,k] log A[q,k], in nats  (low: focused, high: spread out)
- induction:      on a random token sequence repeated twice, mean A[q, q - n + 1] over the second
                  copy: the query attends to the token that FOLLOWED its previous occurrence, the
                  signature of an induction head (Olsson et al., 2022).
- duplicate_token: the attention a query puts on earlier occurrences of its own token, summed,
                  averaged over the queries that have one (head_scores measures it on the same
                  repeated random sequences as induction; `duplicate_token_scores` on any text).

Query position 0 can only attend to itself, so it is left out of every average.
Patterns come from `attention_patterns(model, idx)`, named like "blocks.3.attn". The scores are
functions of patterns, so they can be checked on hand-made ones (an exact previous-token pattern
scores 1; uniform attention scores what `uniform_pattern` gives), and `per_prompt=True` keeps one
score per sequence, (B, L, H), for the prompt-to-prompt spread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch

from .models.transformer import HookPoint

SCORES = ("previous_token", "first_token", "self", "entropy", "induction", "duplicate_token")

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


def hook_names(model) -> list[str]:
    """The names of the model's hook points, in the order the forward pass reaches them."""
    return [name for name, m in model.named_modules() if isinstance(m, HookPoint)]


def _describe(names: list[str]) -> str:
    """The hook names with the block index folded: 'hook_embed, blocks.{i}.hook_resid_pre, ... (i = 0..3)'."""
    folded = list(dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.{i}.", n) for n in names))
    layers = sorted({int(m.group(1)) for n in names if (m := re.match(r"blocks\.(\d+)\.", n))})
    return ", ".join(folded) + (f" (i = {layers[0]}..{layers[-1]})" if layers else "")


def _select(model, names) -> list[str]:
    """Resolve names (None: all; a str; a list of str; a predicate name -> bool) to hook names."""
    available = hook_names(model)
    if not available:
        raise ValueError(f"{type(model).__name__} has no hook points: run_with_cache and run_with_hooks "
                         "need a TransformerModel")
    if names is None:
        return available
    if callable(names):
        chosen = [n for n in available if names(n)]
        if not chosen:
            raise ValueError(f"no hook name matches the predicate; the hook names are: {_describe(available)}")
        return chosen
    chosen = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in chosen if n not in set(available)]
    if unknown:
        raise ValueError(f"unknown hook name(s) {', '.join(map(repr, unknown))}; "
                         f"the hook names are: {_describe(available)}")
    return chosen


def _run(model, idx: torch.Tensor, hooks: dict[str, Callable]) -> torch.Tensor:
    """forward(idx) with forward hooks {name: hook(module, args, output)} in place, in eval mode and
    without gradients; the hooks are removed and the training flag restored afterwards, also on error."""
    if idx.dim() == 1:
        idx = idx[None]  # (T,) -> (1, T)
    idx = idx.to(next(model.parameters()).device)
    was_training = model.training
    handles = []
    try:
        for name, hook in hooks.items():
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        model.eval()
        with torch.no_grad():
            return model(idx)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def run_with_cache(model, idx: torch.Tensor, names: Iterable[str] | Callable[[str], bool] | str | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the model on idx (B, T) (or (T,)) and keep activations: (logits (B, T, V), {name: tensor}).

    names: None for every hook point, a list of hook names, or a predicate such as
    `lambda n: n.endswith("hook_pattern")`. Attention patterns are only computed when a
    hook_pattern is among them. Runs in eval mode under torch.no_grad().
    """
    cache: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            cache[name] = output.detach()
        return hook

    logits = _run(model, idx, {name: keep(name) for name in _select(model, names)})
    return logits, cache


def run_with_hooks(model, idx: torch.Tensor, fns: dict[str, HookFn]) -> torch.Tensor:
    """Run the model on idx with fn(activation, name) applied at each named hook point -> logits.

    A fn that returns a tensor replaces the activation (same shape); one that returns None leaves
    it. Runs in eval mode under torch.no_grad(); the hooks are gone afterwards, also when a fn
    raises. Each head's output before attn.proj mixes them is hook_z, (B, T, H, head_dim), so
    zero-ablating head 1 of block 3 is

        def zero_head(z, name):
            z = z.clone()
            z[:, :, 1] = 0.0
            return z
        logits = run_with_hooks(model, idx, {"blocks.3.attn.hook_z": zero_head})

    and mean-ablating it (its output replaced by its average on reference data, so it still adds
    its typical contribution but nothing about the tokens at hand) is

        _, ref = run_with_cache(model, ref_idx, ["blocks.3.attn.hook_z"])
        avg = ref["blocks.3.attn.hook_z"][:, :, 1].mean(dim=(0, 1))  # (head_dim,)

        def mean_head(z, name):
            z = z.clone()
            z[:, :, 1] = avg
            return z
        logits = run_with_hooks(model, idx, {"blocks.3.attn.hook_z": mean_head})

    `ablate_head(3, 1)` and `ablate_head(3, 1, how="mean", mean=avg)` build these for you.
    """
    def wrap(name, fn):
        def hook(module, args, output):
            return fn(output, name)
        return hook

    return _run(model, idx, {name: wrap(name, fns[name]) for name in _select(model, list(fns))})


def ablate_head(layer: int, head: int | Iterable[int], how: str = "zero",
                mean: torch.Tensor | None = None) -> dict[str, HookFn]:
    """{hook name: fn} for run_with_hooks that removes head(s) of one block from the computation.

    how="zero": the head's output (its head_dim slice of hook_z) becomes 0, as if attn.proj had
    zero columns for it. how="mean": it becomes `mean` ((head_dim,), the head's average output on
    reference data, see run_with_hooks), or without one its average over this batch's positions.
    head may be a list, to ablate several heads of the block at once (mean then (len(head),
    head_dim), or (head_dim,) for all of them).

        loss = lambda logits: F.cross_entropy(logits.flatten(0, 1), y.flatten())
        base = loss(run_with_hooks(model, x, {}))
        cost = loss(run_with_hooks(model, x, ablate_head(3, 1))) - base
    """
    if how not in ("zero", "mean"):
        raise ValueError(f"how={how!r} is not known: use 'zero' or 'mean'")
    heads = [head] if isinstance(head, int) else list(head)

    def fn(z, name):  # z: (B, T, H, head_dim)
        z = z.clone()  # the activation may be a view of a tensor the model still uses
        if how == "zero":
            z[:, :, heads] = 0.0
        else:
            z[:, :, heads] = z[:, :, heads].mean(dim=(0, 1)) if mean is None else mean.to(z)
        return z

    return {f"blocks.{layer}.attn.hook_z": fn}


def attention_patterns(model, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"blocks.i.attn": (B, H, T, T)} for token ids idx (B, T) (or (T,)), in block order."""
    _, cache = run_with_cache(model, idx, lambda name: name.endswith(".attn.hook_pattern"))
    return {name.removesuffix(".hook_pattern"): a for name, a in cache.items()}


def _stack(attn: dict[str, torch.Tensor]) -> torch.Tensor:
    """Patterns of every layer in block order: (L, B, H, T, T)."""
    names = sorted(attn, key=lambda name: int(name.split(".")[1]))
    return torch.stack([attn[name].float().cpu() for name in names])


def uniform_pattern(T: int) -> torch.Tensor:
    """(T, T): every query spreads its attention evenly over the keys it may see (k <= q), the
    baseline of a head that prefers nothing."""
    u = torch.tril(torch.ones(T, T))
    return u / u.sum(-1, keepdim=True)


def _mean(x: torch.Tensor, per_prompt: bool) -> torch.Tensor:
    """x (L, B, H, Q) -> (L, H) averaged over prompts and queries, or (B, L, H) per prompt."""
    return x.mean(dim=3).permute(1, 0, 2) if per_prompt else x.mean(dim=(1, 3))


def pattern_scores(attn: dict[str, torch.Tensor], *, per_prompt: bool = False) -> dict[str, torch.Tensor]:
    """previous_token, first_token, self and entropy scores, each (L, H) ((B, L, H) with per_prompt),
    from a patterns dict."""
    a = _stack(attn)  # (L, B, H, T, T)
    T = a.size(-1)
    if T < 2:
        raise ValueError("head scores need a sequence of at least 2 tokens; use a longer prompt.")
    q = torch.arange(1, T)  # query positions that have a past
    rows = a[..., 1:, :]  # (L, B, H, T-1, T)
    entropy = -(rows * rows.clamp_min(1e-12).log()).sum(-1)  # (L, B, H, T-1)
    return {
        "previous_token": _mean(a[..., q, q - 1], per_prompt),
        "first_token": _mean(a[..., q, 0], per_prompt),
        "self": _mean(a[..., q, q], per_prompt),
        "entropy": _mean(entropy, per_prompt),
    }


def duplicate_token_scores(attn: dict[str, torch.Tensor], idx: torch.Tensor, *,
                           per_prompt: bool = False) -> torch.Tensor:
    """(L, H) ((B, L, H) with per_prompt): attention from a token to the EARLIER occurrences of the
    same token id, summed over them, averaged over the queries that have at least one.

    idx: the (B, T) ids the patterns were computed on. A duplicate-token head is the step before
    induction that looks back at "where did I see this token before" (it attends to the earlier
    copy itself, not to its successor). NaN where no query of a prompt has an earlier duplicate.
    """
    a = _stack(attn)  # (L, B, H, T, T)
    idx = torch.as_tensor(idx).cpu()
    if idx.dim() == 1:
        idx = idx[None]
    T = a.size(-1)
    earlier = torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)  # k < q
    dup = (idx[:, :, None] == idx[:, None, :]) & earlier  # (B, Tq, Tk)
    has = dup.any(-1).float()  # (B, T) queries with an earlier duplicate
    mass = (a * dup[None, :, None].float()).sum(-1)  # (L, B, H, T)
    if per_prompt:
        return ((mass * has[None, :, None]).sum(-1) / has.sum(-1)[None, :, None]).permute(1, 0, 2)
    return (mass * has[None, :, None]).sum(dim=(1, 3)) / has.sum()


def repeated_tokens(token_pool: torch.Tensor, seq_len: int, batch: int = 8, seed: int = 0) -> torch.Tensor:
    """(batch, 2 * seq_len) ids: `batch` random sequences of seq_len ids from token_pool, each
    followed by a copy of itself (the induction test's input; seeded, so every model sees the same)."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.as_tensor(token_pool).unique()
    first = pool[torch.randint(len(pool), (batch, seq_len), generator=gen)]  # (batch, n)
    return torch.cat([first, first], dim=1)  # (batch, 2n)


def induction_from_patterns(attn: dict[str, torch.Tensor], seq_len: int, *,
                            per_prompt: bool = False) -> torch.Tensor:
    """(L, H) ((B, L, H)) induction scores from patterns on sequences of seq_len ids shown twice:
    the mean of A[q, q - seq_len + 1] over the queries q of the second copy."""
    a = _stack(attn)  # (L, B, H, 2n, 2n)
    if a.size(-1) != 2 * seq_len:
        raise ValueError(f"patterns of {a.size(-1)} positions are not a sequence of seq_len={seq_len} shown twice")
    q = torch.arange(seq_len, 2 * seq_len)  # queries in the second copy
    return _mean(a[..., q, q - seq_len + 1], per_prompt)


def _induction_len(model, seq_len):
    block_size = getattr(model, "block_size", 64)
    seq_len = seq_len or max(2, min(32, block_size // 2))
    if 2 * seq_len > block_size:
        raise ValueError(f"seq_len={seq_len} repeated twice exceeds block_size={block_size}; "
                         f"use seq_len <= {block_size // 2}.")
    return seq_len


@torch.no_grad()
def induction_scores(model, token_pool: torch.Tensor, *, seq_len: int | None = None,
                     batch: int = 8, seed: int = 0, per_prompt: bool = False) -> torch.Tensor:
    """(L, H) induction scores on `batch` random sequences of `seq_len` ids from token_pool, repeated.

    The first copy is unpredictable, so a head can only find the right key in the second copy by
    matching the current token with its earlier occurrence and moving one position on.
    """
    seq_len = _induction_len(model, seq_len)
    idx = repeated_tokens(token_pool, seq_len, batch, seed)
    return induction_from_patterns(attention_patterns(model, idx), seq_len, per_prompt=per_prompt)


def head_scores(model, idx: torch.Tensor, *, token_pool: torch.Tensor | None = None,
                induction_len: int | None = None, induction_batch: int = 8, seed: int = 0,
                per_prompt: bool = False) -> dict[str, torch.Tensor]:
    """Every score of SCORES for every head: {score: (L, H) tensor} ((B, L, H) with per_prompt).

    idx: (B, T) or (T,) prompt ids for the pattern scores. token_pool: ids to draw the induction
    sequences from (default: the prompt's own ids; pass ids common in the training data for a
    fairer test). induction and duplicate_token are measured on those repeated random sequences.
    """
    scores = pattern_scores(attention_patterns(model, idx), per_prompt=per_prompt)
    pool = token_pool if token_pool is not None else torch.as_tensor(idx).flatten()
    n = _induction_len(model, induction_len)
    rep = repeated_tokens(pool, n, induction_batch, seed)
    rep_attn = attention_patterns(model, rep)
    scores["induction"] = induction_from_patterns(rep_attn, n, per_prompt=per_prompt)
    scores["duplicate_token"] = duplicate_token_scores(rep_attn, rep, per_prompt=per_prompt)
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


def logit_lens(model, idx: torch.Tensor) -> torch.Tensor:
    """(L + 1, B, T, V): the residual stream read as logits after the embeddings and after each block.

    The logit lens (nostalgebraist, 2020) passes each intermediate residual stream through the final
    norm and the output layer, as if it were the last; the last row equals the model's own logits.
    """
    names = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(len(model.blocks))]
    _, cache = run_with_cache(model, idx, names)
    with torch.no_grad():
        return torch.stack([model.lm_head(model.norm_f(cache[name])) for name in names])


# ----------------------------------------------------------------------------------------------
# Token roles: attention between words that stand in a known relation

# The relations the role measures read, each from a query role to the key tokens it should find.
RELATIONS = {
    "pronoun -> its name": "from a hero's or friend's pronoun to the earlier mentions of that character's name",
    "verb -> its subject": "from a verb to the name or pronoun that is its subject, just before it",
    "hero's verb -> first mention": "from a verb whose subject is the hero (a later mention) to the hero's "
                                    "first mention, the name in the opening",
}


def role_windows(tokenizer, labelled, n_tokens: int) -> tuple[torch.Tensor, list[list[tuple]]]:
    """The first n_tokens tokens of each labelled text that has that many, with its role spans in tokens.

    labelled: [(text, [(start, end, role), ...])] with character spans, as stories.generate_role_stories
    gives. Returns ids (B, n_tokens) in the tokenizer's ids and, per window, its spans as
    (first, stop, role, start, end): the token positions first..stop-1 that overlap characters
    start..end-1 (a GPT-2 token carries its leading space), for the spans wholly inside the window.
    """
    base = getattr(tokenizer, "base", tokenizer)   # a CompactTokenizer splits text as GPT-2 does
    ids, spans = [], []
    for text, roles in labelled:
        base_ids = base.encode_ordinary(text)
        if len(base_ids) < n_tokens:
            continue
        ends = torch.tensor([len(base.decode([i])) for i in base_ids]).cumsum(0)   # (T,) char end of each
        if int(ends[-1]) != len(text):
            raise ValueError("role_windows needs texts whose tokens decode back to them one by one")
        starts = ends - torch.tensor([len(base.decode([i])) for i in base_ids])
        window = []
        for a, b, role in roles:
            first = int((ends > a).nonzero()[0])
            stop = int((starts < b).nonzero()[-1]) + 1
            if stop <= n_tokens:
                window.append((first, stop, role, a, b))
        win = base_ids[:n_tokens]
        ids.append(tokenizer.encode_base(win) if hasattr(tokenizer, "encode_base") else win)
        spans.append(window)
    return torch.tensor(ids, dtype=torch.long), spans


def role_pairs(spans: list[list[tuple]], n_tokens: int) -> dict[str, torch.Tensor]:
    """{relation: (B, T, T) bool}: pairs[b, q, k] is True where query q should read key k (see RELATIONS).

    A query is the first token of its word; its keys are every token of the word(s) it relates to."""
    out = {name: torch.zeros(len(spans), n_tokens, n_tokens, dtype=torch.bool) for name in RELATIONS}
    for b, window in enumerate(spans):
        names = {"hero": [s for s in window if s[2] == "hero name"],
                 "friend": [s for s in window if s[2] == "friend name"]}
        subject_at = {s[4]: s for s in window if s[2] == "subject"}            # char end -> the subject span
        hero_spans = {(s[0], s[1]) for s in window if s[2] in ("hero name", "hero pronoun")}
        for first, _, role, a, _ in window:
            if role in ("hero pronoun", "friend pronoun"):
                for k in names[role.split()[0]]:
                    if k[1] <= first:
                        out["pronoun -> its name"][b, first, k[0]:k[1]] = True
            elif role == "verb" and a - 1 in subject_at:
                subj = subject_at[a - 1]
                out["verb -> its subject"][b, first, subj[0]:subj[1]] = True
                hero1 = names["hero"][0] if names["hero"] else None
                if (subj[0], subj[1]) in hero_spans and hero1 is not None and hero1[1] < subj[0]:
                    out["hero's verb -> first mention"][b, first, hero1[0]:hero1[1]] = True
    return out


def pair_attention(pattern: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(...,): the attention a query puts on its keys, summed over them, averaged over the queries that
    have any. pattern: (B, ..., T, T), e.g. (B, L, H, T, T); pairs: (B, T, T) bool, as role_pairs gives."""
    mask = pairs.to(pattern.dtype).reshape(pairs.size(0), *([1] * (pattern.dim() - 3)), *pairs.shape[1:])
    mass = (pattern * mask).sum(-1)                                  # (B, ..., T)
    has = pairs.any(-1)                                              # (B, T)
    if not bool(has.any()):
        raise ValueError("pair_attention: no query has a key; the windows hold no such relation")
    mass = mass.movedim(0, -2)                                       # (..., B, T)
    return mass[..., has].mean(-1)
