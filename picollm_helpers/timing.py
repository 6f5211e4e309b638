"""Timing, memory and FLOP-counting helpers: what the benchmark and the lessons measure with.

Absolute times depend on the machine and on whatever else runs on it; ratios much less. So
variants that are compared are timed in alternation, round after round (`timeit_rounds`,
`timeit_pair`), and their medians compared. `measure_peaks` times the machine's own limits
(matmul peak per precision, memory read bandwidth), against which MFU and bandwidth use are
stated; `train_flops_per_token` counts a model's FLOPs the way PaLM and nanoGPT do.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections import defaultdict

import torch
import torch.nn as nn

# ----------------------------------------------------------------------------------------------
# Where a lesson's minutes go: train(), evaluate(), generate() and figure rendering each run inside
# a phase; a phase's time excludes the phases nested in it (train() evaluates and generates after
# every epoch), so the totals add up to at most the wall time. results.LessonResults records them.

PHASES = ("train", "evaluate", "generate", "plot")
_phase_totals: dict[str, float] = defaultdict(float)
_phase_stack: list[list] = []  # [name, start, seconds spent in nested phases]


class phase(contextlib.ContextDecorator):
    """`with phase("train"):` or `@phase("train")`: add the time spent inside to that phase's total."""

    def __init__(self, name: str):
        if name not in PHASES:
            raise ValueError(f"phase {name!r} is not one of {', '.join(PHASES)}")
        self.name = name

    def __enter__(self):
        _phase_stack.append([self.name, time.perf_counter(), 0.0])
        return self

    def __exit__(self, *exc):
        name, start, nested = _phase_stack.pop()
        elapsed = time.perf_counter() - start
        _phase_totals[name] += elapsed - nested
        if _phase_stack:
            _phase_stack[-1][2] += elapsed
        return False


def phase_totals() -> dict[str, float]:
    """Seconds spent so far in each phase, in this process (nested phases counted once, innermost)."""
    return {name: _phase_totals[name] for name in PHASES}


# ----------------------------------------------------------------------------------------------
# Timing


def sync(device=None):
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
            sync(device)
    times = {name: [] for name in fns}
    mem = {}
    for r in range(repeat):
        for name, fn in fns.items():
            elapsed = []

            def timed(fn=fn, elapsed=elapsed):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                elapsed.append(time.perf_counter() - t0)
            if r == 0 and name in memory:
                mem[name] = peak_memory(timed, device)
            else:
                timed()
            times[name].append(elapsed[0])
    return {name: statistics.median(t) for name, t in times.items()}, mem


def cpu_ticks(path="/proc/stat"):
    """(steal, total) CPU time of all cores in clock ticks since boot, from /proc/stat (Linux), or
    None where there is no such file. Steal is time a virtual machine's cores were ready to run but
    the hypervisor ran another guest: on a shared cloud machine it slows every timing, and most of
    all work whose threads wait for each other (a parallel region waits for its slowest core)."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user and nice]
    steal = ticks[7] if len(ticks) > 7 else 0
    return steal, sum(ticks[:8])


def steal_share(before, after) -> float | None:
    """The share of CPU time the hypervisor took between two cpu_ticks() readings (None when either
    is None or no time passed)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


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
