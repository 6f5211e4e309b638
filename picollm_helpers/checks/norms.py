"""Lesson 08's exercises: one sub-layer in the pre-norm or post-norm arrangement (against the kit's
Block), the linear warmup's learning-rate multiplier (against training.lr_at's schedule), and the
gradient norm of each transformer block (against training.grad_norms_by_layer, on models whose
gradients a backward pass has just filled)."""

import torch
import torch.nn.functional as F

from ..models.transformer import MLP, RMSNorm, TransformerModel
from ..training import grad_norms_by_layer
from ._core import Case, Check


def block_grad_norms(model):
    """The kit's reference: (n_blocks,) float64, the L2 norm of all of block i's parameter gradients together."""
    norms = grad_norms_by_layer(model)
    return torch.tensor([norms[f"blocks.{i}"] for i in range(len(model.blocks))], dtype=torch.float64)


def _model_with_grads(seed, n_blocks, post):
    torch.manual_seed(seed)
    model = TransformerModel(50, 16, n_heads=2, n_blocks=n_blocks, block_size=12, pos_emb="learned",
                             use_post_norm=post)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randint(0, 50, (3, 12), generator=g), torch.randint(0, 50, (3, 12), generator=g)
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    return model


def _observe(impl, seed, n_blocks, post):
    # compared as returned: lesson 08 goes on with `.tolist()` and float64 arithmetic on the result, so a list or
    # a float32 tensor fails here rather than in the next cell
    return impl(_model_with_grads(seed, n_blocks, post))


def _cases():
    return [Case(label, lambda a=args: a) for label, args in [
        ("a 1-block pre-norm model after one backward pass", (0, 1, False)),
        ("a 4-block pre-norm model", (1, 4, False)),
        ("a 4-block post-norm model", (2, 4, True)),
        ("an 8-block post-norm model", (3, 8, True)),
    ]]


check_block_grad_norms = Check(
    "block_grad_norms", block_grad_norms, _cases, observe=_observe, atol=1e-6, rtol=1e-5,
    used="the kit's per-block gradient norms", kit_names=("grad_norms_by_layer",))


# The warmup schedule -------------------------------------------------------------------------------

def warmup_multiplier(step, warmup_steps):
    """The kit's reference: the learning-rate multiplier of optimizer step `step` (0-based) under a linear
    warmup of `warmup_steps` steps, then constant: (step + 1) / warmup_steps during the warmup, 1 after
    (and always 1 without warmup). training.lr_at applies the same schedule."""
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


def _observe_warmup(impl, steps, warmup_steps):
    # every step of the case in one float64 tensor, so a failure names the first step that differs
    return torch.tensor([float(impl(s, warmup_steps)) for s in steps], dtype=torch.float64)


def _warmup_cases():
    return [Case(label, lambda a=args: a) for label, args in [
        ("no warmup (warmup_steps=0), steps 0-3", ([0, 1, 2, 3], 0)),
        ("warmup_steps=1, steps 0-3", ([0, 1, 2, 3], 1)),
        ("warmup_steps=4, steps 0-7", (list(range(8)), 4)),
        ("warmup_steps=100, steps 0, 1, 49, 98, 99, 100, 101, 1000", ([0, 1, 49, 98, 99, 100, 101, 1000], 100)),
    ]]


check_warmup_multiplier = Check(
    "warmup_multiplier", warmup_multiplier, _warmup_cases, observe=_observe_warmup, atol=1e-12, rtol=1e-9,
    used="the kit's linear warmup", kit_names=("lr_at",))


# One residual sub-layer, pre-norm or post-norm --------------------------------------------------------

def residual_sublayer(x, sublayer, norm, post):
    """The kit's reference: one sub-layer (attention or MLP) with its residual connection and its norm.
    Pre-norm (post=False): x + sublayer(norm(x)); post-norm (post=True): norm(x + sublayer(x))."""
    return norm(x + sublayer(x)) if post else x + sublayer(norm(x))


def _sublayer_case(seed, post, kind):
    torch.manual_seed(seed)
    width = 8
    norm = RMSNorm(width)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(width))    # a trained-looking gain, not all ones
    sublayer = MLP(width, mlp_ratio=2) if kind == "mlp" else torch.nn.Linear(width, width)
    x = 3 * torch.randn(2, 5, width)                       # (B, T, C) a stream far from RMS 1
    return x, sublayer, norm, post


def _sublayer_cases():
    return [Case(label, lambda a=args: _sublayer_case(*a)) for label, args in [
        ("pre-norm, a linear sub-layer, x of shape (2, 5, 8)", (0, False, "linear")),
        ("post-norm, a linear sub-layer", (1, True, "linear")),
        ("pre-norm, an MLP sub-layer", (2, False, "mlp")),
        ("post-norm, an MLP sub-layer", (3, True, "mlp")),
    ]]


check_residual_sublayer = Check(
    "residual_sublayer", residual_sublayer, _sublayer_cases, atol=1e-6, rtol=1e-5,
    used="the kit's arrangement of a sub-layer", kit_names=("Block",))
