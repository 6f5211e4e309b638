"""Lesson 06's exercises: the sinusoidal position encoding of Vaswani et al. and the rotary one (RoPE, Su et
al.), checked against the kit's models/positions.py.

sinusoidal_encoding must be float64, as the lesson's next cells use it: a float32 tensor fails on its dtype,
and one computed in float32 and cast at the end fails on the large positions, where float32 angles are off
by about 0.005.

rope_rotate must rotate the kit's pairs, (x[..., i], x[..., i + head_dim/2]) (the halves layout of GPT-NeoX
and LLaMA, which the kit's attention uses), by pos * 10000^(-2i/head_dim), counterclockwise, at the
positions it is given. The cases catch the usual mistakes: neighbouring pairs (2i, 2i+1) as in Su et al.'s
paper, another frequency base or exponent, the angle's sign, positions counted from 0 or off by one. The
last case checks the defining property on its own: the score of a query at m and a key at n must not
change when both move by the same amount (it depends on m - n only), so a map that is not a rotation fails
there with the change it makes.
"""

import torch

from ..models.positions import rope_rotate, sinusoidal_embedding
from ._core import Case, Check


def _sinusoidal_cases():
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
    "sinusoidal_encoding", sinusoidal_embedding, _sinusoidal_cases, atol=1e-9, rtol=1e-9,
    used="the kit's sinusoidal encoding", kit_names=("sinusoidal_embedding",))


SHIFT = 7   # the property case moves every query and key by this many positions


def _randn(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rope_cases():
    return [
        Case("head_dim 2 (one pair), the vector (1, 0) at positions 0..3: it turns by p radians, so position 0 is "
             "left as it is", lambda: (torch.tensor([1.0, 0.0], dtype=torch.float64).repeat(1, 1, 4, 1),
                                       torch.arange(4))),
        Case("head_dim 8, positions 0..5: pair i is (x[..., i], x[..., i + 4]) and turns at 10000^(-2i/8) "
             "radians per position", lambda: (_randn(1, 1, 6, 8, seed=0), torch.arange(6))),
        Case("positions 5..11 (not starting at 0), 2 sequences x 2 heads, head_dim 8",
             lambda: (_randn(2, 2, 7, 8, seed=1), torch.arange(5, 12))),
        Case("large positions 1000..1003, head_dim 16 (the slow pairs turn too)",
             lambda: (_randn(1, 2, 4, 16, seed=2), torch.arange(1000, 1004))),
        Case("float32 input, head_dim 16, positions 0..9: the result keeps the input's dtype",
             lambda: (_randn(2, 4, 10, 16, seed=3, dtype=torch.float32), torch.arange(10))),
        Case(f"the defining property: a query at m and a key at n (x[0] and x[1], head_dim 8, positions 0..5) score "
             f"the same after both move {SHIFT} positions on; compared is that change of every score (the "
             f"expected change is 0)", lambda: ((_randn(2, 1, 6, 8, seed=4), torch.arange(6)), {"shift": SHIFT})),
    ]


def _observe_rope(impl, x, pos, shift=0):
    """impl(x, pos), or for the property case the change of the scores q_m . k_n (x[0] the queries, x[1] the
    keys) when every position moves by `shift`: (T, T), zero for a rotation by angles proportional to it."""
    if not shift:
        return impl(x, pos)

    def scores(p):
        r = impl(x, p)                                    # (2, 1, T, hd)
        return (r[0, 0] @ r[1, 0].transpose(0, 1)).detach()   # (T, T): query position x key position

    return scores(pos + shift) - scores(pos)


check_rope_rotate = Check(
    "rope_rotate", rope_rotate, _rope_cases, observe=_observe_rope, atol=1e-6, rtol=1e-6,
    used="the kit's rope_rotate (apply_rope with rope_cos_sin's angles)",
    kit_names=("rope_rotate", "apply_rope", "rope_cos_sin"))
