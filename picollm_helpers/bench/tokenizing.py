"""The `data` case: tokenizing synthetic stories, first and from the on-disk cache; building batches."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time

from .. import batching
from ..stories import generate_stories
from ..tokenizer import get_tokenizer


def bench_data(results=None, n_stories=100_000):
    """Tokenizing n synthetic stories with tiktoken's batch encoder on every core, then again from
    the on-disk cache (in a fresh cache folder, so "first" really is first); building batches."""
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
