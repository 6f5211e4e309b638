"""Speed measurements that print ratios: `python -m picollm_helpers.bench [models|all]`.

Each case measures two ways of doing the same thing side by side, in one process, and prints both
times and their ratio (absolute times depend on the machine, ratios much less). Add a case by
writing a function that prints its lines and returns a dict of numbers, and listing it in CASES.
"""

import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F


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


def bench_kgram(B=16, T=32, k=3, E=128, V=50257):
    from .models import KGramMLPSeqModel, kgram_forward_loop
    torch.manual_seed(0)
    model = KGramMLPSeqModel(V, k=k, embed_size=E, num_inner_layers=1, input_mode="embedding")
    idx, targets = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    with torch.no_grad():
        diff = (model(idx[:4]) - kgram_forward_loop(model, idx[:4])).abs().max().item()
    vec_step = train_step_fn(copy.deepcopy(model), lambda m, x: m(x), idx, targets)
    vec_step(), vec_step()  # warm-up
    # The loop takes tens of seconds per step: a single timed step is plenty against that noise.
    vec, loop = timeit_pair(vec_step, train_step_fn(copy.deepcopy(model), kgram_forward_loop, idx, targets),
                            warmup=0, repeat_a=5, repeat_b=1)
    print(f"k-gram MLP training step (B={B}, T={T}, k={k}, E={E}, V={V}, embedding inputs): "
          f"vectorized {vec * 1e3:.0f} ms, per-token loop {loop * 1e3:.0f} ms "
          f"-> vectorized is {loop / vec:.1f}x faster (outputs max |diff| {diff:.1e})")
    return {"kgram_vectorized_s": vec, "kgram_loop_s": loop, "kgram_speedup": loop / vec}


def bench_generation(E=256, L=4, H=8, block_size=512, V=50257, prompt_len=16, new_tokens=256):
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


def bench_models():
    """k-gram vectorized vs loop; KV cache vs none; SDPA vs explicit attention."""
    results = {}
    for case in (bench_kgram, bench_generation, bench_attention):
        results.update(case())
    return results


CASES = {"models": bench_models}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m picollm_helpers.bench", description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", default="all", choices=[*CASES, "all"])
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    results = {}
    for name, case in CASES.items():
        if args.case in (name, "all"):
            print(f"== {name}")
            results.update(case())
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
