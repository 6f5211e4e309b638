"""Figures for the lessons: loss curves, run comparisons and attention heatmaps.

Every function returns the matplotlib Figure; in a notebook it is also displayed (so write
`fig = plot_history(h)` or end the line with `;` to avoid showing it twice). `path` saves a PNG
atomically: a bare file name ("04_transformer_loss.png") goes to the repository's figures/
folder (config.figures_dir(): $PICOLLM_FIGURES or <repo>/figures), a path with a folder goes
where it says.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .config import figures_dir
from .files import write_bytes
from .history import History
from .progress import in_notebook
from .timing import phase

LOSS_LABEL = "cross-entropy loss (nats/token)"
STEP_LABEL = "global step (optimizer updates)"


def figure_path(path) -> Path:
    """Where `path` is saved: a bare name lands in figures/, '.png' is added if missing."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        p = p.with_name(p.name + ".png")
    if p.parent == Path("."):
        p = figures_dir() / p
    return p


@phase("plot")
def png_bytes(fig, dpi: int = 110, **savefig_kwargs) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig_kwargs)
    return buf.getvalue()


def save_figure(fig, name, dpi: int = 110) -> Path:
    """Save a matplotlib figure as a PNG (atomically), tightly cropped; return where it went.

    A bare name ("05_train_test_gap") lands in figures/ ($PICOLLM_FIGURES), '.png' is added if
    missing. Lessons call it for every figure they draw with pyplot, so names stay stable.
    """
    return write_bytes(figure_path(name), png_bytes(fig, dpi=dpi, bbox_inches="tight"))


def _finish(fig: Figure, path=None, show: bool = True) -> Figure:
    """Save (atomically) and display in a notebook; returns the figure."""
    png = None
    if path is not None:
        png = png_bytes(fig)
        write_bytes(figure_path(path), png)
    if show and in_notebook():
        from IPython.display import Image, display
        display(Image(data=png or png_bytes(fig)))
    return fig


def _new_axes(figsize=(8, 4.5)):
    fig = Figure(figsize=figsize, layout="constrained")
    with sns.axes_style("whitegrid"):
        ax = fig.subplots()
    return fig, ax


def moving_average(steps, values, window: int):
    """Trailing mean of `values` over `window` points: (x, y) with x the last step of each window.

    The curves the lessons compare are per-step losses, noisy at batch 16; a trailing window keeps
    each point a function of the past only, so a smoothed curve never "knows" later steps.
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    window = max(1, min(int(window), len(values)))
    if window == 1:
        return steps, values
    kernel = np.ones(window) / window
    return steps[window - 1:], np.convolve(values, kernel, mode="valid")


def _auto_window(n: int) -> int:
    return max(1, n // 25)


def _draw_history(ax, history: History):
    palette = sns.color_palette()
    if history.train_loss:
        steps, losses = zip(*history.train_loss)
        window = _auto_window(len(losses))
        ax.plot(steps, losses, color=palette[0], alpha=0.3 if window > 1 else 1.0, lw=1,
                label="train (per step)")
        if window > 1:
            ax.plot(*moving_average(steps, losses, window), color=palette[0], lw=2,
                    label=f"train ({window}-step moving mean)")
    if history.test_loss:
        _, steps, losses = zip(*history.test_loss)
        ax.plot(steps, losses, "o-", color=palette[1], lw=2, label="test (full test set, end of epoch)")
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if history.train_loss or history.test_loss:
        ax.legend()


def history_figure(history: History, title=None) -> Figure:
    fig, ax = _new_axes()
    _draw_history(ax, history)
    ax.set_title(title or f"{history.name or 'model'}: train loss per step, test loss per epoch")
    return fig


def plot_history(history: History, path=None, title=None) -> Figure:
    """The report's figure: training loss per step and test loss per epoch, x = global step."""
    if not isinstance(history, History):
        raise ValueError(f"plot_history takes the History that train() returns, got {type(history).__name__}")
    return _finish(history_figure(history, title), path)


def _series(h: History, metric: str):
    if metric == "train":
        return [s for s, _ in h.train_loss], [l for _, l in h.train_loss]
    return [s for _, s, _ in h.test_loss], [l for _, _, l in h.test_loss]


def plot_runs(runs: dict, metric: str = "train", path=None, title=None, smooth: int | None = None,
              band: str = "minmax") -> Figure:
    """Compare runs: {label: History or [History, ...] (several seeds)}.

    metric: "train" (per step, moving mean over `smooth` steps; None picks n/25) or "test"
    (per epoch). Several histories under one label draw their mean with a band: band="minmax"
    (min to max over seeds) or "std" (mean +- one standard deviation).
    """
    if metric not in ("train", "test"):
        raise ValueError(f"metric={metric!r}: use 'train' or 'test'")
    if band not in ("minmax", "std"):
        raise ValueError(f"band={band!r}: use 'minmax' or 'std'")
    if not runs:
        raise ValueError("plot_runs needs at least one run: {label: History}")
    fig, ax = _new_axes()
    palette = sns.color_palette("tab10", max(10, len(runs)))
    for color, (label, hs) in zip(palette, runs.items()):
        hs = [hs] if isinstance(hs, History) else list(hs)
        curves = []
        for h in hs:
            steps, vals = _series(h, metric)
            if metric == "train" and vals:
                steps, vals = moving_average(steps, vals, smooth or _auto_window(len(vals)))
            curves.append((np.asarray(steps, dtype=float), np.asarray(vals, dtype=float)))
        curves = [c for c in curves if len(c[0])]
        if not curves:
            continue
        n = min(len(s) for s, _ in curves)                 # seeds may differ in length: align on the shortest
        steps = curves[0][0][:n]
        vals = np.stack([v[:n] for _, v in curves])       # (seeds, n)
        mean = vals.mean(axis=0)
        marker = "o-" if metric == "test" else "-"
        if len(curves) == 1:
            ax.plot(steps, mean, marker, color=color, lw=2, label=str(label))
            continue
        lo, hi = ((vals.min(axis=0), vals.max(axis=0)) if band == "minmax"
                  else (mean - vals.std(axis=0), mean + vals.std(axis=0)))
        ax.plot(steps, mean, marker, color=color, lw=2,
                label=f"{label} (mean of {len(curves)}, {'min-max' if band == 'minmax' else '±1 std'})")
        ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    default = "Training loss (moving mean)" if metric == "train" else "Test loss (full test set, per epoch)"
    ax.set_title(title or default)
    return _finish(fig, path)


def _token_label(t: str) -> str:
    return t.replace("\n", "\\n").replace("\t", "\\t")


def plot_attention(attn, tokens: list[str], title=None, ax=None, path=None, vmax: float = 1.0) -> Figure:
    """Heatmap of one head's attention: row q (query, y) gives how much token q attends to
    each key k <= q (x). attn: (T, T) tensor or array; tokens: the T token strings.
    With ax= it draws into that axes (e.g. a grid of heads) and shows nothing itself."""
    a = torch.as_tensor(attn).detach().float().cpu().numpy() if not isinstance(attn, np.ndarray) else attn
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"attn must be one head's (T, T) matrix, got shape {tuple(a.shape)}: "
                         f"select it, e.g. attn[0, head] from a (B, H, T, T) tensor")
    if len(tokens) != a.shape[0]:
        raise ValueError(f"{len(tokens)} tokens for a {a.shape[0]}x{a.shape[0]} attention matrix: "
                         f"pass one label per position")
    own = ax is None
    if own:
        side = min(12.0, 3.0 + 0.35 * len(tokens))
        fig, ax = _new_axes(figsize=(side + 1.5, side))
    labels = [_token_label(t) for t in tokens]
    sns.heatmap(a, ax=ax, cmap="viridis", vmin=0.0, vmax=vmax, square=True,
                xticklabels=labels, yticklabels=labels, cbar_kws={"label": "attention weight"})
    ax.set_xlabel("key position (token attended to)")
    ax.set_ylabel("query position (token attending)")
    ax.tick_params(axis="x", labelrotation=90)
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_title(title or "Attention pattern")
    return _finish(ax.figure, path, show=own)
