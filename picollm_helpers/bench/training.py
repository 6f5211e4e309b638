"""The `train` case: the real train() for a few hundred steps, its non-padding tokens/s against the
benchmark's own step at the same shape.

A benchmark row times one step on a fixed random batch. train() also draws its batches, pads them,
copies them to the device, sets the learning rate, reads the loss and checks it is finite; with one
story per example some of every batch is padding, which costs time and trains nothing. So the case
counts only non-padding target tokens, and reports the time of the first epoch beyond the steady
rate separately (compiling, CUDA graph capture, first allocations).

On a CUDA GPU it runs the full profile's TinyStories transformer (bf16, torch.compile): one story
per example padded to the longest, the same with length buckets (fixed shapes, so CUDA graphs
apply), and packed windows; against the best bf16 row of the `full` case. On a CPU it runs the
laptop profile's transformer, one story per example and packed, against the `speed` case's
laptop-profile step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..batching import make_datasets
from ..config import RunConfig, resolve_precision
from ..models import build_model
from ..stories import generate_stories
from ..timing import train_flops_per_token
from ..tokenizer import get_tokenizer
from ..training import steps_per_epoch, train
from .speed import FULL, LAPTOP, _device, _peak_fns, _tokens, bench_full
from .steps import Row, kit_step_fn, measure_steps


def _stories_file(folder: Path, n: int) -> Path:
    """n synthetic stories (the kit's offline TinyStories stand-in), one per line."""
    path = folder / "synthetic_stories.txt"
    path.write_text("\n".join(generate_stories(n)) + "\n", encoding="utf-8")
    return path


def _variants(device):
    """(profile, shape, [(label, changes to the profile's config)]) for this device."""
    if device.type == "cuda":
        return "full", FULL, [("one story per example, padded to the longest (the full profile)", {}),
                              ("one story per example, length_bucket=64 (CUDA graphs)", dict(length_bucket=64)),
                              ("packed windows, length_bucket=block_size (one shape, CUDA graphs)",
                               dict(packed=True, length_bucket=FULL["T"]))]
    return "laptop", LAPTOP, [("one story per example (the laptop profile)", {}),
                              ("packed windows", dict(packed=True))]


def _steady(history):
    """(non-padding tokens/s after the first epoch, seconds the first epoch took beyond that rate)."""
    (_, t1, n1), *rest = history.epoch_times
    rate = sum(n for *_, n in rest) / sum(t for _, t, _ in rest)
    return rate, t1 - n1 / rate


def bench_train(results, compile=True, steps=100, epochs=3, shape=None):
    """train() for epochs x steps optimizer steps per variant; prints one row each and the ratio.
    shape: another model shape than the profile's (dict of E, L, H, T, B), e.g. a tiny one."""
    if epochs < 2:
        raise ValueError(f"epochs={epochs}: the steady rate is measured after the first epoch; use 2 or more")
    device = _device(results)
    profile, default_shape, variants = _variants(device)
    shape = shape or default_shape
    if device.type == "cuda" and "full_best_bf16" not in results:
        results = {**results, **bench_full(results, compile=compile)}
    # Enough stories for `steps` batches one story per example, and as packed windows of T + 1 tokens
    # (a synthetic story has ~176 GPT-2 tokens; 150 leaves room).
    n_stories = int(steps * shape["B"] * 1.2 * max(1.0, (shape["T"] + 1) / 150)) + 1
    rows, out = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        path = _stories_file(Path(tmp), n_stories)
        run = dict(tinystories_weight=0.0, input_files=(str(path),), test_fraction=0.05, embed_size=shape["E"],
                   n_blocks=shape["L"], n_heads=shape["H"], block_size=shape["T"], batch_size=shape["B"],
                   epochs=epochs, max_steps_per_epoch=steps, pos_emb="learned",
                   output_dir=str(Path(tmp) / "runs"), **({} if compile else {"compile": False}))
        base = RunConfig.for_profile(profile, laptop=run, **run)  # this shape, not the profile's caps
        print(f"data: {n_stories:,} synthetic stories (the kit's offline TinyStories stand-in); "
              f"{profile} profile's transformer (E={shape['E']}, L={shape['L']}, H={shape['H']}, "
              f"T={shape['T']}, B={shape['B']}), {epochs} epochs x {steps} steps per variant")
        tok = get_tokenizer()
        for label, changes in variants:
            cfg = base.replace(**changes)
            train_ds, test_ds = make_datasets(cfg, tok)
            if steps_per_epoch(len(train_ds), cfg) < steps:
                raise RuntimeError(f"{label}: {len(train_ds)} examples give fewer than {steps} steps")
            torch.manual_seed(cfg.seed)
            model = build_model("transformer", cfg, vocab_size=train_ds.vocab_size)
            history = train(model, cfg, train_ds, test_ds, tokenizer=None, name="bench", save=False)
            rate, warmup = _steady(history)
            full = steps * cfg.batch_size * epochs * cfg.block_size  # targets, had every batch been full
            rows.append((label, rate, warmup, history.tokens_seen / full, cfg, train_ds.vocab_size))
    reference = _reference_row(results, device, rows[0][4], rows[0][5], shape)
    print(f"train(), {epochs * steps} steps each: non-padding target tokens/s after the first epoch, "
          f"against {reference.label} ({reference.tokens_per_s:,.0f} tok/s)")
    print(f"  {'setting':<66} {'tok/s':>8} {'of BxT':>7} {'warm-up':>8} {'vs row':>7}")
    for label, rate, warmup, filled, _, _ in rows:
        print(f"  {label:<66} {rate:>8,.0f} {filled:>6.0%} {max(warmup, 0):>7.1f}s "
              f"{rate / reference.tokens_per_s:>6.2f}x")
    print("  (of BxT: non-padding targets per step over batch_size x block_size, the row's tokens per step; "
          "warm-up: the first epoch's time beyond the steady rate, compiling included)")
    best = max(rows, key=lambda r: r[1])
    out.update(train_rows=[(r[0], r[1], r[2], r[3]) for r in rows], train_reference=reference,
               train_best_label=best[0], train_ratio=best[1] / reference.tokens_per_s,
               train_profile_ratio=rows[0][1] / reference.tokens_per_s)
    return out


def _reference_row(results, device, cfg, vocab_size, shape) -> Row:
    """The benchmark's row train() is measured against: the `full` case's best bf16 step on a GPU;
    on a CPU the laptop profile's step (its loss chunk, compact vocabulary and fused AdamW) timed now."""
    if device.type == "cuda" and results.get("full_best_bf16") is not None:
        return results["full_best_bf16"]
    torch.manual_seed(0)
    model = build_model("transformer", cfg, vocab_size=vocab_size).to(device)
    x, y = _tokens(shape["B"], shape["T"], vocab_size, device)
    precision = resolve_precision(cfg.precision, device)
    label = (f"the benchmark's step at this shape ({precision}, loss chunk {cfg.loss_chunk_size}, V={vocab_size}, "
             f"fused AdamW)")
    flops = train_flops_per_token(model, shape["T"]) * shape["B"] * shape["T"]
    step = kit_step_fn(model, x, y, chunk=cfg.loss_chunk_size, precision=precision)
    return measure_steps({label: (step, shape["B"] * shape["T"], flops, precision)}, device,
                         _peak_fns(device, [precision]), repeat=9)[0]
