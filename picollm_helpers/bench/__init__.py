"""Speed measurements that print ratios: `python -m picollm_helpers.bench [quick|speed|...|attention|all]`.

quick   about a minute: the machine (CPU, torch's CPU capability, threads), the laptop profile's
        training step and its MFU, greedy generation at batch 1 against the weight-read time (MET or
        MISSED against 1.3x), and each lesson's predicted laptop-profile minutes on this machine
        (saved for `make doctor`). See bench/quick.py.

speed   the machine's own limits first (matmul peak of each precision, memory read bandwidth), then
        each model's training step as tokens/s, achieved FLOP/s, MFU (model FLOP/s over the
        measured peak of the precision used) and peak memory; greedy generation at batch 1 against
        the time to read the weights once (and its tokens against uncached generation's); batched
        sampling at 1, 8 and 64 samples; the settings it recommends; the ratios against the targets.
        The transformer rows include one under torch.compile (--no-compile leaves it out).
        On a CUDA GPU it ends with `full`.
full    the full profile's TinyStories transformer (E=512, L=6, T=512, B=16) in fp32 and bf16,
        eager and compiled: the GPU case (skipped on a CPU).
train   the real train() for a few hundred steps on synthetic stories: non-padding tokens/s after the
        first epoch against the benchmark's row for the same step, and the first epoch's warm-up. On
        a GPU the full profile (padded to the longest, length buckets with CUDA graphs, packed), on a
        CPU the laptop profile.
models  implementations side by side: k-gram vectorized vs per-token loop, KV cache vs none,
        SDPA vs explicit attention.
data    tokenizing 100,000 synthetic stories, first and from the cache; building batches.
attention  per generated token (ms and state bytes) and per training step, against the context length:
        softmax with its KV cache against linear attention and the gated delta rule (bench/attention.py).

Absolute times depend on the machine and on whatever else runs on it; ratios much less. So the
variants compared are timed in alternation, round after round (timeit_rounds), their medians
compared, and the matmul peak is timed in the same rounds as the steps it is compared with. The
header prints the load average: on a busy machine every number is lower and noisier.

Add a case by writing a function that takes the results so far, prints its lines and returns a dict
of numbers, and listing it in CASES.
"""

from __future__ import annotations

import argparse
import time

from .attention import bench_attention
from .compare import bench_models
from .quick import bench_quick
from .speed import bench_full, bench_speed, print_targets
from .tokenizing import bench_data
from .training import bench_train

CASES = {"quick": bench_quick, "speed": bench_speed, "full": bench_full, "train": bench_train, "models": bench_models,
         "data": bench_data, "attention": bench_attention}
COMPILING = ("speed", "full", "train")   # the cases that take --no-compile


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
        # `speed` runs `full`; `attention` runs on its own (a lesson-10 comparison, not a target)
        if args.case == name or (args.case == "all" and name not in ("full", "quick", "attention")):
            print(f"== {name}")
            t0 = time.perf_counter()
            out = case(results, compile=args.compile) if name in COMPILING else case(results)
            results.update(out)
            print(f"({name}: {time.perf_counter() - t0:.0f} s)")
    if args.case in ("full", "train"):
        print_targets(results)
    if args.case == "all":
        print(f"== summary ({time.perf_counter() - t_all:.0f} s in all)")
        print_targets(results)
    return results
