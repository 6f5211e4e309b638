"""The `speed` and `full` cases: the machine's limits, each model's training step, greedy decoding
against the weight-read time, batched sampling, the settings each profile should use, and the
ratios against the targets."""

from __future__ import annotations

import os
import time

import torch

from ..config import PROFILE_DEFAULTS
from ..loss import lm_loss
from ..models import KGramMLPSeqModel, LSTMSeqModel, TransformerModel
from ..results import cpu_info
from ..sampling import generate
from ..stories import generate_stories
from ..timing import (
    FLOPS_NOTE,
    flop_params,
    measure_peaks,
    peak_matmul_fn,
    read_bandwidth_fn,
    sync,
    timeit_rounds,
    train_flops_per_token,
)
from ..tokenizer import get_tokenizer
from .compare import bench_kgram
from .steps import format_mib, kit_step_fn, measure_steps, print_rows

# The `speed` cases

# A GPT-2-small-like transformer step, and the report's Q1/Q2 LSTM and k-gram MLP settings.
GPT = dict(E=256, L=4, H=8, T=256, B=8, V=50257)
SMALL = dict(B=16, T=32, E=128, V=50257, k=3)
LAPTOP = dict(E=128, L=4, H=4, T=128, B=16)   # PROFILE_CAPS["laptop"] with batch_size 16
CHUNK = 512                                    # rows per chunk of the fused loss
TRAIN_TARGET = 0.7   # the `train` case: train()'s non-padding tokens/s over the benchmark's row


def _device(results):
    return results.setdefault("_device", torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _tokens(B, T, V, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (B, T), generator=g).to(device),
            torch.randint(0, V, (B, T), generator=g).to(device))


def _gpt(V, E, L, H, T, device, seed=0):
    torch.manual_seed(seed)
    return TransformerModel(V, E, H, L, block_size=T, pos_emb="learned").to(device)


def _peak_fns(device, precisions):
    return {p: peak_matmul_fn(torch.float32 if p == "fp32" else torch.bfloat16, device) for p in precisions}


def compact_vocab_size(n_stories=5000) -> int:
    """Vocabulary of a CompactTokenizer over synthetic stories (what the smoke and laptop profiles
    train over when TinyStories cannot be downloaded)."""
    ids = get_tokenizer().encode_ordinary_batch(generate_stories(n_stories), num_threads=os.cpu_count() or 1)
    return len({i for s in ids for i in s} | {50256}) + 1  # + <|endoftext|>, + <|unk|>


def bench_machine(results):
    """Header: the machine, its load, and its measured limits."""
    device = _device(results)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_info()["model"]
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
        sync(device)
    except Exception as e:
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120]}"
    return True, f"the first step took {time.perf_counter() - t0:.0f} s, compilation included"


def bench_gpt_step(results, compile=True):
    """The GPT-shaped transformer training step, in every setting that keeps the task the same."""
    device = _device(results)
    g = GPT
    x, y = _tokens(g["B"], g["T"], g["V"], device)
    precisions = ["fp32"] + (["bf16"] if results.get("bf16_fast") else [])
    settings = [("fp32, full logits, multi-tensor AdamW (plain PyTorch)", dict(chunk=0, fused_adamw=False)),
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
    """Greedy generation with the KV cache at batch 1: time per token vs reading the weights once,
    and the cached tokens checked against uncached generation's."""
    device = _device(results)
    g = GPT
    model = _gpt(g["V"], g["E"], g["L"], g["H"], 512, device).eval()
    prompt = list(range(16))
    cached = generate(model, None, prompt, new_tokens, greedy=True).new_ids
    uncached = generate(model, None, prompt, new_tokens, greedy=True, use_cache=False).new_ids
    same = sum(a == b for a, b in zip(cached, uncached))
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
          f"{per_token * 1e3:.1f} ms/token ({1 / per_token:,.0f} tokens/s, median of 7 rounds); reading the "
          f"{weight_bytes / 2 ** 20:,.0f} MiB of weights a token uses once takes {weights_s * 1e3:.1f} ms "
          f"at the {nbytes / times['read'] / 1e9:.1f} GB/s measured alongside -> {per_token / weights_s:.2f}x that")
    print(f"  cached and uncached generation: {same} of {new_tokens} greedy tokens identical")
    out = {"decode_s_per_token": per_token, "decode_weight_read_s": weights_s, "decode_ratio": per_token / weights_s,
           "decode_identical": same == new_tokens == len(cached) == len(uncached)}
    if "long1" in times:
        one = (times["long1"] - times["short1"]) / new_tokens
        print(f"  the same on 1 thread: {one * 1e3:.1f} ms/token -> {one / weights_s:.2f}x (each token is ~100 "
              f"small ops: on a busy machine, synchronising threads between them can cost more than a 2nd "
              f"thread gains)")
        out.update(decode_1thread_s_per_token=one, decode_1thread_ratio=one / weights_s)
    return out


SAMPLES = (1, 8, 64)


def bench_sampling(results, new_tokens=16, top_p=0.9):
    """Batched sampling, as lesson 03's diversity tables draw it (generate(..., num_samples=N)):
    tokens/s at 1, 8 and 64 samples, top-p and greedy, for the GPT-shaped model (the report's
    vocabulary) and the laptop profile's (compact vocabulary)."""
    device = _device(results)
    V = results.get("compact_vocab") or compact_vocab_size()
    prompt = list(range(16))
    out = {}
    for key, (v, shape) in {"gpt": (GPT["V"], GPT), "laptop": (V, LAPTOP)}.items():
        model = _gpt(v, shape["E"], shape["L"], shape["H"], 512, device).eval()
        fns = {}
        for n in SAMPLES:
            fns[("top-p", n)] = lambda n=n, m=model: generate(m, None, prompt, new_tokens, top_p=top_p, seed=0,
                                                              num_samples=n)
            fns[("greedy", n)] = lambda n=n, m=model: generate(m, None, prompt, new_tokens, greedy=True,
                                                               num_samples=n)
        times, _ = timeit_rounds(fns, warmup=1, repeat=3, device=device)
        rates = {k: k[1] * new_tokens / t for k, t in times.items()}
        print(f"batched sampling, KV cache (E={shape['E']}, L={shape['L']}, H={shape['H']}, V={v}; {new_tokens} "
              f"new tokens after a 16-token prompt, the prompt's step included), tokens/s:")
        for how in ("top-p", "greedy"):
            label = f"top-p {top_p}, temperature 1" if how == "top-p" else "greedy"
            print(f"  {label:<26}" + "".join(f"{n:>4} samples {rates[(how, n)]:>8,.0f}" for n in SAMPLES))
        out[f"sampling_{key}"] = {f"{how}@{n}": r for (how, n), r in rates.items()}
    return out


def recommend(results):
    """The settings the rows above favour on this machine, next to the laptop profile's defaults.

    The fused loss always needs less memory, so it is recommended unless it is measurably slower
    (by more than 5%, beyond this benchmark's noise on a shared machine)."""
    lap, lap_full = results.get("laptop_fused_speedup", float("nan")), results.get("laptop_full_vocab_fused_speedup")
    mem = results.get("laptop_fused_memory")
    best, base = results["gpt_best_fused_fp32"], results["gpt_plain_fused_adamw"]
    compiled = next((r for r in results["gpt_rows"] if "compile" in r.label), None)
    bf16 = results.get("bf16_fast")
    lap_chunk = CHUNK if lap >= 0.95 else 0
    print(f"recommended here: loss_chunk_size={lap_chunk} for the laptop profile (fused loss {lap:.2f}x the "
          f"full logits' speed" + (f" in {mem:.2f}x the memory" if mem else "") + " with the compact vocabulary"
          + (f", {lap_full:.2f}x with V=50257" if lap_full else "") + f") and {CHUNK} for the full vocabulary "
          f"({best.tokens_per_s / base.tokens_per_s:.2f}x, "
          f"{format_mib(best.memory)} vs {format_mib(base.memory)} MiB); "
          f"precision={'bf16' if bf16 else 'fp32'}" + ("" if bf16 else " (bf16 matmul is slower than fp32 here)")
          + "; compile=False for laptop runs" + (
              f" (compiled step {compiled.tokens_per_s / best.tokens_per_s:.2f}x the eager one, but every run "
              f"compiles again)" if compiled else ""))
    print(f"the laptop profile's defaults: PROFILE_DEFAULTS['laptop'] = {PROFILE_DEFAULTS['laptop']}")
    if results.get("full_rows"):
        rows, fast = results["full_rows"], results["full_best_bf16"]
        eager = next(r for r in rows if r.label == "bf16 autocast, full logits")
        compiled = next((r for r in rows if r.label == "bf16 autocast, full logits, torch.compile"), None)
        print(f"recommended on this GPU for the full profile: {fast.label} "
              f"({fast.tokens_per_s / rows[0].tokens_per_s:.1f}x fp32 eager)"
              + (f"; train() compiles in the default mode ({compiled.tokens_per_s / rows[0].tokens_per_s:.1f}x): "
                                "its batches vary in length, and CUDA graphs would be captured again for each"
                                if compiled and compiled is not fast else "")
              + f"; bf16 eager is {eager.tokens_per_s / rows[0].tokens_per_s:.1f}x")
        print(f"the full profile's defaults: PROFILE_DEFAULTS['full'] = {PROFILE_DEFAULTS['full']}")
    return {"recommended_laptop_chunk": lap_chunk}


def print_targets(results):
    """The kit's speed goals, as ratios measured above: MET or MISS on this machine."""
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
        check(f"best setting ({best.label}) / fp32 full logits, multi-tensor AdamW (plain PyTorch), tok/s",
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
        check("greedy KV-cache generation at batch 1, time per token / time to read the weights", r, "<= 1.3",
              r <= 1.3 and results["decode_identical"])
        if not results["decode_identical"]:
            lines.append("  MISS cached and uncached generation give different tokens")
    if "train_ratio" in results:
        ref = results["train_reference"]
        r = results["train_profile_ratio"]
        check(f"train() in the profile's setting: non-padding tok/s / {ref.label}", r, f">= {TRAIN_TARGET}",
              r >= TRAIN_TARGET)
        if results["train_ratio"] > r:
            r = results["train_ratio"]
            check(f"  its fastest variant ({results['train_best_label']})", r, f">= {TRAIN_TARGET}", r >= TRAIN_TARGET)
    if lines:
        print("ratios against the speed goals:")
        print("\n".join(lines))


def bench_speed(results, compile=True):
    """Machine limits, training steps, generation, recommendation, targets."""
    out = {}
    for case in (bench_machine, lambda r: bench_gpt_step(r, compile=compile), bench_vocab,
                 bench_small_models, bench_decode, bench_sampling, lambda r: bench_full(r, compile=compile)):
        out.update(case({**results, **out}))
    if "kgram_speedup" not in results:
        out.update(bench_kgram())
    out.update(recommend({**results, **out}))
    print_targets({**results, **out})
    return out
