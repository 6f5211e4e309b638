"""Lesson 02's exercises: the k-gram windows as a loop over positions, and the k-gram MLP's forward over a whole
sequence."""

import torch
import torch.nn.functional as F

from ..models.kgram import KGramMLPSeqModel
from ._core import Case, Check


def kgram_logits(model, idx):
    """The kit's reference: KGramMLPSeqModel.forward, logits (B, T, V) at every position."""
    return model(idx)


def _observe(impl, seed, model_kwargs, shape):
    torch.manual_seed(seed)
    model = KGramMLPSeqModel(**model_kwargs).eval()
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(1, model_kwargs["vocab_size"], shape, generator=g)  # (B, T), never the pad id
    with torch.no_grad():
        return impl(model, idx)


def _cases():
    settings = [
        ("k=3, embedding inputs, B=2, T=6", dict(vocab_size=20, k=3, embed_size=8, input_mode="embedding"), (2, 6)),
        ("k=3, one-hot inputs, B=2, T=6", dict(vocab_size=20, k=3, embed_size=8, input_mode="onehot"), (2, 6)),
        ("k=1 (only the current token), embedding", dict(vocab_size=15, k=1, embed_size=4), (3, 5)),
        ("k=5 longer than the sequence (T=3): every window is padded", dict(vocab_size=12, k=5, embed_size=6), (2, 3)),
        ("two inner layers, one-hot, k=2", dict(vocab_size=10, k=2, embed_size=6, num_inner_layers=2,
                                               input_mode="onehot"), (1, 7)),
        ("no inner layer, embedding, k=4", dict(vocab_size=30, k=4, embed_size=8, num_inner_layers=0), (2, 9)),
    ]
    return [Case(label, lambda s=seed, kw=kw, sh=sh: (s, kw, sh)) for seed, (label, kw, sh) in enumerate(settings)]


check_kgram_logits = Check(
    "kgram_logits", kgram_logits, _cases, observe=_observe, atol=1e-5, rtol=1e-4, kit_names=("kgram_forward_loop",))


def kgram_windows(idx, k, pad_id):
    """The kit's reference: (B, T) ids -> (B, T, k) windows, row t holding tokens t-k+1..t in order,
    the slots before the start of the text filled with pad_id (KGramMLPSeqModel.windows)."""
    return F.pad(idx, (k - 1, 0), value=pad_id).unfold(1, k, 1)


def _window_cases():
    def make(seed, B, T):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(1, 50, (B, T), generator=g)

    return [
        Case("ids [[5, 6, 7, 8]], k=3, pad_id=0", lambda: (torch.tensor([[5, 6, 7, 8]]), 3, 0)),
        Case("ids [[5, 6, 7, 8]], k=2, pad_id=99 (the pad is not 0)", lambda: (torch.tensor([[5, 6, 7, 8]]), 2, 99)),
        Case("k=1: each window is the current token alone", lambda: (make(1, 2, 5), 1, 0)),
        Case("k=5 longer than the sequence (T=3)", lambda: (make(2, 2, 3), 5, 77)),
        Case("a batch (B=3, T=8), k=3, pad_id=50", lambda: (make(3, 3, 8), 3, 50)),
    ]


def _observe_windows(impl, idx, k, pad_id):
    out = impl(idx, k, pad_id)
    return out.contiguous() if isinstance(out, torch.Tensor) else out


check_kgram_windows = Check(
    "kgram_windows", kgram_windows, _window_cases, observe=_observe_windows, atol=0, rtol=0)
