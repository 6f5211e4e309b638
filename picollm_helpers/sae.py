"""A sparse autoencoder (SAE) over a model's activations, its training, and the measures of how good it is.

A layer's activations x (d_in numbers per token) are rewritten as a sparse sum of learned directions:

    f     = ReLU((x - b_dec) @ W_enc + b_enc)          (N, d_sae)  feature activations, mostly 0
    x_hat = f @ W_dec + b_dec                          (N, d_in)   the reconstruction

with d_sae > d_in features (Bricken et al., 2023, "Towards Monosemanticity"). The names and shapes
are SAELens's: W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,); feature i's
direction is row i of W_dec (a column of W_d in Bricken et al.'s layout) and has unit norm, so a
feature's size lives in f alone and the L1 penalty cannot be dodged by shrinking f and growing W_dec.
With `k` set, the encoder is TopK instead (Gao et al., 2024): keep each token's k largest
pre-activations (ReLU'd), zero the rest.

Training minimises reconstruction + sparsity, `sae_loss`: the squared error summed over d_in plus
l1_coeff x the L1 norm of f, both averaged over tokens. Features that stop firing ("dead") are
resampled every `resample_every` steps (`resample_dead`): each dead feature is pointed at an input
the SAE reconstructs worst.

The measures (`sae_measures`, `spliced_losses`):
  fvu             fraction of variance unexplained: sum (x - x_hat)^2 / sum (x - mean x)^2
  l0              active features per token (mean number of f > 0)
  dead            share of features that never fire on the evaluation tokens
  loss recovered  (L_zero - L_sae) / (L_zero - L_clean): the language model's loss with x_hat spliced
                  in for x, between the clean model (1) and the layer zero-ablated (0)

And against ground truth (`concept_f1`): for a unit u (a neuron or a feature) and a concept c with
N_c tokens, the share of u's N_c most active tokens that carry c. At that cut precision = recall, so
the number is both (the "R-precision", the break-even point of the precision-recall curve).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .progress import progress
from .timing import phase

# ----------------------------------------------------------------------------------------------
# The pieces (each one an exercise of lesson 09)

def encode(x, W_enc, b_enc, b_dec, k=None):
    """Feature activations (N, d_sae) of inputs x (N, d_in): ReLU((x - b_dec) @ W_enc + b_enc), or with
    k set, only each row's k largest pre-activations kept (ReLU'd), the others 0 (TopK)."""
    pre = (x - b_dec) @ W_enc + b_enc                     # (N, d_sae)
    if k is None:
        return F.relu(pre)
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))


def normalize_decoder(W_dec):
    """W_dec (d_sae, d_in) with every row (one feature's direction) scaled to unit L2 norm."""
    return W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def sae_loss(x, x_hat, f, l1_coeff):
    """(total, reconstruction, sparsity): the squared error summed over d_in and the L1 norm of f summed
    over features, each averaged over the tokens; sparsity = l1_coeff x that L1; total = their sum."""
    recon = (x_hat - x).pow(2).sum(-1).mean()
    sparsity = l1_coeff * f.abs().sum(-1).mean()
    return recon + sparsity, recon, sparsity


def resample_dead(W_enc, b_enc, W_dec, dead, x, x_hat, enc_scale):
    """New (W_enc, b_enc, W_dec) with each dead feature re-pointed at a badly reconstructed input.

    dead: (d_sae,) bool. The inputs are ranked by squared error, worst first; the i-th dead feature (in
    index order) takes the i-th worst input's residual r = x - x_hat: its decoder row becomes r / |r|,
    its encoder column r / |r| x enc_scale, its encoder bias 0. The other features are unchanged; the
    inputs are not modified."""
    W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
    idx = dead.nonzero().flatten()                        # the dead features, in index order
    if len(idx) == 0:
        return W_enc, b_enc, W_dec
    resid = x - x_hat                                     # (N, d_in)
    worst = resid.pow(2).sum(-1).argsort(descending=True)[: len(idx)]
    idx = idx[: len(worst)]                               # more dead features than inputs: the rest wait
    d = resid[worst] / resid[worst].norm(dim=-1, keepdim=True).clamp_min(1e-12)   # (n_dead, d_in)
    W_dec[idx] = d
    W_enc[:, idx] = d.T * enc_scale
    b_enc[idx] = 0.0
    return W_enc, b_enc, W_dec


# ----------------------------------------------------------------------------------------------
# The module and its training

class SparseAutoencoder(nn.Module):
    """An SAE with SAELens's parameter names (see the module docstring). `input_scale`: the activations
    are divided by it before encoding and the reconstruction multiplied back (train_sae sets it so the
    inputs have mean squared norm d_in, which makes one l1_coeff fit every layer)."""

    def __init__(self, d_in: int, d_sae: int, k: int | None = None, seed: int = 0):
        super().__init__()
        if d_in < 1 or d_sae < 1:
            raise ValueError(f"d_in={d_in}, d_sae={d_sae}: both must be >= 1 (d_sae > d_in for an overcomplete SAE)")
        if k is not None and not 1 <= k <= d_sae:
            raise ValueError(f"k={k}: TopK keeps 1..d_sae={d_sae} features per token; or k=None for ReLU")
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        g = torch.Generator().manual_seed(seed)
        W_dec = normalize_decoder(torch.randn(d_sae, d_in, generator=g))
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())        # tied at the start, free afterwards
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.tensor(1.0))

    def encode(self, x):
        """(…, d_in) activations, in the model's units -> (…, d_sae) feature activations."""
        return encode(x / self.input_scale, self.W_enc, self.b_enc, self.b_dec, self.k)

    def decode(self, f):
        """(…, d_sae) feature activations -> (…, d_in) reconstruction, in the model's units."""
        return (f @ self.W_dec + self.b_dec) * self.input_scale

    def forward(self, x):
        """x (…, d_in) -> (x_hat (…, d_in), f (…, d_sae))."""
        f = self.encode(x)
        return self.decode(f), f


def train_sae(acts, d_sae: int, *, k: int | None = None, l1_coeff: float = 1.0, steps: int = 2000,
              batch_size: int = 512, lr: float = 1e-3, seed: int = 0, resample_every: int = 500,
              dead_window: int = 250, encode_fn=encode, loss_fn=sae_loss, normalize_fn=normalize_decoder,
              resample_fn=resample_dead, desc: str = "SAE") -> tuple[SparseAutoencoder, dict]:
    """Train an SAE on acts (N, d_in) for `steps` Adam steps of `batch_size` tokens drawn with `seed`.

    The pieces are arguments, so a lesson trains with the ones its student wrote. After every step the
    decoder rows are renormalised; every `resample_every` steps (until the last quarter) the features
    that have not fired in the last `dead_window` steps are resampled from the batch (their Adam state
    reset). Returns (sae, log): log has the per-step losses and the number of features resampled.
    """
    if acts.ndim != 2 or len(acts) < batch_size:
        raise ValueError(f"acts has shape {tuple(acts.shape)}: train_sae needs (N, d_in) with N >= batch_size="
                         f"{batch_size}; collect more tokens or lower batch_size")
    acts = acts.detach().float()
    sae = SparseAutoencoder(acts.size(1), d_sae, k=k, seed=seed)
    scale = acts.pow(2).sum(-1).mean().sqrt() / math.sqrt(acts.size(1))   # mean squared norm -> d_in
    sae.input_scale.fill_(float(scale))
    x_all = acts / scale
    with torch.no_grad():
        sae.b_dec.copy_(x_all.median(dim=0).values)       # start the decoder bias at a typical input
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    g = torch.Generator().manual_seed(seed)
    last_fired = torch.zeros(d_sae, dtype=torch.long)
    log = {"loss": [], "recon": [], "resampled": 0}
    with phase("train"):
        for step in progress(range(1, steps + 1), desc=desc, leave=False):
            x = x_all[torch.randint(len(x_all), (batch_size,), generator=g)]
            f = encode_fn(x, sae.W_enc, sae.b_enc, sae.b_dec, sae.k)
            x_hat = f @ sae.W_dec + sae.b_dec
            loss, recon, _ = loss_fn(x, x_hat, f, l1_coeff)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                sae.W_dec.copy_(normalize_fn(sae.W_dec))
                last_fired[(f > 0).any(0)] = step
                if step % resample_every == 0 and step <= 0.75 * steps:
                    dead = (step - last_fired) >= dead_window
                    if dead.any():
                        alive = ~dead
                        enc_scale = 0.2 * float(sae.W_enc[:, alive].norm(dim=0).mean()) if alive.any() else 0.2
                        W_enc, b_enc, W_dec = resample_fn(sae.W_enc, sae.b_enc, sae.W_dec, dead, x, x_hat.detach(),
                                                          enc_scale)
                        sae.W_enc.copy_(W_enc), sae.b_enc.copy_(b_enc), sae.W_dec.copy_(W_dec)
                        for p, rows in ((sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,)),
                                        (sae.W_dec, (dead,))):
                            for state in opt.state[p].values():
                                if torch.is_tensor(state) and state.shape == p.shape:
                                    state[rows] = 0.0
                        last_fired[dead] = step
                        log["resampled"] += int(dead.sum())
            log["loss"].append(float(loss.detach()))
            log["recon"].append(float(recon.detach()))
    return sae.eval(), log


# ----------------------------------------------------------------------------------------------
# Measures

@torch.no_grad()
def sae_measures(sae: SparseAutoencoder, acts) -> dict:
    """fvu, l0 and the dead share of an SAE on acts (N, d_in) (see the module docstring)."""
    x_hat, f = sae(acts)
    fvu = float((acts - x_hat).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum())
    fired = (f > 0)
    return {"fvu": fvu, "l0": float(fired.sum(-1).float().mean()), "dead": float((~fired.any(0)).float().mean())}


@torch.no_grad()
def spliced_losses(model, idx, sae: SparseAutoencoder, hook: str = "blocks.0.mlp.hook_post") -> dict:
    """Next-token loss (nats/token) on idx (B, T) of the clean model, with the SAE's reconstruction spliced
    in for the activation, and with that activation zero-ablated; and the loss recovered.

    A transformer is spliced at its hook point `hook`; an LSTM or k-gram MLP at its hidden state, the
    input of lm_head (models with a `hidden` method)."""
    from .interp import run_with_hooks

    def loss(logits):
        return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten()))

    if hasattr(model, "blocks"):
        def run(fn):
            return model(idx) if fn is None else run_with_hooks(model, idx, {hook: lambda a, name: fn(a)})
    else:
        h = model.hidden(idx)

        def run(fn):
            return model.lm_head(h if fn is None else fn(h))

    out = {"clean": loss(run(None)), "sae": loss(run(lambda a: sae(a)[0])),
           "zero": loss(run(torch.zeros_like))}
    out["recovered"] = (out["zero"] - out["sae"]) / (out["zero"] - out["clean"])
    return out


@torch.no_grad()
def concept_f1(acts, labels, n_concepts: int):
    """(U, C): for unit u (a column of acts (N, U)) and concept c, the share of u's N_c most active tokens
    that carry c, where N_c is how many tokens carry it (labels (N,): a concept id, or -1 for none).
    At that cut precision equals recall, so it is also the F1. A concept with no token gets 0."""
    labels = torch.as_tensor(labels)
    counts = torch.stack([(labels == c).sum() for c in range(n_concepts)])     # (C,)
    n_max = int(counts.max()) if n_concepts else 0
    out = torch.zeros(acts.size(1), n_concepts)
    if n_max == 0:
        return out
    top = acts.float().topk(n_max, dim=0).indices                                # (n_max, U)
    lab = labels[top]                                                            # (n_max, U)
    for c in range(n_concepts):
        n = int(counts[c])
        if n:
            out[:, c] = (lab[:n] == c).sum(0).float() / n
    return out


def expected_best_of(values, m: int) -> float:
    """The expected largest of m values drawn without replacement from `values` (1-D): what the best of
    m units scores, so a basis of many units and one of few are compared at the same count."""
    v = torch.as_tensor(values, dtype=torch.float64).sort().values                # ascending
    n = len(v)
    if not 1 <= m <= n:
        raise ValueError(f"m={m} must be between 1 and the number of values ({n})")
    j = torch.arange(1, n + 1, dtype=torch.float64)                              # rank of each value
    # P(the max of the draw is the j-th smallest) = C(j-1, m-1) / C(n, m), 0 for j < m
    logp = (torch.lgamma(j) - torch.lgamma(torch.tensor(m, dtype=torch.float64)) - torch.lgamma(j - m + 1)
            - (math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1)))
    p = torch.where(j >= m, logp.exp(), torch.zeros_like(j))
    return float((p * v).sum())


@torch.no_grad()
def things_per_unit(acts, labels, n_concepts: int, k: int = 50, min_share: float = 0.1):
    """(U,): how many different things each unit's k most active tokens are: the concepts, and "no
    concept" as one more, that each hold at least min_share of them."""
    labels = torch.as_tensor(labels)
    top = acts.float().topk(min(k, len(acts)), dim=0).indices                    # (k, U)
    lab = labels[top].clamp_min(-1) + 1                                          # 0 = no concept
    shares = F.one_hot(lab, n_concepts + 1).float().mean(0)                      # (U, C + 1)
    return (shares >= min_share).sum(-1)


@torch.no_grad()
def top_activations(acts, unit: int, k: int = 10):
    """The k (position, activation) pairs where column `unit` of acts (N, U) is largest, largest first."""
    vals, pos = acts[:, unit].float().topk(min(k, len(acts)))
    return list(zip(pos.tolist(), vals.tolist()))


@torch.no_grad()
def top_purity(acts, labels, n_concepts: int, k: int = 20):
    """(purity (U,), concept (U,)): for each unit, the concept held by the largest share of its k most
    active tokens, and that share (tokens of no concept count against every concept). A unit whose top
    tokens are all pets' names has purity 1; one that mixes names, places and commas, much less."""
    labels = torch.as_tensor(labels)
    top = acts.float().topk(min(k, len(acts)), dim=0).indices                    # (k, U)
    lab = labels[top].clamp_min(-1) + 1                                          # 0 = no concept
    shares = F.one_hot(lab, n_concepts + 1).float().mean(0)[:, 1:]               # (U, C)
    purity, concept = shares.max(-1)
    return purity, concept
