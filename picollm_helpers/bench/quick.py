"""The `quick` case: what this machine can do, in about a minute on two cores.

    python -m picollm_helpers.bench quick

It prints the machine (CPU model, torch's CPU capability and any ATEN_CPU_CAPABILITY limit, the
threads), the laptop profile's training step (tokens/s and MFU against the fp32 matmul peak timed
in the same rounds), greedy generation at batch 1 against the time to read the weights once (MET
or MISSED against 1.3x, and whether fast, readable and uncached generation give the same tokens),
and a prediction of each lesson's minutes in the laptop profile on this machine.

The prediction. results/NN_*.json hold each lesson's wall time and where it went, measured on the
machine that executed the committed lessons (REFERENCE below). A lesson's work is nearly all
training, evaluating and generating with the laptop profile's small models, so on another machine
it takes about that time scaled by how much slower or faster that machine runs the laptop profile's
training step: predicted = (wall time - plotting) x reference step rate / this machine's step rate
+ plotting (rendering figures does not run the models). The reference rate is stored here, with
how it was obtained; the ratio of steps is measured, the lessons are not run.

The result is also written to <cache>/bench_quick.json, which `make doctor` shows.
"""

from __future__ import annotations

import json
import os
import time

import torch

from ..config import cache_dir
from ..files import write_text
from ..models import decode_native
from ..models.decode import decode_threads
from ..results import cpu_info, results_dir
from ..sampling import generate
from ..timing import cpu_ticks, flop_params, read_bandwidth_fn, steal_share, timeit_rounds, train_flops_per_token
from .speed import GPT, LAPTOP, _gpt, _peak_fns, _tokens, compact_vocab_size
from .steps import kit_step_fn, measure_steps

DECODE_TARGET = 1.3   # greedy tokens at batch 1: time per token / time to read the weights once
LAPTOP_CHUNK = 512    # PROFILE_DEFAULTS["laptop"]["loss_chunk_size"]

# The machine the committed lessons ran on, and its laptop-profile step rate, measured there by
# `bench quick` on the idle machine just before the sequential `make run` that wrote results/. When
# the lessons are re-executed on another machine, run `bench quick` there first and put its
# "training: laptop step" rate and machine line here.
REFERENCE = {"machine": "the kit's test CPU: 2-core AMD EPYC (torch capability AVX512), 2 threads",
             "laptop_step_tokens_per_s": 15_751.0}
RESULT_FILE = "bench_quick.json"


def cpu_name() -> str:
    """The CPU's model name, as results files record it (results.cpu_info)."""
    return cpu_info()["model"]


def cpu_capability() -> str:
    """torch's CPU capability (the widest vector instructions its kernels use: AVX512, AVX2, ...),
    with the limits set in the environment that lower it (results.cpu_info)."""
    cpu = cpu_info()
    limits = [f"{k}={v}" for k, v in cpu["limits"].items()]
    return (cpu["capability"] or "unknown") + (f" (limited by {', '.join(limits)})" if limits else "")


def bench_laptop_step(results, repeat=15):
    """The laptop profile's training step: tokens/s and MFU against the fp32 peak timed alongside."""
    device = torch.device("cpu")
    V = results.get("compact_vocab") or compact_vocab_size(2000)
    s = LAPTOP
    model = _gpt(V, s["E"], s["L"], s["H"], s["T"], device)
    x, y = _tokens(s["B"], s["T"], V, device)
    flops = train_flops_per_token(model, s["T"]) * s["B"] * s["T"]
    label = (f"laptop step (E={s['E']}, L={s['L']}, H={s['H']}, T={s['T']}, B={s['B']}, V={V}, fp32, "
             f"chunk {LAPTOP_CHUNK})")
    row = measure_steps({label: (kit_step_fn(model, x, y, chunk=LAPTOP_CHUNK), s["B"] * s["T"], flops, "fp32")},
                        device, _peak_fns(device, ["fp32"]), repeat=repeat)[0]
    print(f"training: {label}: {row.tokens_per_s:,.0f} tok/s, {row.flops_per_s / 1e9:.1f} GFLOP/s, "
          f"MFU {row.mfu:.1%} of the fp32 matmul peak ({row.peak / 1e9:.0f} GFLOP/s, timed in the same rounds)")
    return {"laptop_step_tokens_per_s": row.tokens_per_s, "laptop_step_mfu": row.mfu, "peak_fp32": row.peak}


def bench_decode_quick(results, new_tokens=96, repeat=5, shape=None):
    """Greedy generation at batch 1 (GPT-shaped model, V=50257): ms per token with the fast step
    (decode_native.c where it builds here), with the eager fast step and with the readable one,
    against reading the weights once, all timed in the same rounds.

    A token's time is (time for new_tokens + 1 tokens - time for 1) / new_tokens: the setup both
    calls share (preparing the weights, the prompt) cancels, and its noise is shared out over
    new_tokens tokens. The share of CPU time the hypervisor took meanwhile (steal) is printed where
    the system reports it: the fast step's threads wait for each other several times per token, so
    steal slows it more than the one long read it is compared with."""
    g = shape or GPT
    model = _gpt(g["V"], g["E"], g["L"], g["H"], 512, "cpu").eval()
    prompt = list(range(16))
    native = decode_native.status()
    fast = generate(model, None, prompt, new_tokens, greedy=True).new_ids
    with decode_native.disabled():
        eager = generate(model, None, prompt, new_tokens, greedy=True).new_ids
    readable = generate(model, None, prompt, new_tokens, greedy=True, fast=False).new_ids
    uncached = generate(model, None, prompt, new_tokens, greedy=True, use_cache=False).new_ids
    same = fast == eager == readable == uncached and len(fast) == new_tokens
    read, nbytes = read_bandwidth_fn("cpu")
    threads = decode_threads(model, 1)

    def eager_step(n):
        with decode_native.disabled():
            generate(model, None, prompt, n, greedy=True)
    fns = {"fast": lambda: generate(model, None, prompt, new_tokens + 1, greedy=True),
           "fast1": lambda: generate(model, None, prompt, 1, greedy=True),
           "eager": lambda: eager_step(new_tokens + 1), "eager1": lambda: eager_step(1),
           "readable": lambda: generate(model, None, prompt, new_tokens + 1, greedy=True, fast=False),
           "readable1": lambda: generate(model, None, prompt, 1, greedy=True, fast=False),
           "read": read}
    ticks = cpu_ticks()
    times, _ = timeit_rounds(fns, warmup=1, repeat=repeat)
    steal = steal_share(ticks, cpu_ticks())
    weights_s = flop_params(model) * 4 * times["read"] / nbytes
    per_token = {k: (times[k] - times[k + "1"]) / new_tokens for k in ("fast", "eager", "readable")}
    ratio = per_token["fast"] / weights_s
    verdict = "MET" if ratio <= DECODE_TARGET and same else "MISSED"
    print(f"generation: greedy, batch 1, KV cache (E={g['E']}, L={g['L']}, H={g['H']}, V={g['V']}), {threads} "
          f"thread{'s' if threads > 1 else ''}: fast step {per_token['fast'] * 1e3:.2f} ms/token, eager fast step "
          f"{per_token['eager'] * 1e3:.2f}, readable step {per_token['readable'] * 1e3:.2f}; reading "
          f"the {flop_params(model) * 4 / 2 ** 20:.0f} MiB of weights once {weights_s * 1e3:.2f} ms "
          f"({nbytes / times['read'] / 1e9:.1f} GB/s, same rounds, medians of {repeat}"
          + (f"; the hypervisor took {steal:.0%} of the CPU time meanwhile" if steal is not None else "") + ")")
    print(f"  {verdict} {ratio:.2f}x the weight-read time (target <= {DECODE_TARGET}x; eager fast step "
          f"{per_token['eager'] / weights_s:.2f}x, readable step {per_token['readable'] / weights_s:.2f}x); fast, "
          f"eager, readable and uncached generation: {'the same' if same else 'DIFFERENT'} {new_tokens} tokens")
    print(f"  the fast step: {native}"
          + ("; below 1x, part of the weights stayed in the CPU's caches from one token to the next"
             if ratio < 1 else ""))
    return {"decode_ratio": ratio, "decode_eager_ratio": per_token["eager"] / weights_s,
            "decode_readable_ratio": per_token["readable"] / weights_s,
            "decode_s_per_token": per_token["fast"], "decode_weight_read_s": weights_s,
            "decode_identical": same, "decode_met": verdict == "MET", "decode_steal": steal,
            "decode_native": native}


def lesson_records(folder=None) -> dict:
    """{lesson: (wall seconds, plotting seconds)} of the laptop-profile results files."""
    out = {}
    for path in sorted((folder or results_dir()).glob("[0-9][0-9]_*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if rec.get("profile") == "laptop" and rec.get("wall_time_s"):
            out[path.stem] = (float(rec["wall_time_s"]), float((rec.get("time_s") or {}).get("plot", 0.0)))
    return out


def predict_minutes(step_tokens_per_s, records, reference_rate=None) -> dict:
    """{lesson: predicted seconds}: each lesson's recorded time but plotting, scaled by the reference
    step rate over this one, plus its plotting time."""
    scale = (reference_rate or REFERENCE["laptop_step_tokens_per_s"]) / step_tokens_per_s
    return {lesson: (wall - plot) * scale + plot for lesson, (wall, plot) in records.items()}


def format_duration(seconds: float) -> str:
    seconds = round(seconds)   # 59.6 s reads "1 min 00 s", not "0 min 60 s"
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def bench_quick(results, save=True):
    """Machine, laptop step and MFU, decode ratio, predicted lesson minutes; saved for make doctor."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    machine = (f"{cpu_name()}; torch {torch.__version__}, CPU capability {cpu_capability()}; "
               f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"machine: {machine}; load average {load[0]:.1f} (other work on the cores slows every number)")
    out = {"machine": machine, "load_average": load[0]}
    out.update(bench_laptop_step(results))
    out.update(bench_decode_quick(results))
    records = lesson_records()
    ref = REFERENCE["laptop_step_tokens_per_s"]
    if records:
        pred = predict_minutes(out["laptop_step_tokens_per_s"], records)
        print(f"predicted laptop-profile time of each lesson here: its recorded time ({REFERENCE['machine']}, "
              f"whose laptop step runs ~{ref:,.0f} tok/s) x {ref / out['laptop_step_tokens_per_s']:.2f} "
              f"(that rate / this machine's), plotting unscaled")
        for lesson, s in pred.items():
            print(f"  {lesson:<28} {format_duration(records[lesson][0]):>12} recorded  -> "
                  f"{format_duration(s):>12} here")
        print(f"  {'all lessons':<28} {format_duration(sum(w for w, _ in records.values())):>12} recorded  -> "
              f"{format_duration(sum(pred.values())):>12} here")
        out["predicted_s"] = pred
    out["seconds"] = time.perf_counter() - t0
    if save:
        save_quick(out)
    return out


def save_quick(out: dict, path=None):
    """Write what `make doctor` shows: the machine, the step rate, the decode verdict, the prediction."""
    keep = {k: out[k] for k in ("machine", "load_average", "laptop_step_tokens_per_s", "laptop_step_mfu",
                                "decode_ratio", "decode_met", "decode_steal", "predicted_s") if k in out}
    keep["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
    return write_text(path or cache_dir() / RESULT_FILE, json.dumps(keep, indent=1) + "\n")
