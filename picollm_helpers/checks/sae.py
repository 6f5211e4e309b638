"""Lesson 09's exercises: the sparse autoencoder's encoder, decoder normalisation, loss and dead-feature
resampling, each against the kit's reference in picollm_helpers.sae."""

import torch

from ..sae import encode, normalize_decoder, resample_dead, sae_loss
from ._core import Case, Check


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _params(seed, N, d_in, d_sae):
    g = _g(seed)
    x = torch.randn(N, d_in, generator=g)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
    b_enc = torch.randn(d_sae, generator=g) * 0.3
    b_dec = torch.randn(d_in, generator=g) * 0.5
    return x, W_enc, b_enc, b_dec


def _encode_cases():
    return [
        Case("ReLU: 2 tokens, d_in=3, d_sae=4, a hand-made encoder",
             lambda: (torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]]),
                      torch.tensor([[1.0, -1.0, 0.0, 0.5], [0.0, 1.0, -1.0, 0.5], [1.0, 0.0, 1.0, -0.5]]),
                      torch.tensor([0.0, -0.5, 0.1, 0.0]), torch.tensor([0.5, 0.0, -0.5]))),
        Case("ReLU: random, N=6, d_in=5, d_sae=12", lambda: _params(0, 6, 5, 12)),
        Case("TopK with k=3: random, N=5, d_in=4, d_sae=10",
             lambda: (_params(1, 5, 4, 10), {"k": 3})),
        Case("TopK with k=2: a token whose top pre-activations are negative (ReLU'd to 0)",
             lambda: ((torch.tensor([[1.0, 1.0]]), torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]]),
                       torch.zeros(3), torch.zeros(2)), {"k": 2})),
    ]


check_sae_encode = Check("sae_encode", encode, _encode_cases, atol=1e-5, rtol=1e-5, kit_names=("encode",))


def _normalize_cases():
    return [
        Case("W_dec (2 features, d_in=2): rows of norm 5 and 1", lambda: torch.tensor([[3.0, 4.0], [0.0, 1.0]])),
        Case("W_dec (3 features, d_in=2): a non-square matrix", lambda: torch.tensor([[2.0, 0.0], [1.0, 1.0],
                                                                                     [0.0, -3.0]])),
        Case("random W_dec, 16 features, d_in=6", lambda: torch.randn(16, 6, generator=_g(2)) * 3),
    ]


check_normalize_decoder = Check("normalize_decoder", normalize_decoder, _normalize_cases, atol=1e-6, rtol=1e-5,
                                 kit_names=("normalize_decoder",))


def _loss_cases():
    def case(seed, N, d, d_sae, l1):
        g = _g(seed)
        return (torch.randn(N, d, generator=g), torch.randn(N, d, generator=g),
                torch.relu(torch.randn(N, d_sae, generator=g)), l1)
    return [
        Case("one token: x=[1, 2], x_hat=[0, 0], f=[3, 0, 1], l1_coeff=0.5",
             lambda: (torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.tensor([[3.0, 0.0, 1.0]]), 0.5)),
        Case("random, N=7 tokens, d_in=4, d_sae=9, l1_coeff=0.1", lambda: case(3, 7, 4, 9, 0.1)),
        Case("random, N=3 tokens, d_in=6, d_sae=5, l1_coeff=2.0", lambda: case(4, 3, 6, 5, 2.0)),
    ]


check_sae_loss = Check("sae_loss", sae_loss, _loss_cases, atol=1e-5, rtol=1e-5, kit_names=("sae_loss",))


def _resample_cases():
    def case(seed, N, d_in, d_sae, dead_ids, scale):
        g = _g(seed)
        W_dec = normalize_decoder(torch.randn(d_sae, d_in, generator=g))
        W_enc = torch.randn(d_in, d_sae, generator=g)
        b_enc = torch.randn(d_sae, generator=g)
        dead = torch.zeros(d_sae, dtype=torch.bool)
        dead[dead_ids] = True
        x = torch.randn(N, d_in, generator=g)
        x_hat = x + torch.randn(N, d_in, generator=g) * torch.rand(N, 1, generator=g)   # errors of many sizes
        return W_enc, b_enc, W_dec, dead, x, x_hat, scale
    return [
        Case("one dead feature (index 1 of 3), 4 inputs, d_in=2", lambda: case(5, 4, 2, 3, [1], 0.2)),
        Case("three dead features (0, 4, 5 of 8), 10 inputs, d_in=3", lambda: case(6, 10, 3, 8, [0, 4, 5], 0.5)),
        Case("no dead feature: nothing changes", lambda: case(7, 5, 3, 4, [], 0.2)),
    ]


check_resample_dead = Check("resample_dead", resample_dead, _resample_cases, atol=1e-5, rtol=1e-5,
                             kit_names=("resample_dead",))
