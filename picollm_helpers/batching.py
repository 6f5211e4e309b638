"""Batching: tokenized datasets, the train/test split, source mixing and (x, y) batches.

    tokenize_texts(texts, tok)   all texts' GPT-2 ids, flat, cached under cache_dir()/tokens
    make_datasets(cfg, tok)      the sources named by a RunConfig as a (train, test) pair of
                                 TokenDatasets: list-likes of 1-D int64 token tensors of at most
                                 block_size + 1 tokens, split by (test_fraction, seed)
    collate_batch(examples)      a list of them padded into (x, y), the padding masked out of the loss,
                                 to the longest example or to a multiple of length_bucket
    batches / make_loader        seeded (x, y) batches of a TokenDataset, by hand or as a DataLoader

Neighbours: `data` loads the corpora this module tokenizes; `training` consumes the batches.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import zlib
from functools import partial

import numpy as np
import torch

from .config import IGNORE_INDEX, cache_dir
from .data import cache_key, cache_note, load_text_files, load_tinystories, load_wiki, texts_digest
from .errors import DataError
from .files import write_bytes
from .progress import note, progress
from .tokenizer import EOT_ID, CompactTokenizer

# ----------------------------------------------------------------------------------------------
# Tokenization, cached on disk

_PROBE = "Once upon a time, 3 cats said: \"Hello\" - naïve café 12345 <|endoftext|>!"


def _tokenizer_key(tokenizer) -> str:
    """Identity of a tokenizer: its name, vocabulary size and how it encodes a probe string."""
    probe = tokenizer.encode_ordinary(_PROBE)
    return f"{getattr(tokenizer, 'name', type(tokenizer).__name__)}-{tokenizer.n_vocab}-{cache_key(probe)[:10]}"


def _ids_digest(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.contiguous().numpy().tobytes()).hexdigest()


def _read_tokens_cache(path, key: str, n_texts: int):
    """(tokens, lengths) from a cache file, or None, with a one-line note, when it does not match its key:
    unreadable, another key, not int tensors, lengths that do not add up, or ids that fail their sha256."""
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as e:  # truncated, empty, or not a torch file
        return cache_note(path, f"is unreadable ({type(e).__name__})")
    tokens, lengths = (saved.get("tokens"), saved.get("lengths")) if isinstance(saved, dict) else (None, None)
    if not (isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int32 and tokens.dim() == 1
            and isinstance(lengths, torch.Tensor) and lengths.dtype == torch.int64 and lengths.dim() == 1):
        return cache_note(path, "does not hold int32 token ids and int64 lengths")
    if saved.get("key") != key:
        return cache_note(path, "belongs to another key")
    if len(lengths) != n_texts or int(lengths.sum()) != tokens.numel() or bool((lengths < 0).any()):
        return cache_note(path, f"holds {len(lengths)} lengths summing to {int(lengths.sum())} for "
                                f"{tokens.numel()} ids and {n_texts} texts")
    if saved.get("sha256") != _ids_digest(tokens):
        return cache_note(path, "holds ids that do not match their fingerprint")
    return tokens, lengths


def tokenize_texts(texts: list[str], tokenizer, name: str = "texts") -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, lengths): all texts' token ids in one flat int32 tensor plus each text's length.

    Cached under cache_dir()/tokens keyed by the texts' content and the tokenizer, so the same
    corpus is tokenized once. The full texts are stored (no truncation), so one cache file serves
    every block_size and both per-line and packed modes.
    """
    if isinstance(tokenizer, CompactTokenizer):
        # It renumbers GPT-2's ids: reuse GPT-2's cache.
        tokens, lengths = tokenize_texts(texts, tokenizer.base, name)
        return tokenizer.from_base[tokens.long()].to(torch.int32), lengths

    key = cache_key(_tokenizer_key(tokenizer), texts_digest(texts), len(texts))
    path = cache_dir() / "tokens" / f"{name}-{key}.pt"
    if path.exists():
        cached = _read_tokens_cache(path, key, len(texts))
        if cached is not None:
            return cached
    ids: list[list[int]] = []
    chunk = 2000
    threads = os.cpu_count() or 1
    for i in progress(range(0, len(texts), chunk), desc=f"tokenizing {name}",
                      disable=len(texts) <= 4 * chunk):
        batch = texts[i:i + chunk]
        if hasattr(tokenizer, "encode_ordinary_batch"):
            ids += tokenizer.encode_ordinary_batch(batch, num_threads=threads)
        else:
            ids += [tokenizer.encode_ordinary(t) for t in batch]
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)  # (N,)
    tokens = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32,
                                          count=int(lengths.sum())))  # (sum of lengths,)
    import io

    buf = io.BytesIO()
    torch.save({"key": key, "tokens": tokens, "lengths": lengths, "sha256": _ids_digest(tokens)}, buf)
    write_bytes(path, buf.getvalue())
    return tokens, lengths


# ----------------------------------------------------------------------------------------------
# TokenDataset


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    """Start of each run in a flat tensor holding runs of the given lengths."""
    return torch.cumsum(lengths, 0) - lengths


class TokenDataset:
    """A list-like of 1-D int64 token tensors, stored compactly: one flat int32 tensor plus the
    start and length of each example. `ds[i]` is a view of at most block_size + 1 tokens."""

    def __init__(self, tokens: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor,
                 source: str, pad_id: int = EOT_ID, parts: dict | None = None):
        self.tokens = tokens      # (total,) int32
        self.starts = starts      # (N,) int64
        self.lengths = lengths    # (N,) int64
        self.source = source
        self.pad_id = pad_id      # the tokenizer's <|endoftext|> id, used to pad x
        self.parts = parts or {source: len(starts)}  # source name -> number of examples

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not isinstance(i, (int, np.integer)):
            if isinstance(i, torch.Tensor) and i.ndim == 0:
                i = int(i)
            else:
                raise TypeError(f"TokenDataset indices are integers, not {type(i).__name__}")
        s = int(self.starts[i])
        return self.tokens[s:s + int(self.lengths[i])].long()

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def subset(self, indices, source: str | None = None) -> "TokenDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TokenDataset(self.tokens, self.starts[idx], self.lengths[idx], source or self.source, self.pad_id)

    def __repr__(self) -> str:
        return f"TokenDataset({len(self)} examples, {self.num_tokens} tokens; {self.source})"


def _split_indices(n: int, test_fraction: float, seed: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) document indices, both sorted: a fixed function of (n, test_fraction, seed, name)."""
    n_test = int(round(n * test_fraction))
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(name.encode()))
    perm = torch.randperm(n, generator=g)
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _examples(tokens, lengths, docs, block_size: int, packed: bool, eot: int):
    """(tokens, starts, lengths) of the examples made from documents `docs` (indices)."""
    doc_starts, doc_lens = _offsets(lengths)[docs], lengths[docs]
    if not packed:
        # One example per document, truncated to block_size + 1 tokens (pico-llm's semantics).
        ex_lens = doc_lens.clamp(max=block_size + 1)
        keep = ex_lens >= 2  # an example needs an input and a target
        return tokens, doc_starts[keep], ex_lens[keep]
    # Packed: documents joined, each followed by <|endoftext|>, cut into windows of block_size + 1
    # tokens that overlap by one, so every next-token pair in the stream is a training target.
    stream = torch.full((int(doc_lens.sum()) + len(docs),), eot, dtype=tokens.dtype)
    dst = _offsets(doc_lens + 1)
    run = torch.repeat_interleave(torch.arange(len(docs)), doc_lens)
    within = torch.arange(int(doc_lens.sum())) - _offsets(doc_lens)[run]
    stream[dst[run] + within] = tokens[doc_starts[run] + within]
    starts = torch.arange(0, max(len(stream) - 1, 0), block_size)
    ex_lens = (len(stream) - starts).clamp(max=block_size + 1)
    keep = ex_lens >= 2
    return stream, starts[keep], ex_lens[keep]


def _concat(datasets: list[tuple[str, TokenDataset]], pad_id: int) -> TokenDataset:
    if len(datasets) == 1:
        return datasets[0][1]
    tokens = torch.cat([ds.tokens for _, ds in datasets])
    shift = _offsets(torch.tensor([len(ds.tokens) for _, ds in datasets], dtype=torch.int64))
    starts = torch.cat([ds.starts + s for (_, ds), s in zip(datasets, shift)])
    lengths = torch.cat([ds.lengths for _, ds in datasets])
    parts = {name: len(ds) for name, ds in datasets}
    return TokenDataset(tokens, starts, lengths, " + ".join(parts), pad_id, parts)


def _mixture(datasets, weights, n: int, seed: int, pad_id: int) -> TokenDataset:
    """n examples, each drawn from source k with probability weights[k] (pico-llm's mixing).

    Within a source, examples are taken in seeded random order without replacement, starting
    over when exhausted, so a small source is repeated evenly rather than by chance.
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7)
    which = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, replacement=True, generator=g)  # (n,)
    base = _concat(datasets, pad_id)
    first = _offsets(torch.tensor([len(ds) for _, ds in datasets], dtype=torch.int64))
    index = torch.empty(n, dtype=torch.long)
    for k, (_, ds) in enumerate(datasets):
        pos = (which == k).nonzero().flatten()
        reps = math.ceil(len(pos) / len(ds)) if len(pos) else 0
        if reps:
            order = torch.cat([torch.randperm(len(ds), generator=g) for _ in range(reps)])
            index[pos] = first[k] + order[:len(pos)]
    parts = {name: int((which == k).sum()) for k, (name, _) in enumerate(datasets)}
    return TokenDataset(base.tokens, base.starts[index], base.lengths[index],
                        " + ".join(f"{name} (p={w:.2f})" for (name, _), w in zip(datasets, weights)),
                        pad_id, parts)


def source_weights(cfg) -> dict[str, float]:
    """The probability of drawing a training example from each source named by cfg.

    tinystories_weight and wiki_weight are probabilities (pico-llm's semantics); input_files get
    the rest. Sources with weight 0 are not loaded. With no input_files, every draw comes from
    TinyStories and Wiki in proportion to their weights (pico-llm trains on TinyStories alone then).
    """
    files = list(cfg.input_files)
    w_tiny, w_wiki = float(cfg.tinystories_weight), float(cfg.wiki_weight)
    for name, w in (("tinystories_weight", w_tiny), ("wiki_weight", w_wiki)):
        if not 0.0 <= w <= 1.0:
            raise DataError(f"{name}={w}: it is a probability; use a value in [0, 1].")
    rest = 1.0 - w_tiny - w_wiki
    if w_tiny + w_wiki <= 1e-9 and not files:
        raise DataError("tinystories_weight = wiki_weight = 0 and no input_files: there is no data to train on; "
                         "set tinystories_weight=1.0 or pass input_files.")
    if rest < -1e-9:
        raise DataError(f"tinystories_weight + wiki_weight = {w_tiny + w_wiki:g} > 1: they are probabilities "
                         "of one draw; make them sum to at most 1.")
    if rest > 1e-9 and not files:
        # As in pico-llm: with no input files every draw comes from the named datasets.
        w_tiny, w_wiki = w_tiny / (w_tiny + w_wiki), w_wiki / (w_tiny + w_wiki)
        rest = 0.0
    if files and rest <= 1e-9:
        note(f"Note: input_files {files} are not used: tinystories_weight + wiki_weight = 1 leaves no draws "
              "for them (lower those weights to mix them in).")
    weights = {"TinyStories": w_tiny, "Wiki": w_wiki, "input files": max(rest, 0.0) if files else 0.0}
    return {k: w for k, w in weights.items() if w > 1e-9}


def make_datasets(cfg, tokenizer) -> tuple[TokenDataset, TokenDataset]:
    """(train, test) TokenDatasets for the sources and weights named by cfg.

    Each source is split into train and test documents by (test_fraction, seed). The test set is
    every source's test documents, in a fixed order. The training set has as many examples as
    the sources' training documents together, each drawn from a source with its weight (a seeded
    draw, so the same config gives the same set); with a single source it is just that source.
    Examples are one document truncated to block_size + 1 tokens, or, with cfg.packed, windows of
    block_size + 1 tokens cut from all documents joined with <|endoftext|>.
    """
    weights = source_weights(cfg)
    block_size = int(cfg.block_size)
    if block_size < 1:
        raise DataError(f"block_size={block_size}: use a context length >= 1.")
    test_fraction = float(cfg.test_fraction)
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction}: it is the share held out for testing; use [0, 1).")
    packed = bool(cfg.packed)

    tokenized = {}
    for name in weights:
        if name == "TinyStories":
            corpus = load_tinystories(int(cfg.num_tinystories))
        elif name == "Wiki":
            corpus = load_wiki(int(cfg.num_wiki_lines))
        else:
            corpus = load_text_files(cfg.input_files)
        tokenized[name] = tokenize_texts(corpus.texts, tokenizer, name.replace(" ", "-").lower())
    if cfg.compact_vocab and not isinstance(tokenizer, CompactTokenizer):
        # Train over only the GPT-2 ids these sources use (see tokenizer.CompactTokenizer).
        used = torch.cat([tokens for tokens, _ in tokenized.values()]).unique()
        tokenizer = CompactTokenizer(tokenizer, used)
        tokenized = {name: (tokenizer.from_base[tokens.long()].to(torch.int32), lengths)
                     for name, (tokens, lengths) in tokenized.items()}
        note(f"Vocabulary: compact, the {tokenizer.n_vocab - 1:,} GPT-2 tokens the data uses (+ <|unk|>) "
              f"instead of {tokenizer.base.n_vocab:,} (compact_vocab=True)")
    eot = int(tokenizer.eot_token)

    trains, tests = [], []
    for name, (tokens, lengths) in tokenized.items():
        train_docs, test_docs = _split_indices(len(lengths), test_fraction, cfg.seed, name)
        for docs, out in ((train_docs, trains), (test_docs, tests)):
            toks, starts, lens = _examples(tokens, lengths, docs, block_size, packed, eot)
            out.append((name, TokenDataset(toks, starts, lens, name, eot)))

    for name, ds in trains:
        if len(ds) == 0:
            raise DataError(f"{name} gives no training examples (its documents are under 2 tokens or all held "
                             f"out); give it more text, or set its weight to 0.")
    if len(trains) == 1:
        train = trains[0][1]
    else:
        n = sum(len(ds) for _, ds in trains)
        train = _mixture(trains, [weights[name] for name, _ in trains], n, cfg.seed, eot)
    test = _concat(tests, eot)
    for ds in (train, test):  # the tokenizer and vocabulary size the model must use with this data
        ds.tokenizer, ds.vocab_size = tokenizer, tokenizer.n_vocab
    mode = f"packed windows of {block_size + 1} tokens" if packed else f"one per document, <= {block_size + 1} tokens"
    note(f"Datasets: train {len(train):,} examples ({train.source}), test {len(test):,} examples; {mode}")
    return train, test


# ----------------------------------------------------------------------------------------------
# Batching


def bucket_length(longest: int, length_bucket: int, max_len: int | None = None) -> int:
    """The padded length of a batch whose longest x has `longest` positions: `longest` itself when
    length_bucket is 0, else the next multiple of length_bucket, but never more than max_len (the
    block size) unless the batch itself is longer. So batches take at most
    ceil(max_len / length_bucket) shapes."""
    if length_bucket <= 0:
        return longest
    padded = -(-longest // length_bucket) * length_bucket
    return max(longest, min(padded, max_len)) if max_len is not None else padded


def collate_batch(examples, pad_id: int = EOT_ID, *, length_bucket: int = 0,
                  max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a list of 1-D token tensors: x = seq[:-1], y = seq[1:], right-padded.

    x is padded with pad_id (<|endoftext|>), y with IGNORE_INDEX, so padding never counts in the
    loss. A real <|endoftext|> inside a sequence stays a target: the mask comes from the lengths.
    length_bucket > 0 pads to the next multiple of it, at most max_len (see bucket_length): the
    same targets, in a few fixed shapes. A causal model's outputs at the real positions do not
    depend on padding after them, so the loss is the same up to float rounding.
    """
    if len(examples) == 0:
        raise DataError("collate_batch got no examples; pass a non-empty list of token tensors.")
    seqs = [torch.as_tensor(e, dtype=torch.long) for e in examples]
    lengths = torch.tensor([len(s) for s in seqs])                                     # (B,)
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)  # (B, L)
    extra = bucket_length(padded.shape[1] - 1, length_bucket, max_len) - (padded.shape[1] - 1)
    if extra:
        padded = torch.nn.functional.pad(padded, (0, extra), value=pad_id)              # (B, L + extra)
    x = padded[:, :-1].clone()                                                          # (B, T)
    y = padded[:, 1:].clone()                                                           # (B, T)
    pad = torch.arange(x.shape[1]) >= (lengths - 1)[:, None]                           # (B, T) past seq[:-1]
    x[pad] = pad_id
    y[pad] = IGNORE_INDEX
    return x, y


def epoch_permutation(n: int, seed: int, epoch: int = 0) -> torch.Tensor:
    """The shuffled order of n examples in an epoch: a fixed function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch)))


class SeededSampler(torch.utils.data.Sampler):
    """Yields epoch_permutation(n, seed, epoch) every time it is iterated (so re-iterating a
    DataLoader repeats the epoch exactly); set_epoch moves on to the next epoch's order."""

    def __init__(self, n: int, seed: int, epoch: int = 0):
        self.n, self.seed, self.epoch = n, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_permutation(self.n, self.seed, self.epoch).tolist())

    def __len__(self) -> int:
        return self.n


def batches(ds: TokenDataset, batch_size: int, *, shuffle: bool = True, seed: int = 0, epoch: int = 0,
            drop_last: bool = False):
    """Yield (x, y) batches of ds; the order is a fixed function of (seed, epoch) when shuffled."""
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size}: use 1 or more.")
    n = len(ds)
    order = epoch_permutation(n, seed, epoch) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        yield collate_batch([ds[int(j)] for j in order[i:i + batch_size]], ds.pad_id)


def make_loader(ds: TokenDataset, cfg, *, shuffle: bool = True, epoch: int = 0, drop_last: bool = False):
    """A torch DataLoader over ds yielding (x, y) batches of cfg.batch_size, in the same order as
    batches(ds, cfg.batch_size, seed=cfg.seed, epoch=epoch). Call loader.sampler.set_epoch(e)
    to move to another epoch's order."""
    sampler = SeededSampler(len(ds), cfg.seed, epoch) if shuffle else None
    return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last,
                                       collate_fn=partial(collate_batch, pad_id=ds.pad_id))
