"""Interactive explorers for the lessons (ipywidgets).

- `TopPExplorer`: type a prompt, move p, temperature and top-k; see which next tokens the nucleus
  keeps (with their probabilities) and a continuation sampled with those settings.
- `AttentionExplorer`: type a prompt, pick a layer and a head; see the attention heatmap and, for
  each query token, the tokens it attends to most.

Every control redraws at once. A bad input (an empty prompt, a prompt longer than the model can
take) shows its error inside the explorer's output area instead of failing silently. The state
each redraw computed is kept on the object (`nucleus`, `sample_text`, `pattern`, `top`, `error`),
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

from .interp import attention_patterns, token_labels, top_attended
from .plots import plot_attention
from .sampling import _encode, _last_logits, generate, top_k_filter, top_p_filter


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
    """One head's attention heatmap and each query's most-attended tokens, for a typed prompt."""

    def __init__(self, model, tokenizer, prompt: str, *, layer: int = 0, head: int = 0, top_k: int = 3):
        self.model, self.tokenizer, self.k = model, tokenizer, top_k
        n_layers, n_heads = len(model.blocks), model.n_heads
        self.prompt = W.Text(value=prompt, description="prompt", continuous_update=False,
                             layout=W.Layout(width="80%"))
        self.layer = W.Dropdown(options=list(range(n_layers)), value=layer, description="layer")
        self.head = W.Dropdown(options=list(range(n_heads)), value=head, description="head")
        self.out = W.Output()
        self.pattern: torch.Tensor | None = None  # (T, T) of the chosen layer and head
        self.tokens: list[str] = []
        self.top: list[list[tuple[str, float]]] = []
        self.error: str | None = None
        self._cache: tuple[str, dict] | None = None  # patterns of the last prompt: switching heads is free
        for control in (self.prompt, self.layer, self.head):
            control.observe(lambda change: self.update(), names="value")
        self.widget = W.VBox([self.prompt, W.HBox([self.layer, self.head]), self.out])
        self.update()

    def _patterns(self) -> dict:
        prompt = self.prompt.value
        if self._cache is None or self._cache[0] != prompt:
            ids = _prompt_ids(self.tokenizer, prompt)
            if len(ids) > self.model.block_size:
                raise ValueError(f"the prompt has {len(ids)} tokens but the model's context is "
                                 f"{self.model.block_size}: shorten it.")
            self.tokens = token_labels(self.tokenizer, ids)
            self._cache = (prompt, attention_patterns(self.model, torch.tensor(ids)))
        return self._cache[1]

    def update(self) -> None:
        self.error = None
        try:
            attn = self._patterns()
            self.pattern = attn[f"blocks.{self.layer.value}.attn"][0, self.head.value].float().cpu()
            self.top = top_attended(self.pattern, self.tokens, self.k)
            self._draw()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.pattern, self.top = None, []
            _show(self.out, _error_html(exc))

    def _draw(self) -> None:
        n = len(self.tokens)
        fig, ax = plt.subplots(figsize=(min(3 + 0.45 * n, 12), min(2.5 + 0.4 * n, 10)))
        plot_attention(self.pattern, self.tokens, ax=ax,
                       title=f"Layer {self.layer.value}, head {self.head.value}")
        rows = "".join(
            f"<tr><td>{q}</td><td>{html.escape(self.tokens[q])}</td><td>"
            + ", ".join(f"{html.escape(t)} ({w:.2f})" for t, w in top) + "</td></tr>"
            for q, top in enumerate(self.top))
        table = (f'<table class="picollm-top-attended"><tr><th>q</th><th>query</th>'
                 f"<th>most-attended keys (weight), layer {self.layer.value} head {self.head.value}</th></tr>"
                 f"{rows}</table>")
        _show(self.out, fig, table)

    def _ipython_display_(self):
        display(self.widget)
