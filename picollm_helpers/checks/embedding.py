"""Lesson 01's exercises: an embedding as a one-hot product, and one training step."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import IGNORE_INDEX
from ._core import Case, Check


def one_hot_embedding(ids, weight):
    """The kit's reference: the one-hot product itself, equal to nn.Embedding's lookup weight[ids] bit for bit
    (each output entry is one weight times 1 plus zeros). A product, not the lookup, because lesson 01 goes on
    to time this function against the lookup."""
    return F.one_hot(ids, num_classes=weight.size(0)).to(weight.dtype) @ weight


def _embedding_cases():
    def make(seed, shape, V, E):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, V, shape, generator=g), torch.randn(V, E, generator=g)

    return [
        Case("ids [2, 0, 1] with a 3 x 2 weight whose rows are easy to read",
             lambda: (torch.tensor([2, 0, 1]), torch.tensor([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]]))),
        Case("the same id twice: the same row twice", lambda: (torch.tensor([1, 1]), torch.arange(6.0).view(3, 2))),
        Case("a batch (B=2, T=5) of ids, V=7, E=4", lambda: make(0, (2, 5), 7, 4)),
        Case("one sequence (T=9), V=50, E=8", lambda: make(1, (9,), 50, 8)),
        Case("a batch (B=3, T=4), V=100, E=16", lambda: make(2, (3, 4), 100, 16)),
    ]


check_one_hot_embedding = Check(
    "one_hot_embedding", one_hot_embedding, _embedding_cases)


def training_step(model, x, y, optimizer):
    """The kit's reference: forward, token-mean cross-entropy (padding ignored), zero_grad,
    backward, optimizer step; returns the loss as a float."""
    logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


class _TinyLM(nn.Module):
    """An embedding, a tanh layer and an output layer: small enough to check steps exactly."""

    def __init__(self, V=11, E=8):
        super().__init__()
        self.emb, self.hid, self.out = nn.Embedding(V, E), nn.Linear(E, E), nn.Linear(E, V)

    def forward(self, idx):
        return self.out(torch.tanh(self.hid(self.emb(idx))))


def _steps(impl, seed, n_steps, pad):
    """Run n_steps of impl on a fresh tiny model: (the losses it returned, the weights after)."""
    torch.manual_seed(seed)
    model = _TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(seed + 100)
    losses = []
    for _ in range(n_steps):
        x = torch.randint(0, 11, (4, 6), generator=g)
        y = torch.randint(0, 11, (4, 6), generator=g)
        if pad:
            y[:, -2:] = IGNORE_INDEX  # padding the loss must skip
        loss = impl(model, x, y, opt)
        losses.append(float(loss))
    return torch.tensor(losses), torch.cat([p.detach().flatten() for p in model.parameters()])


def _training_step_cases():
    return [Case(f"{n} steps on a tiny model (seed {seed}){', with padded targets' if pad else ''}",
                 lambda s=seed, n=n, pad=pad: (s, n, pad))
            for seed, n, pad in [(0, 1, False), (1, 3, False), (2, 3, True)]]


check_training_step = Check(
    "training_step", training_step, _training_step_cases, observe=_steps, atol=1e-6, rtol=1e-5)
