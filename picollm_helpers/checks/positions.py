"""Lesson 06's exercise: the sinusoidal position encoding of Vaswani et al., checked against the
kit's models/transformer.py sinusoidal_embedding."""

import torch

from ..models.transformer import sinusoidal_embedding
from ._core import Case, Check


def _observe(impl, pos, dim):
    # float32 or float64 both pass: the angles are compared, not the dtype they were computed in
    out = impl(pos, dim)
    return torch.as_tensor(out).double() if isinstance(out, torch.Tensor) else out


def _cases():
    return [
        Case("position 0, dim 4: sin(0) = 0 and cos(0) = 1, interleaved [sin, cos, sin, cos]",
             lambda: (torch.tensor([0]), 4)),
        Case("positions 0..4, dim 8", lambda: (torch.arange(5), 8)),
        Case("positions 3..9 (not starting at 0), dim 6", lambda: (torch.arange(3, 10), 6)),
        Case("large positions 1000..1003, dim 16 (the slow frequencies matter)",
             lambda: (torch.arange(1000, 1004), 16)),
        Case("positions 0..63, dim 64", lambda: (torch.arange(64), 64)),
    ]


check_sinusoidal_encoding = Check(
    "sinusoidal_encoding", sinusoidal_embedding, _cases, observe=_observe, atol=1e-5, rtol=1e-5,
    used="the kit's sinusoidal_embedding (picollm_helpers.models.transformer)",
    hint="PE[p, 2i] = sin(p / 10000**(2i/dim)) and PE[p, 2i+1] = cos(the same angle): pair i shares one "
         "frequency, and the sine and cosine of a pair sit side by side (interleaved), not in two halves")
