"""Training steps as train() takes them, timed into rows of tokens/s, FLOP/s, MFU and memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import IGNORE_INDEX, RunConfig
from ..loss import LossModule
from ..timing import mfu, timeit_rounds
from ..training import autocast, make_optimizer


def train_step_fn(model, forward, idx, targets):
    """One forward + backward + AdamW step, with `forward(model, idx) -> logits`."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        logits = forward(model, idx)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def kit_step_fn(model, x, y, *, chunk=0, precision="fp32", fused_adamw=True, compile=False, grad_clip=1.0):
    """One optimizer step exactly as train() takes it: lm loss (full logits, or the fused chunked
    loss when chunk > 0) under the precision's autocast, backward, gradient clipping, AdamW
    (train()'s fused AdamW, or torch's default multi-tensor one when fused_adamw=False).
    compile: False, True (torch.compile's default mode) or a torch.compile mode name."""
    device = next(model.parameters()).device
    cfg = RunConfig(learning_rate=1e-4, precision=precision, profile="full")
    opt = make_optimizer(model, cfg, device) if fused_adamw else torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = LossModule(model, chunk)
    if compile:
        loss_fn = torch.compile(loss_fn, mode=None if compile is True else compile)
    n = (y != IGNORE_INDEX).sum()

    def step():
        with autocast(device, cfg):
            loss = loss_fn(x, y) / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        return loss.detach()
    return step


@dataclass
class Row:
    label: str
    seconds: float            # median time of one step (or call)
    tokens: int               # tokens per step
    flops: float              # model FLOPs per step
    peak: float               # matmul peak FLOP/s of the precision, timed in the same rounds
    memory: int | None = None  # peak memory increase of one step, bytes

    @property
    def tokens_per_s(self):
        return self.tokens / self.seconds

    @property
    def flops_per_s(self):
        return self.flops / self.seconds

    @property
    def mfu(self):
        return mfu(self.flops, self.seconds, self.peak)


def format_mib(nbytes):
    return "n/a" if nbytes is None else f"{nbytes / 2 ** 20:,.0f}"


def print_rows(title: str, rows: list[Row], baseline: Row | None = None):
    baseline = baseline or rows[0]
    print(title)
    print(f"  {'setting':<58} {'tok/s':>8} {'GFLOP/s':>8} {'MFU':>6} {'peak MiB':>9} {'speed':>6}")
    for r in rows:
        print(f"  {r.label:<58} {r.tokens_per_s:>8,.0f} {r.flops_per_s / 1e9:>8.1f} {r.mfu:>6.1%} "
              f"{format_mib(r.memory):>9} {r.tokens_per_s / baseline.tokens_per_s:>5.2f}x")


def measure_steps(cases: dict, device, peak_fns: dict, repeat=3, warmup=1):
    """cases: {label: (step_fn, tokens, flops, precision)} -> [Row], timed round-robin together with
    the matmul peak of each precision used."""
    fns = {label: c[0] for label, c in cases.items()}
    used = {c[3] for c in cases.values()}
    for prec in used:
        fns[f"peak:{prec}"] = peak_fns[prec][0]
    times, mem = timeit_rounds(fns, warmup=warmup, repeat=repeat, device=device, memory=tuple(cases))
    peaks = {prec: peak_fns[prec][1] / times[f"peak:{prec}"] for prec in used}
    return [Row(label, times[label], c[1], c[2], peaks[c[3]], mem.get(label)) for label, c in cases.items()]
