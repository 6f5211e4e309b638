import math

import pytest
import torch

from picollm_helpers.history import History
from picollm_helpers.plots import figure_path, moving_average, plot_attention, plot_history, plot_runs, save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def figures_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOLLM_FIGURES", str(tmp_path / "figures"))


def fake_history(name="lstm", steps=60, epochs=3, offset=0.0):
    per_epoch = steps // epochs
    return History(name=name, kind="lstm",
                   train_loss=[(s, 5.0 * math.exp(-s / 20) + 1.0 + offset + 0.1 * math.sin(s))
                               for s in range(1, steps + 1)],
                   test_loss=[(e, e * per_epoch, 5.0 * math.exp(-e * per_epoch / 20) + 1.3 + offset)
                              for e in range(1, epochs + 1)])


def is_png(path):
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_history_saves_under_a_stable_name_in_figures(tmp_path):
    fig = plot_history(fake_history(), path="01_lstm_loss.png")
    assert is_png(tmp_path / "figures" / "01_lstm_loss.png")
    ax = fig.axes[0]
    assert ax.get_title() == "lstm: train loss per step, test loss per epoch"
    assert "step" in ax.get_xlabel() and "nats/token" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(l.startswith("train") for l in labels) and any(l.startswith("test") for l in labels)
    # saving again replaces the file in place, leaving nothing else behind
    plot_history(fake_history(), path="01_lstm_loss", title="again")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["01_lstm_loss.png"]


def test_figure_path_rules(tmp_path):
    assert figure_path("a.png") == tmp_path / "figures" / "a.png"
    assert figure_path(tmp_path / "x" / "b") == tmp_path / "x" / "b.png"


def test_plot_runs_mean_and_band_over_seeds(tmp_path):
    runs = {"E=64": [fake_history(offset=o) for o in (0.0, 0.2, 0.4)], "E=128": fake_history(offset=-0.5)}
    out = tmp_path / "cmp" / "embed.png"
    fig = plot_runs(runs, metric="train", path=out, smooth=5)
    assert is_png(out)
    ax = fig.axes[0]
    assert len(ax.collections) == 1                       # one band: only E=64 has several seeds
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["E=64 (mean of 3, min-max)", "E=128"]
    mean_line = ax.get_lines()[0]
    assert mean_line.get_xdata()[0] == 5                  # 5-step trailing mean starts at step 5
    fig = plot_runs(runs, metric="test", band="std", title="test loss")
    assert fig.axes[0].get_title() == "test loss" and len(fig.axes[0].get_lines()[0].get_xdata()) == 3
    with pytest.raises(ValueError, match="metric"):
        plot_runs(runs, metric="val")


def test_plot_attention_heatmap(tmp_path):
    tokens = ["Once", " upon", " a", " time", ","]
    scores = torch.randn(5, 5).masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), float("-inf"))
    attn = scores.softmax(-1)
    fig = plot_attention(attn, tokens, title="blocks.0.attn head 1", path="attn_test.png")
    assert is_png(tmp_path / "figures" / "attn_test.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    assert "query" in ax.get_ylabel() and "key" in ax.get_xlabel() and ax.get_title() == "blocks.0.attn head 1"
    with pytest.raises(ValueError, match=r"\(T, T\)"):
        plot_attention(attn[None], tokens)
    with pytest.raises(ValueError, match="tokens"):
        plot_attention(attn, tokens[:3])
    # drawing into a caller's axes (a grid of heads) returns that figure
    from matplotlib.figure import Figure
    grid = Figure()
    axes = grid.subplots(1, 2)
    assert plot_attention(attn, tokens, ax=axes[1]) is grid


def test_save_figure_writes_a_png_under_figures_by_bare_name(tmp_path):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, "00_line")
    plt.close(fig)
    assert path == tmp_path / "figures" / "00_line.png"
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_moving_average_is_a_trailing_mean():
    x, y = moving_average([1, 2, 3, 4, 5], [1.0, 3.0, 5.0, 7.0, 9.0], window=2)
    assert x.tolist() == [2, 3, 4, 5] and y.tolist() == [2.0, 4.0, 6.0, 8.0]
    x, y = moving_average([1, 2], [4.0, 6.0], window=10)       # the window shrinks to the data
    assert x.tolist() == [2] and y.tolist() == [5.0]
