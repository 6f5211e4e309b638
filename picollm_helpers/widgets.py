"""Interactive explorers for the lessons (ipywidgets).

- `TopPExplorer`: type a prompt, move p, temperature and top-k; see which next tokens the nucleus
  keeps (with their probabilities) and a continuation sampled with those settings.
- `FeatureExplorer`: pick a neuron or an SAE feature; see its top contexts with the activating tokens
  shaded, its best concept when tokens are labelled, and its activation histogram.
- `AttentionExplorer`: type a prompt, pick a layer and a head; see the attention heatmap (or every
  head of the layer at once), the head's scores beside it, for each query token the tokens it
  attends to most, and, with "ablate this head", how the next-token distribution changes when
  the head's output is removed (an intervention, not a picture).

Every control redraws at once. A bad input (an empty prompt, a prompt longer than the model can
take) shows its error inside the explorer's output area instead of failing silently. The state
each redraw computed is kept on the object (`nucleus`, `sample_text`, `pattern`, `top`,
`head_score`, `next_tokens`, `kl`, `error`),
so the logic can be tested by setting a control's value and reading it back, with no browser.
"""

from __future__ import annotations

import base64
import html
import io
import re

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from .interp import (
    ablate_head,
    attention_patterns,
    duplicate_token_scores,
    pattern_scores,
    run_with_hooks,
    token_labels,
    top_attended,
)
from .plots import plot_attention
from .sampling import _encode, _last_logits, generate, top_k_filter, top_p_filter
from .tokenizer import check_tokenizer


def _error_html(exc: Exception) -> str:
    return (f'<div class="picollm-error" style="color:#b00020;font-weight:bold">'
            f"{type(exc).__name__}: {html.escape(str(exc))}</div>")


def _show(out: W.Output, *items) -> None:
    """Replace what `out` shows with `items` (HTML strings or matplotlib figures), in one update.

    Setting the outputs directly (rather than printing inside `with out:`) works the same in a
    kernel, in a test and in a thread, and the browser never sees a half-drawn state.
    """
    bundles = []
    for item in items:
        if isinstance(item, str):
            data = {"text/html": item, "text/plain": re.sub(r"<[^>]+>", "", item)}
        else:  # a matplotlib figure, as a PNG
            buf = io.BytesIO()
            item.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            plt.close(item)
            data = {"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": "<figure>"}
        bundles.append({"output_type": "display_data", "data": data, "metadata": {}})
    out.outputs = tuple(bundles)


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    ids = _encode(tokenizer, prompt)
    if not ids:
        raise ValueError("the prompt is empty: type some text to start from, e.g. 'Once upon a'.")
    return ids


class TopPExplorer:
    """Next-token nucleus and a sampled continuation, redrawn as the controls move."""

    def __init__(self, model, tokenizer, prompt: str = "Once upon a", *, top_p: float = 0.9,
                 temperature: float = 1.0, top_k: int = 0, seed: int = 0, max_new_tokens: int = 30,
                 show_tokens: int = 12):
        check_tokenizer(model, tokenizer, who="TopPExplorer")  # another vocabulary: every token shown wrong
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.show_tokens = max_new_tokens, show_tokens
        self.prompt = W.Text(value=prompt, description="prompt", continuous_update=False,
                             layout=W.Layout(width="60%"))
        self.p = W.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p",
                               continuous_update=False, readout_format=".2f")
        self.temperature = W.FloatSlider(value=temperature, min=0.1, max=2.0, step=0.1,
                                         description="temperature", continuous_update=False)
        self.top_k = W.IntSlider(value=top_k, min=0, max=200, step=1, description="top-k (0=off)",
                                 continuous_update=False)
        self.seed = W.IntText(value=seed, description="seed")
        self.button = W.Button(description="Sample again", icon="refresh")
        self.out = W.Output()
        self.nucleus: list[tuple[str, float]] = []  # the kept tokens with their renormalised probability
        self.nucleus_mass = 0.0  # original probability the kept tokens carry
        self.sample_text = ""
        self.error: str | None = None
        for control in (self.prompt, self.p, self.temperature, self.top_k, self.seed):
            control.observe(lambda change: self.update(), names="value")
        self.button.on_click(self._next_sample)
        self.widget = W.VBox([self.prompt, W.HBox([self.p, self.temperature]),
                              W.HBox([self.top_k, self.seed, self.button]), self.out])
        self.update()

    def _next_sample(self, _button=None) -> None:
        self.seed.value += 1  # observed: triggers update()

    @torch.no_grad()
    def next_token_probs(self) -> torch.Tensor:
        """(V,) probabilities of the next token after the prompt, with temperature and top-k applied."""
        ids = _prompt_ids(self.tokenizer, self.prompt.value)
        idx = torch.tensor([ids], device=next(self.model.parameters()).device)  # (1, T)
        self.model.eval()
        logits = _last_logits(self.model, idx)[0].float() / self.temperature.value  # (V,) as generate sees them
        if self.top_k.value:
            logits = top_k_filter(logits, self.top_k.value)
        return logits.softmax(-1).cpu()

    def update(self) -> None:
        """Recompute the nucleus and a sample from the controls' values, and redraw."""
        self.error = None
        try:
            probs = self.next_token_probs()
            kept = top_p_filter(probs.log(), self.p.value).isfinite()  # (V,) in the nucleus
            self.nucleus_mass = float(probs[kept].sum())
            order = probs.argsort(descending=True)
            self.nucleus = [(self.tokenizer.decode([int(i)]), float(probs[i]) / self.nucleus_mass)
                            for i in order[: int(kept.sum())]]
            self.sample_text = generate(
                self.model, self.tokenizer, self.prompt.value, self.max_new_tokens,
                temperature=self.temperature.value, top_k=self.top_k.value or None,
                top_p=self.p.value, seed=self.seed.value).text
            self._draw(probs, order, kept)
        except Exception as exc:  # shown to the student in the output area
            self.error = f"{type(exc).__name__}: {exc}"
            self.nucleus, self.sample_text = [], ""
            _show(self.out, _error_html(exc))

    def _draw(self, probs, order, kept) -> None:
        n_show = max(self.show_tokens, min(len(self.nucleus) + 3, 30))
        top = order[:n_show]
        labels = [repr(self.tokenizer.decode([int(i)])) for i in top]
        fig, ax = plt.subplots(figsize=(8, 3))
        colors = ["tab:blue" if kept[i] else "lightgray" for i in top]
        ax.bar(range(len(top)), probs[top].numpy(), color=colors)
        ax.set_xticks(range(len(top)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("probability")
        ax.set_title(f"Next token after the prompt: {len(self.nucleus)} kept (blue) at p={self.p.value:.2f}, "
                     f"covering {self.nucleus_mass:.1%}")
        fig.tight_layout()
        summary = (f'<div class="picollm-nucleus"><b>Nucleus at p={self.p.value:.2f}:</b> '
                   f"{len(self.nucleus)} token(s): "
                   + ", ".join(f"{html.escape(repr(t))} {q:.1%}" for t, q in self.nucleus[:15])
                   + (" ..." if len(self.nucleus) > 15 else "") + "</div>"
                   f'<div class="picollm-sample"><b>Sample (seed {self.seed.value}):</b> '
                   f"{html.escape(self.sample_text)}</div>")
        _show(self.out, summary, fig)

    def _ipython_display_(self):
        display(self.widget)


class AttentionExplorer:
    """One head's attention heatmap (or all heads of its layer), its scores, each query's
    most-attended tokens, and the next-token distribution with the head ablated, for a typed prompt.

    scores: optional {score: (L, H) tensor} measured elsewhere (e.g. `head_scores` on held-out
    text), shown beside the scores on the prompt itself. ablation: "zero" or "mean" (the head's
    output replaced by its average over the prompt's positions), as in `interp.ablate_head`.
    """

    SCORE_NAMES = {"previous_token": "previous-token", "first_token": "first-token (sink)", "self": "self",
                   "entropy": "entropy (nats)", "duplicate_token": "duplicate-token", "induction": "induction"}

    def __init__(self, model, tokenizer, prompt: str, *, layer: int = 0, head: int = 0, top_k: int = 3,
                 scores: dict | None = None, ablation: str = "zero", show_tokens: int = 8):
        check_tokenizer(model, tokenizer, who="AttentionExplorer")  # another vocabulary: every label wrong
        self.model, self.tokenizer, self.k = model, tokenizer, top_k
        self.scores, self.ablation, self.show_tokens = scores, ablation, show_tokens
        n_layers, n_heads = len(model.blocks), model.n_heads
        self.prompt = W.Text(value=prompt, description="prompt", continuous_update=False,
                             layout=W.Layout(width="80%"))
        self.layer = W.Dropdown(options=list(range(n_layers)), value=layer, description="layer")
        self.head = W.Dropdown(options=list(range(n_heads)), value=head, description="head")
        self.all_heads = W.Checkbox(value=False, description="all heads of the layer", indent=False)
        self.ablate = W.Checkbox(value=False, description="ablate this head", indent=False)
        self.out = W.Output()
        self.pattern: torch.Tensor | None = None  # (T, T) of the chosen layer and head
        self.tokens: list[str] = []
        self.top: list[list[tuple[str, float]]] = []
        self.head_score: dict[str, float] = {}  # the chosen head's scores on the prompt
        self.next_tokens: list[tuple[str, float, float | None]] = []  # (token, p, p with the head ablated)
        self.kl: float | None = None  # KL(next-token distribution || with the head ablated), nats
        self.error: str | None = None
        self._cache: tuple[str, list, dict, dict] | None = None  # the last prompt's ids, patterns, scores
        for control in (self.prompt, self.layer, self.head, self.all_heads, self.ablate):
            control.observe(lambda change: self.update(), names="value")
        self.widget = W.VBox([self.prompt, W.HBox([self.layer, self.head, self.all_heads, self.ablate]), self.out])
        self.update()

    def _patterns(self) -> dict:
        prompt = self.prompt.value
        if self._cache is None or self._cache[0] != prompt:
            ids = _prompt_ids(self.tokenizer, prompt)
            if len(ids) > self.model.block_size:
                raise ValueError(f"the prompt has {len(ids)} tokens but the model's context is "
                                 f"{self.model.block_size}: shorten it.")
            self.tokens = token_labels(self.tokenizer, ids)
            attn = attention_patterns(self.model, torch.tensor(ids))
            sc = pattern_scores(attn) if len(ids) > 1 else {}
            if len(ids) > 1:
                sc["duplicate_token"] = duplicate_token_scores(attn, torch.tensor([ids]))
            self._cache = (prompt, ids, attn, sc)
        return self._cache[2]

    @torch.no_grad()
    def _next_token(self) -> None:
        """The next-token distribution after the prompt, and with the chosen head ablated."""
        idx = torch.tensor([self._cache[1]])  # (1, T)
        probs = run_with_hooks(self.model, idx, {})[0, -1].float().softmax(-1).cpu()  # (V,)
        order = probs.argsort(descending=True)[: self.show_tokens]
        self.kl, ablated = None, None
        if self.ablate.value:
            hooks = ablate_head(self.layer.value, self.head.value, how=self.ablation)
            logp_ab = run_with_hooks(self.model, idx, hooks)[0, -1].float().log_softmax(-1).cpu()  # (V,)
            ablated = logp_ab.exp()
            self.kl = float((probs * (probs.clamp_min(1e-30).log() - logp_ab)).sum())
            order = torch.cat([order, ablated.argsort(descending=True)[: self.show_tokens]]).unique(sorted=False)
            order = order[probs[order].argsort(descending=True)]
        self.next_tokens = [(self.tokenizer.decode([int(i)]), float(probs[i]),
                             None if ablated is None else float(ablated[i])) for i in order]

    def update(self) -> None:
        self.error = None
        try:
            attn = self._patterns()
            layer, head = self.layer.value, self.head.value
            self.pattern = attn[f"blocks.{layer}.attn"][0, head].float().cpu()
            self.top = top_attended(self.pattern, self.tokens, self.k)
            self.head_score = {k: float(v[layer, head]) for k, v in self._cache[3].items()}
            self._next_token()
            self._draw()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.pattern, self.top, self.head_score, self.next_tokens, self.kl = None, [], {}, [], None
            _show(self.out, _error_html(exc))

    def _figure(self):
        n, layer = len(self.tokens), self.layer.value
        if not self.all_heads.value:
            fig, ax = plt.subplots(figsize=(min(3 + 0.45 * n, 12), min(2.5 + 0.4 * n, 10)))
            plot_attention(self.pattern, self.tokens, ax=ax, title=f"Layer {layer}, head {self.head.value}")
            return fig
        pats = self._cache[2][f"blocks.{layer}.attn"][0].float().cpu()  # (H, T, T)
        H = pats.size(0)
        cols = min(4, H)
        rows = -(-H // cols)
        side = min(2.5 + 0.25 * n, 6)
        fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False)
        for h, ax in enumerate(axes.flat):
            if h >= H:
                ax.axis("off")
                continue
            plot_attention(pats[h], self.tokens, ax=ax,
                           title=f"head {h}" + (" (selected)" if h == self.head.value else ""))
            if n > 12:  # the labels would overlap in small panels
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(f"Layer {layer}, all {H} heads")
        fig.tight_layout()
        return fig

    def _scores_html(self) -> str:
        layer, head = self.layer.value, self.head.value
        cols = "<th>score</th><th>on this prompt</th>" + ("<th>given (e.g. held-out text)</th>" if self.scores else "")
        rows = ""
        for key, label in self.SCORE_NAMES.items():
            here = self.head_score.get(key)
            given = self.scores.get(key) if self.scores else None
            if here is None and given is None:
                continue
            here_txt = "n/a" if here is None or here != here else f"{here:.2f}"  # NaN: no repeated token
            rows += f"<tr><td>{label}</td><td>{here_txt}</td>"
            if self.scores:
                rows += f"<td>{float(given[layer, head]):.2f}</td>" if given is not None else "<td></td>"
            rows += "</tr>"
        return (f'<table class="picollm-head-scores"><caption>scores of layer {layer} head {head}</caption>'
                f"<tr>{cols}</tr>{rows}</table>")

    def _next_html(self) -> str:
        layer, head = self.layer.value, self.head.value
        ablated = self.ablate.value
        head_row = "<th>next token</th><th>p</th>" + (f"<th>p without L{layer} H{head}</th>" if ablated else "")
        rows = "".join(
            f"<tr><td>{html.escape(repr(t))}</td><td>{p:.3f}</td>" + (f"<td>{pa:.3f}</td>" if ablated else "") + "</tr>"
            for t, p, pa in self.next_tokens)
        note = (f"<div class='picollm-ablation'>ablating layer {layer} head {head} ({self.ablation}): "
                f"KL(next-token distribution || ablated) = {self.kl:.4f} nats</div>" if ablated else
                "<div class='picollm-ablation'>tick \"ablate this head\" to see what the head changes</div>")
        return f'<table class="picollm-next-tokens"><tr>{head_row}</tr>{rows}</table>{note}'

    def _draw(self) -> None:
        fig = self._figure()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        img = base64.b64encode(buf.getvalue()).decode()
        beside = (f'<div style="display:flex;gap:1.5em;align-items:flex-start">'
                  f'<img src="data:image/png;base64,{img}" style="max-width:70%"/>'
                  f"<div>{self._scores_html()}<br/>{self._next_html()}</div></div>")
        rows = "".join(
            f"<tr><td>{q}</td><td>{html.escape(self.tokens[q])}</td><td>"
            + ", ".join(f"{html.escape(t)} ({w:.2f})" for t, w in top) + "</td></tr>"
            for q, top in enumerate(self.top))
        table = (f'<table class="picollm-top-attended"><tr><th>q</th><th>query</th>'
                 f"<th>most-attended keys (weight), layer {self.layer.value} head {self.head.value}</th></tr>"
                 f"{rows}</table>")
        _show(self.out, beside, table)

    def _ipython_display_(self):
        display(self.widget)


class FeatureExplorer:
    """Pick a basis (neurons, SAE features, ...) and a unit: see the unit's top-activating contexts, the
    activating tokens shaded by how strongly it fires (the top token boxed), its best concept when the
    tokens carry labels, and the histogram of its activations.

    acts: {basis name: (N, U) activations, one row per token}; tokens: the N tokens' texts, in the order
    of the rows (consecutive tokens are neighbours in the text); labels: optional (N,) concept ids (-1
    for none) with `concepts` their names. The state of the last redraw is kept on the object
    (`contexts`, `best_concept`, `purity`, `n_active`, `error`) so it can be tested without a browser.
    """

    def __init__(self, acts: dict, tokens: list[str], *, labels=None, concepts=(), basis: str | None = None,
                 unit: int = 0, top_k: int = 8, width: int = 12):
        if not acts:
            raise ValueError("acts is empty: give {basis name: (N, U) activations}, e.g. {'neurons': A}")
        for name, a in acts.items():
            if a.ndim != 2 or a.size(0) != len(tokens):
                raise ValueError(f"acts[{name!r}] has shape {tuple(a.shape)}: it needs one row per token "
                                 f"({len(tokens)} tokens given)")
        self.acts, self.tokens, self.top_k, self.width = acts, tokens, top_k, width
        self.labels = None if labels is None else torch.as_tensor(labels)
        self.concepts = list(concepts)
        basis = basis or next(iter(acts))
        self.basis = W.Dropdown(options=list(acts), value=basis, description="basis")
        self.unit = W.BoundedIntText(value=unit, min=0, max=acts[basis].size(1) - 1, description="unit")
        self.slider = W.IntSlider(value=unit, min=0, max=acts[basis].size(1) - 1, description="",
                                  continuous_update=False)
        W.jslink((self.unit, "value"), (self.slider, "value"))
        self.out = W.Output()
        self.contexts: list[tuple[int, float, str]] = []   # (position, activation, context text)
        self.best_concept: str | None = None
        self.purity: float | None = None
        self.n_active = 0
        self.error: str | None = None
        self.basis.observe(self._basis_changed, names="value")
        self.unit.observe(lambda change: self.update(), names="value")
        self.widget = W.VBox([W.HBox([self.basis, self.unit, self.slider]), self.out])
        self.update()

    def _basis_changed(self, change) -> None:
        n = self.acts[self.basis.value].size(1)
        if self.unit.value > n - 1:
            self.unit.value = 0                              # redraws through the unit's observer
        self.unit.max, self.slider.max = n - 1, n - 1
        self.update()

    def update(self) -> None:
        from .monosemantic import context_html, context_text

        self.error = None
        try:
            a = self.acts[self.basis.value]
            u = int(self.unit.value)
            if not 0 <= u < a.size(1):
                raise ValueError(f"unit {u} is outside 0..{a.size(1) - 1} of {self.basis.value}")
            col = a[:, u].float()
            vals, pos = col.topk(min(self.top_k, len(col)))
            self.n_active = int((col > 0).sum())
            self.contexts = [(int(p), float(v), context_text(self.tokens, int(p), self.width))
                             for p, v in zip(pos, vals)]
            self.best_concept, self.purity = None, None
            head = (f"<b>{html.escape(self.basis.value)}, unit {u}</b>: fires (&gt; 0) on {self.n_active:,} of "
                    f"{len(col):,} tokens; largest activation {float(vals[0]):.3g}")
            if self.labels is not None and self.concepts:
                lab = self.labels[pos]
                counts = torch.bincount(lab[lab >= 0], minlength=len(self.concepts))
                if counts.sum() > 0:
                    c = int(counts.argmax())
                    self.best_concept, self.purity = self.concepts[c], float(counts[c]) / len(pos)
                    head += (f"<br/>best concept among its top {len(pos)}: <b>{html.escape(self.best_concept)}"
                             f"</b> ({self.purity:.0%} of them)")
                else:
                    head += f"<br/>none of its top {len(pos)} tokens carries a concept label"
            vmax = max(float(vals[0]), 1e-9)
            values = col.tolist()
            lines = "".join(
                f"<div class='picollm-context'>{v:.3g} &nbsp; {context_html(self.tokens, values, p, self.width, vmax)}"
                f"</div>" for p, v, _ in self.contexts)
            fig, ax = plt.subplots(figsize=(6, 2.6))
            active = col[col > 0]
            ax.hist(active.numpy() if len(active) else [0.0], bins=40, color="tab:orange")
            ax.set_yscale("log")
            ax.set(title=f"{self.basis.value} {u}: activations where it fires",
                   xlabel="activation (model units)", ylabel="tokens (log scale)")
            fig.tight_layout()
            _show(self.out, f"<div class='picollm-unit'>{head}</div>", lines, fig)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.contexts = []
            _show(self.out, _error_html(exc))

    def _ipython_display_(self):
        display(self.widget)
