"""What a model groups together: nearest tokens and k-means clusters of its token embeddings, tokens
labelled with what they are, and the contexts where a unit (a neuron or an SAE feature) fires.

pico-llm's starter carried a stub under the heading "K-Means Monosemantic":

    monosemantic_analysis_for_token(token_id, model, enc, top_n=5)   # returned []

meant to say, for each generated token, which tokens the model puts next to it. Here it returns the
top_n nearest tokens in the model's input embedding space (cosine similarity), and the command line's
--monosemantic_enabled writes them beside every generated token.

    >>> monosemantic_analysis_for_token(enc.encode_ordinary(" dog")[0], model, enc)  # doctest: +SKIP
    [(' cat', 0.81), (' puppy', 0.78), ...]
"""

from __future__ import annotations

import html

import torch
import torch.nn.functional as F


def token_embeddings(model) -> torch.Tensor:
    """(V, E): the model's input embedding of every token id (transformer wte, LSTM or k-gram MLP
    embedding; for a one-hot k-gram MLP, the first layer's columns of the most recent slot)."""
    for name in ("wte", "embedding"):
        emb = getattr(model, name, None)
        if isinstance(emb, torch.nn.Embedding):
            return emb.weight.detach()
    if getattr(model, "input_mode", None) == "onehot":
        V = model.vocab_size
        return model.in_proj.weight.detach()[:, (model.k - 1) * V:].T   # the current token's slot: (V, E)
    raise TypeError(f"{type(model).__name__} has no token embedding (wte or embedding) to compare tokens in")


@torch.no_grad()
def nearest_tokens(emb: torch.Tensor, token_id: int, top_n: int = 5, exclude=()) -> list[tuple[int, float]]:
    """The top_n ids closest to token_id by cosine similarity in emb (V, E), itself and `exclude` left out."""
    V = emb.size(0)
    if not 0 <= int(token_id) < V:
        raise ValueError(f"token_id={token_id} is outside the vocabulary 0..{V - 1}")
    sims = F.cosine_similarity(emb[int(token_id)][None], emb, dim=-1)             # (V,)
    sims[int(token_id)] = -float("inf")
    for i in exclude:
        sims[int(i)] = -float("inf")
    top = sims.topk(min(top_n, V - 1 - len(set(exclude) - {int(token_id)})))
    return list(zip(top.indices.tolist(), top.values.tolist()))


def monosemantic_analysis_for_token(token_id, model, enc, top_n=5):
    """pico-llm's stub, done: the top_n tokens nearest to token_id in model's input embedding space,
    as [(token text, cosine similarity), ...], most similar first. enc: the tokenizer of the model's ids
    (a compact one when the model was trained over a compact vocabulary)."""
    emb = token_embeddings(model)
    skip = [enc.unk_token] if getattr(enc, "unk_token", None) is not None else []
    return [(enc.decode([i]), round(s, 4)) for i, s in nearest_tokens(emb, int(token_id), top_n, exclude=skip)]


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0, cosine: bool = True):
    """k-means of the rows of x (N, D), k-means++ start: (assignment (N,), centres (k, D)). With cosine,
    the rows and centres are unit vectors (spherical k-means), so clusters are directions."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k={k} must be between 1 and the number of rows ({len(x)})")
    x = F.normalize(x.float(), dim=-1) if cosine else x.float()
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(len(x), (1,), generator=g)]
    for _ in range(1, k):                                                        # k-means++
        d2 = torch.cdist(x, centres).min(1).values.pow(2)
        centres = torch.cat([centres, x[torch.multinomial(d2 + 1e-12, 1, generator=g)]])
    assign = torch.full((len(x),), -1)
    for _ in range(iters):
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c = members.mean(0)
                centres[j] = F.normalize(c, dim=0) if cosine else c
    return assign, centres


# ----------------------------------------------------------------------------------------------
# Tokens labelled with what they are

def label_tokens(text: str, spans, concepts, tokenizer) -> tuple[list[int], list[int]]:
    """Encode `text` and label its tokens: (ids, labels), labels[t] the index in `concepts` of the concept
    token t overlaps in spans [(start, end, concept), ...] (stories.story_labels), or -1 for none.
    (A compact tokenizer's <|unk|> ids are aligned through the GPT-2 tokens they stand for.)"""
    index = {c: i for i, c in enumerate(concepts)}
    owner = [-1] * len(text)
    for start, end, concept in spans:
        owner[start:end] = [index[concept]] * (end - start)
    base = getattr(tokenizer, "base", tokenizer)
    base_ids = base.encode_ordinary(text)
    ids = tokenizer.encode_base(base_ids) if base is not tokenizer else list(base_ids)
    labels, pos = [], 0
    for i in base_ids:
        piece = base.decode([i])
        if text[pos:pos + len(piece)] != piece:
            raise ValueError(f"token {i} ({piece!r}) does not decode to the text at character {pos} "
                             f"({text[pos:pos + len(piece)]!r}): label_tokens needs text that GPT-2's tokens "
                             "spell exactly")
        hit = [o for o in owner[pos:pos + len(piece)] if o >= 0]
        labels.append(max(set(hit), key=hit.count) if hit else -1)
        pos += len(piece)
    return ids, labels


def context_html(tokens: list[str], acts, centre: int, width: int = 12, vmax: float | None = None) -> str:
    """One line of HTML: the tokens around position `centre`, each shaded by its activation (acts, one
    number per token), the centre token boxed."""
    lo, hi = max(0, centre - width), min(len(tokens), centre + 4)
    vmax = vmax or max(float(max(acts[lo:hi], default=0.0)), 1e-9)
    parts = []
    for t in range(lo, hi):
        a = max(0.0, min(1.0, float(acts[t]) / vmax))
        style = f"background: rgba(255, 140, 0, {a:.2f});"
        if t == centre:
            style += " outline: 2px solid #c00;"
        parts.append(f'<span style="{style}" title="{float(acts[t]):.3g}">'
                     f"{html.escape(tokens[t]).replace(' ', '&nbsp;')}</span>")
    return "<span style='font-family: monospace'>" + "".join(parts) + "</span>"


def context_text(tokens: list[str], centre: int, width: int = 12) -> str:
    """The tokens around position `centre` as text, the centre token in [brackets]."""
    lo, hi = max(0, centre - width), min(len(tokens), centre + 4)
    return "".join(f"[{tokens[t]}]" if t == centre else tokens[t] for t in range(lo, hi)).replace("\n", " ")
