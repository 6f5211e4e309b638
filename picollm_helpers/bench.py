"""Speed measurements that print ratios: `python -m picollm_helpers.bench [speed|full|models|data|all]`.

speed   the machine's own limits first (matmul peak of each precision, memory read bandwidth), then
        each model's training step as tokens/s, achieved FLOP/s, MFU (model FLOP/s over the
        measured peak of the precision used) and peak memory; greedy generation against the time
        to read the weights once; the settings it recommends; the ratios against the targets.
        The transformer rows include one under torch.compile (--no-compile leaves it out).
        On a CUDA GPU it ends with `full`.
full    the full profile's TinyStories transformer (E=512, L=6, T=512, B=16) in fp32 and bf16,
        eager and compiled: the GPU case (skipped on a CPU).
models  implementations side by side: k-gram vectorized vs per-token loop, KV cache vs none,
        SDPA vs explicit attention.
data    tokenizing 100,000 synthetic stories, first and from the cache; building batches.

Absolute times depend on the machine and on whatever else runs on it; ratios much less. So the
variants compared are timed in alternation, round after round (timeit_rounds), their medians
compared, and the matmul peak is timed in the same rounds as the steps it is compared with. The
header prints the load average: on a busy machine every number is lower and noisier.

Add a case by writing a function that takes the results so far, prints its lines and returns a dict
of numbers, and listing it in CASES.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Timing


def _sync(device=None):
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, warmup=1, repeat=3):
    """Median wall time of fn() in seconds, after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timeit_pair(fa, fb, warmup=1, repeat_a=3, repeat_b=3):
    """Median times of fa() and fb(), measured alternately (a, b, a, b, ...) so that load from
    other processes on the machine falls on both alike."""
    for _ in range(warmup):
        fa(), fb()
    ta, tb = [], []
    while len(ta) < repeat_a or len(tb) < repeat_b:
        for fn, times, n in ((fa, ta, repeat_a), (fb, tb, repeat_b)):
            if len(times) < n:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def timeit_rounds(fns: dict, warmup=1, repeat=3, device=None, memory=()):
    """Median seconds of each fns[name](), timed round-robin: every round calls each once, so load
    from other processes falls on all alike. Names in `memory` also get their peak memory measured
    (bytes, see peak_memory) on the first round. Returns ({name: seconds}, {name: bytes or None})."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            _sync(device)
    times = {name: [] for name in fns}
    mem = {}
    for r in range(repeat):
        for name, fn in fns.items():
            elapsed = []

            def timed():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                elapsed.append(time.perf_counter() - t0)
            if r == 0 and name in memory:
                mem[name] = peak_memory(timed, device)
            else:
                timed()
            times[name].append(elapsed[0])
    return {name: statistics.median(t) for name, t in times.items()}, mem


# ----------------------------------------------------------------------------------------------
# Memory


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"{field} not in /proc/self/status")


def _release_free_memory():
    """Hand memory the allocator holds but does not use back to the OS, so that RSS measures what is
    in use (glibc keeps freed blocks of the heap mapped)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn, device=None):
    """How far fn() raised memory use above what was in use just before it, in bytes.

    CUDA: torch.cuda.max_memory_allocated. CPU (Linux): the peak resident set size VmHWM, reset by
    writing 5 to /proc/self/clear_refs, minus the RSS before. None where neither is available.
    """
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        fn()
        return None
    try:
        _release_free_memory()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_bytes("VmRSS")
    except OSError:
        fn()
        return None
    fn()
    return max(0, _proc_status_bytes("VmHWM") - before)


# ----------------------------------------------------------------------------------------------
# The machine's limits


def matmul_flops(n: int) -> int:
    """FLOPs of an (n, n) @ (n, n) matmul: n^3 multiply-adds."""
    return 2 * n ** 3


def peak_matmul_fn(dtype=torch.float32, device="cpu", n=None):
    """A call that does one large square torch.mm, and its FLOPs: what the peak is measured with."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), matmul_flops(n)


def read_bandwidth_fn(device="cpu", nbytes=None):
    """A call that reads nbytes from memory once (a sum over a tensor far larger than the caches),
    and nbytes. Its rate is the memory read bandwidth. Default: 256 MiB, or 4 GiB on a GPU, where
    reading 256 MiB takes ~60 us and the host-side timing would measure mostly launch and sync."""
    if nbytes is None:
        nbytes = (4 * 2 ** 30) if torch.device(device).type == "cuda" else 256 * 2 ** 20
    x = torch.ones(nbytes // 4, device=device)
    return (lambda: x.sum()), nbytes


def bf16_matmul_supported(device) -> bool:
    """Whether the device can run bf16 matmuls at all (most CPUs emulate them slowly; measured below)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def measure_peaks(device, repeat=5) -> dict:
    """Measured matmul peak in FLOP/s per precision and read bandwidth in bytes/s (medians)."""
    fns, work = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "fp32" or bf16_matmul_supported(device):
            fns[name], work[name] = peak_matmul_fn(dtype, device)
    fns["read"], work["read"] = read_bandwidth_fn(device)
    times, _ = timeit_rounds(fns, warmup=1, repeat=repeat, device=device)
    return {name: work[name] / t for name, t in times.items()}


# ----------------------------------------------------------------------------------------------
# Model FLOPs


def flop_params(model: nn.Module) -> int:
    """N, the parameters a token's forward pass multiplies with: every parameter except embedding
    tables (a lookup reads one row and does no arithmetic). lm_head counts, also when it shares its
    weight with the token embedding."""
    head = getattr(model, "lm_head", None)
    head_weight = head.weight if isinstance(head, nn.Linear) else None
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    seen, n = set(), 0
    for p in model.parameters():  # parameters() yields a shared tensor once
        if id(p) in seen or (id(p) in lookups and p is not head_weight):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def attention_flops_per_token(n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> int:
    """Training FLOPs of the attention scores and their weighted sum per token: 12 * L * H * hd * T
    (QK^T and AV, 2 FLOPs per multiply-add, times 3 for forward + backward; PaLM appendix B,
    nanoGPT's estimate_mfu). Counted over all T keys, as is standard, though causal attention
    needs only half."""
    return 12 * n_layers * n_heads * head_dim * seq_len


def train_flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Model FLOPs of one training step per token: 6 N (forward 2 N, backward 4 N) plus attention."""
    flops = 6 * flop_params(model)
    if hasattr(model, "blocks") and hasattr(model, "head_dim"):
        flops += attention_flops_per_token(len(model.blocks), model.n_heads, model.head_dim, seq_len)
    return flops


def mfu(model_flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the measured peak FLOP/s."""
    return model_flops / seconds / peak_flops_per_s


FLOPS_NOTE = ("Model FLOPs per token = 6 N + 12 L H hd T (PaLM / nanoGPT): N counts every weight a token "
              "is multiplied with, lm_head included, and excludes the token and position embedding tables "
              "(lookups); 12 L H hd T is attention's QK^T and AV over all T keys. Only these count: "
              "softmax, norms, optimizer and recomputation do not. MFU = model FLOP/s / the fp32 (or bf16) "
              "matmul peak timed in the same rounds.")


# ----------------------------------------------------------------------------------------------
# Training steps as train() runs them


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
    from .training import _autocast, _LossModule, make_optimizer
    from .config import RunConfig
    device = next(model.parameters()).device
    cfg = RunConfig(learning_rate=1e-4, precision=precision, profile="full")
    opt = make_optimizer(model, cfg, device) if fused_adamw else torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = _LossModule(model, chunk)
    if compile:
        loss_fn = torch.compile(loss_fn, mode=None if compile is True else compile)
    n = (y != -100).sum()

    def step():
        with _autocast(device, cfg):
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


def _mib(nbytes):
    return "n/a" if nbytes is None else f"{nbytes / 2 ** 20:,.0f}"


def print_rows(title: str, rows: list[Row], baseline: Row | None = None):
    baseline = baseline or rows[0]
    print(title)
    print(f"  {'setting':<58} {'tok/s':>8} {'GFLOP/s':>8} {'MFU':>6} {'peak MiB':>9} {'speed':>6}")
    for r in rows:
        print(f"  {r.label:<58} {r.tokens_per_s:>8,.0f} {r.flops_per_s / 1e9:>8.1f} {r.mfu:>6.1%} "
              f"{_mib(r.memory):>9} {r.tokens_per_s / baseline.tokens_per_s:>5.2f}x")


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


# ----------------------------------------------------------------------------------------------
# The `speed` cases

# The transformer, the report's Q1/Q2 LSTM and k-gram MLP settings.
GPT = dict(E=256, L=4, H=8, T=256, B=8, V=50257)
SMALL = dict(B=16, T=32, E=128, V=50257, k=3)
LAPTOP = dict(E=128, L=4, H=4, T=128, B=16)   # PROFILE_CAPS["laptop"] with batch_size 16
CHUNK = 512                                    # rows per chunk of the fused loss


def _device(results):
    return results.setdefault("_device", torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _tokens(B, T, V, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (B, T), generator=g).to(device),
            torch.randint(0, V, (B, T), generator=g).to(device))


def _gpt(V, E, L, H, T, device, seed=0):
    from .models import TransformerModel
    torch.manual_seed(seed)
    return TransformerModel(V, E, H, L, block_size=T, pos_emb="learned").to(device)


def _peak_fns(device, precisions):
    return {p: peak_matmul_fn(torch.float32 if p == "fp32" else torch.bfloat16, device) for p in precisions}


def compact_vocab_size(n_stories=5000) -> int:
    """Vocabulary of a CompactTokenizer over synthetic stories (what the smoke and laptop profiles
    train over when TinyStories cannot be downloaded)."""
    from .stories import generate_stories
    from .tokenizer import get_tokenizer
    ids = get_tokenizer().encode_ordinary_batch(generate_stories(n_stories), num_threads=os.cpu_count() or 1)
    return len({i for s in ids for i in s} | {50256}) + 1  # + <|endoftext|>, + <|unk|>


def bench_machine(results):
    """Header: the machine, its load, and its measured limits."""
    device = _device(results)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"device {device} ({name}); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    peaks = measure_peaks(device)
    bf16 = peaks.get("bf16")
    bf16_fast = bf16 is not None and bf16 > peaks["fp32"]
    line = f"measured peaks: fp32 matmul {peaks['fp32'] / 1e9:,.0f} GFLOP/s"
    if bf16 is not None:
        line += (f", bf16 matmul {bf16 / 1e9:,.0f} GFLOP/s ({bf16 / peaks['fp32']:.2f}x fp32"
                 + ("" if bf16_fast else ": no fast bf16 matmul here, bf16 cases skipped") + ")")
    line += f", memory read {peaks['read'] / 1e9:,.1f} GB/s"
    print(line)
    print("\n".join(_wrap(FLOPS_NOTE)))
    return {"peak_fp32": peaks["fp32"], "peak_bf16": bf16, "bf16_fast": bf16_fast,
            "read_bandwidth": peaks["read"], "load_average": load[0]}


def _wrap(text, width=100):
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return lines + [line]


def _first_compiled_step(step, device):
    """Run a step under torch.compile once, compiling it: (True, how long it took) or, where
    compiling fails (no C compiler, unsupported platform, ...), (False, the error)."""
    t0 = time.perf_counter()
    try:
        step()
        _sync(device)
    except Exception as e:
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120]}"
    return True, f"the first step took {time.perf_counter() - t0:.0f} s, compilation included"


def bench_gpt_step(results, compile=True):
    """The issue's transformer training step, in every setting that keeps the task the same."""
    device = _device(results)
    g = GPT
    x, y = _tokens(g["B"], g["T"], g["V"], device)
    precisions = ["fp32"] + (["bf16"] if results.get("bf16_fast") else [])
    settings = [("fp32, full logits, multi-tensor AdamW (the kit before)", dict(chunk=0, fused_adamw=False)),
                ("fp32, full logits, fused AdamW", dict(chunk=0))]
    settings += [(f"fp32, fused loss chunk={CHUNK}, fused AdamW", dict(chunk=CHUNK))]
    if "bf16" in precisions:
        settings += [("bf16 autocast, full logits, fused AdamW", dict(chunk=0, precision="bf16")),
                     (f"bf16 autocast, fused loss chunk={CHUNK}, fused AdamW",
                      dict(chunk=CHUNK, precision="bf16"))]
    if compile:
        prec = precisions[-1]
        settings += [(f"{prec}{' autocast' if prec == 'bf16' else ''}, fused loss chunk={CHUNK}, fused AdamW, "
                      f"torch.compile", dict(chunk=CHUNK, precision=prec, compile=True))]
    cases = {}
    for label, kw in settings:
        model = _gpt(g["V"], g["E"], g["L"], g["H"], g["T"], device)
        flops = train_flops_per_token(model, g["T"]) * g["B"] * g["T"]
        cases[label] = (kit_step_fn(model, x, y, **kw), g["B"] * g["T"], flops, kw.get("precision", "fp32"))
    note = ""
    if compile:
        label = settings[-1][0]
        ok, note = _first_compiled_step(cases[label][0], device)
        note = f" (torch.compile{'' if ok else ' failed here, row left out'}: {note})"
        if not ok:
            del cases[label]
    rows = measure_steps(cases, device, _peak_fns(device, precisions))
    model = _gpt(g["V"], g["E"], g["L"], g["H"], g["T"], "cpu")
    print_rows(f"transformer training step (E={g['E']}, L={g['L']}, H={g['H']}, T={g['T']}, B={g['B']}, "
               f"V={g['V']}; N={flop_params(model) / 1e6:.2f}M, "
               f"{train_flops_per_token(model, g['T']) / 1e6:.1f} MFLOP/token){note}", rows)
    best = max(rows[1:], key=lambda r: r.tokens_per_s)
    best_fused = next(r for r in rows if r.label.startswith(f"fp32, fused loss chunk={CHUNK}, fused AdamW"))
    return {"gpt_rows": rows, "gpt_baseline": rows[0], "gpt_plain_fused_adamw": rows[1],
            "gpt_best": best, "gpt_best_fused_fp32": best_fused}


def bench_vocab(results):
    """Compact vocabulary (changes the task) and the laptop profile's shape: full vs fused loss."""
    device = _device(results)
    V = results.get("compact_vocab") or compact_vocab_size()
    cases = {}
    for label, shape, chunk, v in [
            (f"fp32, fused loss chunk={CHUNK}, fused AdamW, V={V}", GPT, CHUNK, V),
            (f"fp32, full logits, compact V={V}", LAPTOP, 0, V),
            (f"fp32, fused loss chunk={CHUNK}, compact V={V}", LAPTOP, CHUNK, V),
            ("fp32, full logits, V=50257 (compact_vocab=False)", LAPTOP, 0, 50257),
            (f"fp32, fused loss chunk={CHUNK}, V=50257 (compact_vocab=False)", LAPTOP, CHUNK, 50257)]:
        model = _gpt(v, shape["E"], shape["L"], shape["H"], shape["T"], device)
        x, y = _tokens(shape["B"], shape["T"], v, device)
        flops = train_flops_per_token(model, shape["T"]) * shape["B"] * shape["T"]
        cases[label] = (kit_step_fn(model, x, y, chunk=chunk), shape["B"] * shape["T"], flops, "fp32")
    # The laptop steps take ~0.15 s, so a 20% difference hides in the noise of a few rounds: take 9.
    rows = measure_steps(cases, device, _peak_fns(device, ["fp32"]), repeat=9)
    print_rows(f"compact vocabulary: a different task (only the {V} ids of a synthetic-story corpus; "
               f"speed vs the GPT full-logits fused-AdamW row)", rows[:1],
               baseline=results.get("gpt_plain_fused_adamw") or rows[0])
    print_rows(f"the laptop profile's transformer (E={LAPTOP['E']}, L={LAPTOP['L']}, H={LAPTOP['H']}, "
               f"T={LAPTOP['T']}, B={LAPTOP['B']}; fused AdamW)", rows[1:])
    return {"compact_vocab": V, "laptop_fused_speedup": rows[2].tokens_per_s / rows[1].tokens_per_s,
            "laptop_fused_memory": rows[2].memory / rows[1].memory if rows[1].memory else None,
            "laptop_full_vocab_fused_speedup": rows[4].tokens_per_s / rows[3].tokens_per_s}


# The full profile's TinyStories transformer: the report's configuration, for a GPU.
FULL = dict(E=512, L=6, H=8, T=512, B=16, V=50257)
GPU_CHUNK = 4096                               # rows per chunk of the fused loss on a GPU


def bench_full(results, compile=True, repeat=10, shape=None, chunk=GPU_CHUNK):
    """The full profile's TinyStories transformer training step on a CUDA GPU: fp32, then bf16
    autocast with full logits or the fused loss, eager or under torch.compile. The fused loss and
    the full logits are first checked to give the same loss on this device. On a CPU it is skipped,
    unless another (smaller) shape is given."""
    device = _device(results)
    f = shape or FULL
    if device.type != "cuda" and shape is None:
        print(f"the full profile's transformer (E={f['E']}, L={f['L']}, H={f['H']}, T={f['T']}, B={f['B']}, "
              f"V={f['V']}): skipped, it needs a CUDA GPU (one step is ~2.3 TFLOP)")
        return {}
    if "peak_fp32" not in results:
        bench_machine(results)  # the header: which GPU, its measured peaks
    from .training import lm_loss
    x, y = _tokens(f["B"], f["T"], f["V"], device)
    model = _gpt(f["V"], f["E"], f["L"], f["H"], f["T"], device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        plain, fused = lm_loss(model, x, y, 0).item(), lm_loss(model, x, y, chunk).item()
    print(f"bf16 autocast loss on this device: full logits {plain:.5f}, fused loss {fused:.5f} "
          f"(|diff| {abs(plain - fused):.1e})")
    settings = [("fp32, full logits", dict(chunk=0)),
                ("bf16 autocast, full logits", dict(chunk=0, precision="bf16")),
                (f"bf16 autocast, fused loss chunk={chunk}", dict(chunk=chunk, precision="bf16"))]
    if compile:
        settings += [("bf16 autocast, full logits, torch.compile", dict(chunk=0, precision="bf16", compile=True)),
                     (f"bf16 autocast, fused loss chunk={chunk}, torch.compile",
                      dict(chunk=chunk, precision="bf16", compile=True))]
        if device.type == "cuda":  # CUDA graphs: the whole forward and backward replayed as one launch
            settings += [("bf16 autocast, full logits, torch.compile reduce-overhead",
                          dict(chunk=0, precision="bf16", compile="reduce-overhead"))]
    cases, notes = {}, []
    for label, kw in settings:
        model = _gpt(f["V"], f["E"], f["L"], f["H"], f["T"], device)
        flops = train_flops_per_token(model, f["T"]) * f["B"] * f["T"]
        step = kit_step_fn(model, x, y, **kw)
        if kw.get("compile"):
            ok, note = _first_compiled_step(step, device)
            notes.append(f"{label}: {note}" if ok else f"{label}: torch.compile failed, row left out ({note})")
            if not ok:
                continue
        cases[label] = (step, f["B"] * f["T"], flops, kw.get("precision", "fp32"))
    rows = measure_steps(cases, device, _peak_fns(device, ["fp32", "bf16"]), repeat=repeat, warmup=2)
    for r in rows:
        if "reduce-overhead" in r.label:
            r.memory = None  # the CUDA graphs' memory pool was allocated while they were captured
    print_rows(f"the full profile's transformer training step (E={f['E']}, L={f['L']}, H={f['H']}, T={f['T']}, "
               f"B={f['B']}, V={f['V']}; N={flop_params(model) / 1e6:.1f}M, "
               f"{train_flops_per_token(model, f['T']) / 1e6:.0f} MFLOP/token; fused AdamW, MFU against "
               f"the peak of the row's precision)", rows)
    for note in notes:
        print(f"  {note}")
    best = max((r for r in rows if r.label.startswith("bf16")), key=lambda r: r.tokens_per_s)
    return {"full_rows": rows, "full_best_bf16": best, "full_loss_diff": abs(plain - fused)}


def bench_small_models(results):
    """The report's LSTM and k-gram MLP (Q1/Q2 settings), full logits vs the fused loss."""
    from .models import KGramMLPSeqModel, LSTMSeqModel
    device = _device(results)
    s = SMALL
    x, y = _tokens(s["B"], s["T"], s["V"], device)
    cases = {}
    for name, make in (("LSTM", lambda: LSTMSeqModel(s["V"], s["E"])),
                       ("k-gram MLP", lambda: KGramMLPSeqModel(s["V"], k=s["k"], embed_size=s["E"]))):
        for chunk in (0, CHUNK):
            torch.manual_seed(0)
            model = make().to(device)
            flops = train_flops_per_token(model, s["T"]) * s["B"] * s["T"]
            label = f"{name}: " + ("full logits" if chunk == 0 else f"fused loss chunk={chunk}")
            cases[label] = (kit_step_fn(model, x, y, chunk=chunk), s["B"] * s["T"], flops, "fp32")
    rows = measure_steps(cases, device, _peak_fns(device, ["fp32"]))
    print_rows(f"LSTM and k-gram MLP training steps (B={s['B']}, T={s['T']}, E={s['E']}, V={s['V']}, "
               f"k={s['k']}; fused AdamW; speed vs the LSTM full-logits row)", rows)
    return {"lstm_fused_speedup": rows[1].tokens_per_s / rows[0].tokens_per_s,
            "kgram_fused_speedup": rows[3].tokens_per_s / rows[2].tokens_per_s}


def bench_decode(results, new_tokens=64):
    """Greedy generation with the KV cache at batch 1: time per token vs reading the weights once."""
    from .sampling import generate
    device = _device(results)
    g = GPT
    model = _gpt(g["V"], g["E"], g["L"], g["H"], 512, device).eval()
    prompt = list(range(16))
    weight_bytes = flop_params(model) * model.lm_head.weight.element_size()
    read, nbytes = read_bandwidth_fn(device)
    fns = {"long": lambda: generate(model, None, prompt, new_tokens + 1, greedy=True),
           "short": lambda: generate(model, None, prompt, 1, greedy=True),
           "read": read}
    threads = torch.get_num_threads()

    def one_thread(fn):
        def run():
            torch.set_num_threads(1)
            try:
                fn()
            finally:
                torch.set_num_threads(threads)
        return run
    if device.type == "cpu" and threads > 1:
        fns.update({"long1": one_thread(fns["long"]), "short1": one_thread(fns["short"])})
    times, _ = timeit_rounds(fns, warmup=1, repeat=7, device=device)
    per_token = (times["long"] - times["short"]) / new_tokens
    weights_s = weight_bytes * times["read"] / nbytes
    print(f"greedy generation, KV cache, batch 1 (E={g['E']}, L={g['L']}, H={g['H']}, V={g['V']}): "
          f"{per_token * 1e3:.1f} ms/token ({1 / per_token:,.0f} tokens/s); reading the "
          f"{weight_bytes / 2 ** 20:,.0f} MiB of weights a token uses once takes {weights_s * 1e3:.1f} ms "
          f"at the {nbytes / times['read'] / 1e9:.1f} GB/s measured alongside -> {per_token / weights_s:.2f}x that")
    out = {"decode_s_per_token": per_token, "decode_weight_read_s": weights_s, "decode_ratio": per_token / weights_s}
    if "long1" in times:
        one = (times["long1"] - times["short1"]) / new_tokens
        print(f"  the same on 1 thread: {one * 1e3:.1f} ms/token -> {one / weights_s:.2f}x (each token is ~100 "
              f"small ops: on a busy machine, synchronising threads between them can cost more than a 2nd thread gains)")
        out.update(decode_1thread_s_per_token=one, decode_1thread_ratio=one / weights_s)
    return out


def recommend(results):
    """The settings the rows above favour on this machine, next to the laptop profile's defaults.

    The fused loss always needs less memory, so it is recommended unless it is measurably slower
    (by more than 5%, beyond this benchmark's noise on a shared machine)."""
    from .config import PROFILE_DEFAULTS
    lap, lap_full = results.get("laptop_fused_speedup", float("nan")), results.get("laptop_full_vocab_fused_speedup")
    mem = results.get("laptop_fused_memory")
    best, base = results["gpt_best_fused_fp32"], results["gpt_plain_fused_adamw"]
    compiled = next((r for r in results["gpt_rows"] if "compile" in r.label), None)
    bf16 = results.get("bf16_fast")
    lap_chunk = CHUNK if lap >= 0.95 else 0
    print(f"recommended here: loss_chunk_size={lap_chunk} for the laptop profile (fused loss {lap:.2f}x the "
          f"full logits' speed" + (f" in {mem:.2f}x the memory" if mem else "") + " with the compact vocabulary"
          + (f", {lap_full:.2f}x with V=50257" if lap_full else "") + f") and {CHUNK} for the full vocabulary "
          f"({best.tokens_per_s / base.tokens_per_s:.2f}x, {_mib(best.memory)} vs {_mib(base.memory)} MiB); "
          f"precision={'bf16' if bf16 else 'fp32'}" + ("" if bf16 else " (bf16 matmul is slower than fp32 here)")
          + "; compile=False for laptop runs" + (
              f" (compiled step {compiled.tokens_per_s / best.tokens_per_s:.2f}x the eager one, but every run "
              f"compiles again)" if compiled else ""))
    print(f"the laptop profile's defaults: PROFILE_DEFAULTS['laptop'] = {PROFILE_DEFAULTS['laptop']}")
    if results.get("full_rows"):
        rows, fast = results["full_rows"], results["full_best_bf16"]
        eager = next(r for r in rows if r.label == "bf16 autocast, full logits")
        compiled = next((r for r in rows if r.label == "bf16 autocast, full logits, torch.compile"), None)
        print(f"recommended on this GPU for the full profile: {fast.label} ({fast.tokens_per_s / rows[0].tokens_per_s:.1f}x "
              f"fp32 eager)" + (f"; train() compiles in the default mode ({compiled.tokens_per_s / rows[0].tokens_per_s:.1f}x): "
                                "its batches vary in length, and CUDA graphs would be captured again for each"
                                if compiled and compiled is not fast else "")
              + f"; bf16 eager is {eager.tokens_per_s / rows[0].tokens_per_s:.1f}x")
        print(f"the full profile's defaults: PROFILE_DEFAULTS['full'] = {PROFILE_DEFAULTS['full']}")
    return {"recommended_laptop_chunk": lap_chunk}


def print_targets(results):
    """The issue's targets, as ratios measured above."""
    lines = []

    def check(name, value, target, ok, unit="x"):
        if value is None:
            return
        lines.append(f"  {'MET ' if ok else 'MISS'} {name}: {value:.2f}{unit} (target {target})")
    base, best = results.get("gpt_baseline"), results.get("gpt_best")
    if best is not None:
        fused = results["gpt_best_fused_fp32"]
        check(f"transformer step MFU, fp32 ({fused.label})", fused.mfu * 100, ">= 50%", fused.mfu >= 0.5, unit="%")
        if fused.memory and base.memory:
            r = fused.memory / base.memory
            check("peak memory of that step / full-logits step", r, "<= 0.5", r <= 0.5)
        r = best.tokens_per_s / base.tokens_per_s
        check(f"best setting ({best.label}) / fp32 full logits, multi-tensor AdamW (the kit before), tok/s",
              r, ">= 1.5", r >= 1.5)
        same_opt = results["gpt_plain_fused_adamw"]
        r = best.tokens_per_s / same_opt.tokens_per_s
        check("  the same / fp32 full logits with the same fused AdamW, tok/s", r, ">= 1.5", r >= 1.5)
    if "kgram_speedup" in results:
        r = results["kgram_speedup"]
        check("k-gram MLP step, vectorized vs per-token loop", r, ">= 10", r >= 10)
    if "full_best_bf16" in results:
        best = results["full_best_bf16"]
        check(f"full profile's transformer step MFU, bf16, on this GPU ({best.label})", best.mfu * 100, ">= 40%",
              best.mfu >= 0.4, unit="%")
    if "decode_ratio" in results:
        r = results["decode_ratio"]
        check("greedy KV-cache generation, time per token / time to read the weights", r, "<= 1.5", r <= 1.5)
    if lines:
        print("ratios against the targets:")
        print("\n".join(lines))


def bench_speed(results, compile=True):
    """Machine limits, training steps, generation, recommendation, targets."""
    out = {}
    for case in (bench_machine, lambda r: bench_gpt_step(r, compile=compile), bench_vocab,
                 bench_small_models, bench_decode, lambda r: bench_full(r, compile=compile)):
        out.update(case({**results, **out}))
    if "kgram_speedup" not in results:
        out.update(bench_kgram())
    out.update(recommend({**results, **out}))
    print_targets({**results, **out})
    return out


# ----------------------------------------------------------------------------------------------
# The `models` cases


def bench_kgram(B=16, T=32, k=3, E=128, V=50257, loop_batch=2):
    """Vectorized training step vs the report's per-token loop. The loop costs the same per token at
    any batch size, so it runs on the first loop_batch sequences and is scaled to B."""
    from .models import KGramMLPSeqModel, kgram_forward_loop
    torch.manual_seed(0)
    model = KGramMLPSeqModel(V, k=k, embed_size=E, num_inner_layers=1, input_mode="embedding")
    idx, targets = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    with torch.no_grad():
        diff = (model(idx[:2]) - kgram_forward_loop(model, idx[:2])).abs().max().item()
    vec_step = train_step_fn(copy.deepcopy(model), lambda m, x: m(x), idx, targets)
    vec_step(), vec_step()  # warm-up
    loop_step = train_step_fn(copy.deepcopy(model), kgram_forward_loop, idx[:loop_batch], targets[:loop_batch])
    # The loop takes seconds per step: a single timed step is plenty against that noise.
    vec, loop = timeit_pair(vec_step, loop_step, warmup=0, repeat_a=5, repeat_b=1)
    loop *= B / loop_batch
    print(f"k-gram MLP training step (B={B}, T={T}, k={k}, E={E}, V={V}, embedding inputs): "
          f"vectorized {vec * 1e3:.0f} ms, per-token loop {loop * 1e3:.0f} ms (timed on {loop_batch} "
          f"sequences, x{B // loop_batch}) -> vectorized is {loop / vec:.1f}x faster (outputs max |diff| {diff:.1e})")
    return {"kgram_vectorized_s": vec, "kgram_loop_s": loop, "kgram_speedup": loop / vec}


def bench_generation(E=256, L=4, H=8, block_size=512, V=50257, prompt_len=16, new_tokens=64):
    from .models import TransformerModel
    from .sampling import generate
    torch.manual_seed(0)
    model = TransformerModel(V, E, H, L, block_size, pos_emb="learned").eval()
    prompt = torch.randint(0, V, (prompt_len,)).tolist()
    ids = {}

    def run(use_cache):
        ids[use_cache] = generate(model, None, prompt, new_tokens, greedy=True, use_cache=use_cache).ids

    generate(model, None, prompt, 8, greedy=True)  # warm-up
    cached, uncached = timeit_pair(lambda: run(True), lambda: run(False), warmup=0, repeat_a=3, repeat_b=1)
    same = ids[True] == ids[False]
    print(f"transformer greedy generation of {new_tokens} tokens after a {prompt_len}-token prompt "
          f"(E={E}, L={L}, H={H}, block_size={block_size}, V={V}): KV cache {cached:.2f} s, "
          f"no cache (last-position logits only) {uncached:.2f} s -> cache is {uncached / cached:.1f}x faster; "
          f"same tokens: {same}")
    return {"gen_cache_s": cached, "gen_nocache_s": uncached, "gen_speedup": uncached / cached,
            "gen_same_tokens": same}


def bench_attention(B=8, T=256, E=256, L=4, H=8, V=4096):
    from .models import TransformerModel
    torch.manual_seed(0)
    model = TransformerModel(V, E, H, L, block_size=T, pos_emb="learned")
    idx, targets = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    with torch.no_grad():
        diff = (model(idx) - model(idx, return_attn=True)[0]).abs().max().item()
    sdpa, explicit = timeit_pair(train_step_fn(copy.deepcopy(model), lambda m, x: m(x), idx, targets),
                                 train_step_fn(copy.deepcopy(model), lambda m, x: m(x, return_attn=True)[0],
                                               idx, targets))
    print(f"transformer training step (B={B}, T={T}, E={E}, L={L}, H={H}, V={V}): "
          f"SDPA {sdpa * 1e3:.0f} ms, explicit softmax(QK^T) attention {explicit * 1e3:.0f} ms "
          f"-> SDPA is {explicit / sdpa:.2f}x faster (logits max |diff| {diff:.1e})")
    return {"attn_sdpa_s": sdpa, "attn_explicit_s": explicit, "attn_speedup": explicit / sdpa}


def bench_models(results=None):
    """k-gram vectorized vs loop; KV cache vs none; SDPA vs explicit attention."""
    out = {}
    for case in (bench_kgram, bench_generation, bench_attention):
        if case is bench_kgram and "kgram_speedup" in (results or {}):
            continue  # `speed` measured it already
        out.update(case())
    return out


# ----------------------------------------------------------------------------------------------
# The `data` case


def bench_data(results=None, n_stories=100_000):
    """Tokenizing n synthetic stories with tiktoken's batch encoder on every core, then again from
    the on-disk cache (in a fresh cache folder, so "first" really is first); building batches."""
    from . import batching
    from .stories import generate_stories
    from .tokenizer import get_tokenizer
    tok = get_tokenizer()
    t0 = time.perf_counter()
    texts = generate_stories(n_stories)
    t_gen = time.perf_counter() - t0
    old = os.environ.get("PICOLLM_CACHE")
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):  # no progress bar
        os.environ["PICOLLM_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            tokens, lengths = batching.tokenize_texts(texts, tok, name="bench")
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            batching.tokenize_texts(texts, tok, name="bench")
            cached = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("PICOLLM_CACHE", None)
            else:
                os.environ["PICOLLM_CACHE"] = old
    n_tok = int(lengths.sum())
    ds = batching.TokenDataset(tokens, batching._offsets(lengths), lengths.clamp(max=257), "bench", tok.eot_token)
    batches = 50
    t0 = time.perf_counter()
    for i, _ in enumerate(batching.batches(ds, 8, seed=0)):
        if i + 1 == batches:
            break
    t_batch = (time.perf_counter() - t0) / batches
    print(f"tokenizing {n_stories:,} synthetic stories ({n_tok / 1e6:.1f}M GPT-2 tokens; generating the "
          f"texts took {t_gen:.1f} s): first {first:.1f} s ({n_tok / first / 1e6:.2f}M tokens/s, "
          f"encode_ordinary_batch on {os.cpu_count()} threads), cached {cached:.2f} s -> "
          f"{first / cached:.0f}x; one batch of 8 x 256 tokens {t_batch * 1e3:.2f} ms")
    return {"tokenize_first_s": first, "tokenize_cached_s": cached, "batch_s": t_batch}


CASES = {"speed": bench_speed, "full": bench_full, "models": bench_models, "data": bench_data}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m picollm_helpers.bench", description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", default="all", choices=[*CASES, "all"])
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out the torch.compile row (compiling takes from seconds, with a warm cache, "
                             "to minutes)")
    args = parser.parse_args(argv)
    results = {}
    t_all = time.perf_counter()
    for name, case in CASES.items():
        if args.case == name or (args.case == "all" and name != "full"):  # `speed` runs `full`
            print(f"== {name}")
            t0 = time.perf_counter()
            out = case(results, compile=args.compile) if name in ("speed", "full") else case(results)
            results.update(out)
            print(f"({name}: {time.perf_counter() - t0:.0f} s)")
    if args.case == "full":
        print_targets(results)
    if args.case == "all":
        print(f"== summary ({time.perf_counter() - t_all:.0f} s in all)")
        print_targets(results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
