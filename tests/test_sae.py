"""The sparse autoencoder of lesson 09: its pieces, its training and its measures, on planted data."""

import math

import pytest
import torch

from picollm_helpers import sae as S


def planted(n=4000, d_in=16, n_feat=32, per_token=2, seed=0):
    """Tokens that are sums of `per_token` of n_feat known unit directions with positive sizes: an SAE should
    find those directions. Returns (x (n, d_in), directions (n_feat, d_in), which (n, n_feat) bool)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, d_in, generator=g), dim=-1)
    which = torch.zeros(n, n_feat, dtype=torch.bool)
    picks = torch.rand(n, n_feat, generator=g).argsort(-1)[:, :per_token]
    which.scatter_(1, picks, True)
    sizes = (1 + torch.rand(n, n_feat, generator=g)) * which
    return sizes @ dirs, dirs, which


def test_encode_is_relu_of_the_affine_map_and_topk_keeps_k_per_token():
    x, W, b, bd = torch.randn(5, 3), torch.randn(3, 7), torch.randn(7), torch.randn(3)
    torch.testing.assert_close(S.encode(x, W, b, bd), torch.relu((x - bd) @ W + b))
    f = S.encode(x, W, b, bd, k=2)
    assert ((f > 0).sum(-1) <= 2).all()
    pre = (x - bd) @ W + b
    kept = f > 0
    assert torch.equal(f[kept], pre[kept])                       # a kept feature keeps its pre-activation
    assert (pre.topk(2, -1).values[:, -1:] <= pre.max(-1, keepdim=True).values).all()


def test_decoder_rows_have_unit_norm_after_construction_and_training():
    x, _, _ = planted(n=1200)
    sae, _ = S.train_sae(x, 64, l1_coeff=0.05, steps=60, batch_size=128, seed=0, desc="test")
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    assert sae.W_enc.shape == (16, 64) and sae.b_enc.shape == (64,) and sae.b_dec.shape == (16,)


def test_loss_parts_by_hand():
    x, x_hat, f = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.tensor([[3.0, 0.0, 1.0]])
    total, recon, sparsity = S.sae_loss(x, x_hat, f, 0.5)
    assert float(recon) == 5.0 and float(sparsity) == 2.0 and float(total) == 7.0


def test_resampling_points_dead_features_at_the_worst_reconstructed_inputs():
    W_enc, b_enc, W_dec = torch.randn(3, 4), torch.randn(4), S.normalize_decoder(torch.randn(4, 3))
    dead = torch.tensor([False, True, False, True])
    x = torch.tensor([[1.0, 0, 0], [0, 5.0, 0], [0, 0, 3.0]])
    x_hat = torch.zeros(3, 3)
    We, be, Wd = S.resample_dead(W_enc, b_enc, W_dec, dead, x, x_hat, 0.2)
    torch.testing.assert_close(Wd[1], torch.tensor([0.0, 1.0, 0.0]))   # the worst input (error 25)
    torch.testing.assert_close(Wd[3], torch.tensor([0.0, 0.0, 1.0]))   # then the next worst (error 9)
    torch.testing.assert_close(We[:, 1], torch.tensor([0.0, 0.2, 0.0]))
    assert be[1] == 0 and be[3] == 0
    assert torch.equal(Wd[[0, 2]], W_dec[[0, 2]]) and torch.equal(We[:, [0, 2]], W_enc[:, [0, 2]])


def test_training_recovers_planted_features_better_than_the_untrained_sae():
    x, dirs, which = planted(seed=5)             # directions unrelated to the SAEs' random starts
    untrained = S.SparseAutoencoder(16, 64, seed=1)
    untrained.input_scale.fill_(float(x.pow(2).sum(-1).mean().sqrt() / 4))
    sae, log = S.train_sae(x, 64, l1_coeff=0.3, steps=1500, batch_size=256, lr=3e-3, seed=0, desc="test")
    m, m0 = S.sae_measures(sae, x), S.sae_measures(untrained, x)
    assert m["fvu"] < 0.1 < 0.5 < m0["fvu"]
    assert m["l0"] < 16                                           # sparse: fewer features than dimensions
    # the planted directions have decoder rows close to them, much closer than random rows are
    best = (dirs @ sae.W_dec.detach().T).max(-1).values
    best0 = (dirs @ untrained.W_dec.detach().T).max(-1).values
    assert best.mean() > 0.8 and best.mean() > best0.mean() + 0.15, (best, best0)
    assert log["loss"][-1] < log["loss"][0]


def test_training_resamples_the_features_that_did_not_fire_in_the_window():
    """Every resample_every steps the features silent for dead_window steps go to resample_fn, which the
    loop applies; the log counts them. A window of 1 step marks some features silent at once."""
    x, _, _ = planted(n=2000)
    calls = []

    def spy(W_enc, b_enc, W_dec, dead, xb, x_hat, enc_scale):
        calls.append(int(dead.sum()))
        return S.resample_dead(W_enc, b_enc, W_dec, dead, xb, x_hat, enc_scale)

    sae, log = S.train_sae(x, 128, l1_coeff=1.0, steps=200, batch_size=4, seed=2, resample_every=50,
                           dead_window=1, resample_fn=spy, desc="test")
    assert calls and sum(calls) == log["resampled"] > 0
    assert len(calls) <= 3                         # steps 50, 100, 150: never in the last quarter
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))
    _, log0 = S.train_sae(x, 128, l1_coeff=1.0, steps=200, batch_size=4, seed=2, resample_every=10 ** 9,
                          dead_window=1, resample_fn=spy, desc="test")
    assert log0["resampled"] == 0


def test_spliced_losses_bracket_the_clean_and_ablated_model():
    from picollm_helpers.interp import run_with_cache
    from picollm_helpers.models import TransformerModel

    torch.manual_seed(0)
    model = TransformerModel(vocab_size=20, embed_size=16, n_heads=2, n_blocks=1, block_size=16).eval()
    idx = torch.randint(20, (8, 16))
    _, cache = run_with_cache(model, idx, ["blocks.0.mlp.hook_post"])
    acts = cache["blocks.0.mlp.hook_post"].flatten(0, 1)

    class Perfect(torch.nn.Module):         # an exact reconstruction recovers everything
        def forward(self, a):
            return a, a
    out = S.spliced_losses(model, idx, Perfect())
    assert out["sae"] == pytest.approx(out["clean"], abs=1e-5) and out["recovered"] == pytest.approx(1.0, abs=1e-4)

    class Zero(torch.nn.Module):
        def forward(self, a):
            return torch.zeros_like(a), a
    assert S.spliced_losses(model, idx, Zero())["recovered"] == pytest.approx(0.0, abs=1e-6)
    assert acts.shape == (128, 64)


def test_concept_f1_and_purity_on_planted_units():
    labels = torch.tensor([0, 0, 1, 1, -1, -1, 0, 1])
    acts = torch.stack([
        (labels == 0).float() * torch.arange(1, 9),      # fires on exactly concept 0: F1 1 for concept 0
        (labels == 1).float() + (labels == 0).float() * 0.5,   # concept 1 first, then concept 0
        torch.arange(8.0),                               # fires more and more along the text: mixed
    ], dim=1)
    f1 = S.concept_f1(acts, labels, 2)
    assert f1[0].tolist() == [1.0, 0.0] and f1[1].tolist() == [0.0, 1.0]
    assert f1[2, 0] == pytest.approx(1 / 3) and f1[2, 1] == pytest.approx(1 / 3)
    purity, concept = S.top_purity(acts, labels, 2, k=3)
    assert purity[0] == 1.0 and concept[0] == 0 and purity[1] == 1.0 and concept[1] == 1
    assert purity[2] == pytest.approx(1 / 3)          # its top 3: one of each concept and one unlabelled
    things = S.things_per_unit(acts, labels, 2, k=4, min_share=0.25)
    assert things.tolist() == [2, 2, 3]    # unit 0: concept 0 and a token it does not fire on


def test_expected_best_of_by_hand():
    v = [0.1, 0.5, 0.9]
    assert S.expected_best_of(v, 3) == pytest.approx(0.9)
    assert S.expected_best_of(v, 1) == pytest.approx(0.5)
    assert S.expected_best_of(v, 2) == pytest.approx((0.5 + 0.9 + 0.9) / 3)
    with pytest.raises(ValueError, match="m=4"):
        S.expected_best_of(v, 4)


def test_bad_sizes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="k=9"):
        S.SparseAutoencoder(4, 8, k=9)
    with pytest.raises(ValueError, match="batch_size"):
        S.train_sae(torch.randn(10, 4), 8, batch_size=64)
    assert math.isfinite(S.sae_measures(S.SparseAutoencoder(4, 8), torch.randn(10, 4))["fvu"])
