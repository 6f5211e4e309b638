"""Lesson 01's exercises: an embedding as a one-hot product, the loss over the real tokens only (the padding
mask), and one training step."""

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


def masked_loss(logits, targets):
    """The kit's reference: the mean cross-entropy over the positions whose target is not padding
    (IGNORE_INDEX), each real token weighing the same, whatever row it is in."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def _observe_loss(impl, logits, targets):
    """(the loss, its gradient with respect to the logits): a loss that training can use is a tensor that
    backward() reaches the logits through."""
    logits = logits.clone().requires_grad_(True)
    loss = impl(logits, targets)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
        return loss, None       # compared with the reference's (tensor, gradient): the message says what differs
    loss.backward()
    return loss.detach(), logits.grad


def _masked_loss_cases():
    def make(seed, B, T, V, pads):
        g = torch.Generator().manual_seed(seed)
        logits, targets = torch.randn(B, T, V, generator=g) * 2, torch.randint(0, V, (B, T), generator=g)
        for row, n in enumerate(pads):       # the last n targets of each row are padding
            if n:
                targets[row, -n:] = IGNORE_INDEX
        return logits, targets

    return [
        Case("no padding (B=2, T=4, V=5)", lambda: make(0, 2, 4, 5, [0, 0])),
        Case("both rows end in 2 padded targets", lambda: make(1, 2, 5, 6, [2, 2])),
        Case("rows padded unequally: 0, 3 and 5 of 6 targets", lambda: make(2, 3, 6, 7, [0, 3, 5])),
        Case("target id 0 is a real token here, not padding", lambda: (
            torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]]), torch.tensor([[0, IGNORE_INDEX]]))),
        Case("a batch (B=4, T=9, V=30), one row all real", lambda: make(3, 4, 9, 30, [1, 0, 4, 8])),
    ]


check_masked_loss = Check(
    "masked_loss", masked_loss, _masked_loss_cases, observe=_observe_loss, atol=1e-6, rtol=1e-5)
