"""The `models` case: implementations side by side (k-gram vectorized vs per-token loop, KV cache vs
none, SDPA vs explicit attention), each with the largest difference of their outputs."""

from __future__ import annotations

import copy

import torch

from ..models import KGramMLPSeqModel, TransformerModel, kgram_forward_loop
from ..sampling import generate
from ..timing import timeit_pair
from .steps import train_step_fn


def bench_kgram(B=16, T=32, k=3, E=128, V=50257, loop_batch=2):
    """Vectorized training step vs the report's per-token loop. The loop costs the same per token at
    any batch size, so it runs on the first loop_batch sequences and is scaled to B."""
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
    torch.manual_seed(0)
    model = TransformerModel(V, E, H, L, block_size=T, pos_emb="learned")
    idx, targets = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    explicit_model = copy.deepcopy(model)
    for blk in explicit_model.blocks:  # a hook on hook_pattern switches attention to the explicit softmax
        blk.attn.hook_pattern.register_forward_hook(lambda mod, args, out: None)
    with torch.no_grad():
        diff = (model(idx) - explicit_model(idx)).abs().max().item()
    sdpa, explicit = timeit_pair(train_step_fn(copy.deepcopy(model), lambda m, x: m(x), idx, targets),
                                 train_step_fn(explicit_model, lambda m, x: m(x), idx, targets))
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
