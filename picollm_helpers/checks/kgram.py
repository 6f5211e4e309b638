"""Lesson 02's exercise: the k-gram MLP's forward over a whole sequence."""

import torch

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
