"""Lesson 06's exercise: the sinusoidal position encoding of Vaswani et al., checked against the
kit's models/transformer.py sinusoidal_embedding. The result must be float64, as the lesson's next
cells use it: a float32 tensor fails on its dtype, and one computed in float32 and cast at the end
fails on the large positions, where float32 angles are off by about 0.005."""

import torch

from ..models.transformer import sinusoidal_embedding
from ._core import Case, Check


def _cases():
    return [
        Case("position 0, dim 4: sin(0) = 0 and cos(0) = 1, interleaved [sin, cos, sin, cos]",
             lambda: (torch.tensor([0]), 4)),
        Case("positions 0..4, dim 8", lambda: (torch.arange(5), 8)),
        Case("positions 3..9 (not starting at 0), dim 6", lambda: (torch.arange(3, 10), 6)),
        Case("large positions 100000..100003, dim 16: float32 angles are off by about 0.005 there",
             lambda: (torch.arange(100_000, 100_004), 16)),
        Case("positions 0..63, dim 64", lambda: (torch.arange(64), 64)),
    ]


check_sinusoidal_encoding = Check(
    "sinusoidal_encoding", sinusoidal_embedding, _cases, atol=1e-9, rtol=1e-9,
    used="the kit's sinusoidal encoding", kit_names=("sinusoidal_embedding",))
