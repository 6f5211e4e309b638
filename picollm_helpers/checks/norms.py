"""Lesson 08's exercise: the gradient norm of each transformer block, checked against the kit's
training.grad_norms_by_layer on models whose gradients a backward pass has just filled."""

import torch
import torch.nn.functional as F

from ..models.transformer import TransformerModel
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
