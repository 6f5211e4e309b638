"""Data: text loaders, tokenized datasets and batching.

Loaders return a `Corpus` (texts plus one line saying where they came from) and print that line:

    load_tinystories(n)   a local file ($PICOLLM_TINYSTORIES), else the Hugging Face hub
                          (roneneldan/TinyStories, streamed), else the kit's synthetic stories
    load_3seqs()          data/3seqs.txt (generated deterministically if missing)
    load_wiki(n_lines)    a local file ($PICOLLM_WIKI), else wikitext-103 from the hub, else real
                          English that ships with Python (language reference + docstrings)
    load_text_files(paths) one example per non-empty line

Texts and their GPT-2 tokens are cached under cache_dir(), so a second load is near-instant.

`make_datasets(cfg, tokenizer)` turns the sources named by a RunConfig into a (train, test) pair
of `TokenDataset`s, each a list-like of 1-D int64 token tensors of at most block_size + 1 tokens.
`collate_batch` pads a list of them into (x, y) with the padding masked out of the loss.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import socket
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import IGNORE_INDEX, cache_dir, repo_root
from .files import write_bytes
from .tokenizer import EOT_ID, CompactTokenizer


TINYSTORIES_HUB = "roneneldan/TinyStories"
# The raw variant: real text, not the one with rare words replaced by "<unk>".
WIKI_HUB = ("Salesforce/wikitext", "wikitext-103-raw-v1")
HUB_HOST = "huggingface.co"
_CACHE_VERSION = 1  # bump to invalidate every cached text and token file


# ----------------------------------------------------------------------------------------------
# Corpus


@dataclass
class Corpus:
    """A list of texts and one human line saying where they came from."""

    texts: list[str]
    source: str
    synthetic: bool = False  # True when the texts stand in for a real dataset (offline fallback)

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self):
        return iter(self.texts)

    def __getitem__(self, i):
        return self.texts[i]

    def __repr__(self) -> str:
        return f"Corpus({len(self.texts)} texts; {self.source})"


# ----------------------------------------------------------------------------------------------
# Hub reachability: decided once per process, in milliseconds when offline

_hub_probe: bool | None = None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub is not used, or None when it is reachable.

    HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are honoured on every call; otherwise one TCP connect to
    the hub (2 s timeout) decides for the whole process. The datasets library would instead retry
    for about 24 s in every notebook before failing.
    """
    global _hub_probe
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _env_true(name):
            return f"{name}=1"
    if _hub_probe is None:
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=2.0):
                _hub_probe = True
        except OSError:
            _hub_probe = False
    return None if _hub_probe else f"{HUB_HOST} is unreachable"


def hub_reachable() -> bool:
    return hub_offline_reason() is None


# ----------------------------------------------------------------------------------------------
# Small file helpers


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([_CACHE_VERSION, *parts], default=str).encode()).hexdigest()[:20]


def _texts_cache_path(name: str, key_parts: tuple) -> Path:
    return cache_dir() / "texts" / f"{name}-{_key(name, *key_parts)}.json"


def _cached_texts(name: str, key_parts: tuple, make) -> tuple[list[str], bool]:
    """(texts, hit): texts from cache_dir()/texts/<name>-<key>.json, else make() and store them."""
    path = _texts_cache_path(name, key_parts)
    if path.exists():
        try:
            return json.loads(path.read_text(encoding="utf-8")), True
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt
    texts = make()
    write_bytes(path, json.dumps(texts, ensure_ascii=False).encode("utf-8"))
    return texts, False


def _resolve(path, what: str) -> Path:
    """A file path as given, else relative to the kit's folder or its data/ folder."""
    if path is None or str(path).strip() == "":
        raise ValueError(f"{what}: the path is empty; pass the path of a text file.")
    p = Path(os.path.expanduser(str(path)))
    candidates = [p] if p.is_absolute() else [p, repo_root() / p, repo_root() / "data" / p]
    for c in candidates:
        if c.is_file():
            return c
    if p.as_posix() in ("3seqs.txt", "data/3seqs.txt"):  # the course's own file: made on demand
        from .seqs import default_3seqs_path, write_3seqs

        return write_3seqs() if not default_3seqs_path().exists() else default_3seqs_path()
    if any(c.is_dir() for c in candidates):
        raise ValueError(f"{what}: {path} is a folder; pass a file inside it.")
    raise FileNotFoundError(
        f"{what}: no file {str(path)!r} (looked in {', '.join(str(c.parent.resolve()) for c in candidates)}); "
        "check the path, or give an absolute one."
    )


def _read_utf8(path: Path) -> str:
    """The file's text; a clear error naming the byte offset when it is not UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text: byte {e.start} (0x{data[e.start]:02x}) cannot be decoded. "
            f"Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.txt`)."
        ) from None
    return text.removeprefix("\ufeff")


def _file_identity(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _check_n(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}={n!r}: must be a whole number >= 1, e.g. {name}=20000.")
    return n


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------
# Reading documents: text files and the datasets library (one code path for local files and hub)


def split_documents(text: str) -> list[str]:
    """Split a .txt file into documents: by <|endoftext|> if present, else by blank lines if
    present, else one per line. Documents are stripped; empty ones are dropped."""
    if "<|endoftext|>" in text:
        docs = text.split("<|endoftext|>")
    elif re.search(r"\n\s*\n", text.strip()):
        docs = re.split(r"\n\s*\n", text)
    else:
        docs = text.splitlines()
    return [d.strip() for d in docs if d.strip()]


def _row_text(row: dict, fields=("text", "story")) -> str:
    for f in fields:
        if f in row:
            return row[f] or ""
    raise ValueError(f"a record has fields {sorted(row)}, but no {' or '.join(repr(f) for f in fields)} field; "
                     "rename the field holding the text to 'text'.")


def _stream_texts(dataset_iterable, n: int | None, keep=None, desc: str = "loading") -> list[str]:
    """The first n (None: all) non-empty texts of an iterable of records (a streaming `datasets` split).

    The same function reads a local json/parquet file and the hub, so the hub path is the tested one.
    """
    out = []
    with tqdm(total=n, desc=desc, unit=" texts", leave=False, disable=n is not None and n < 5000) as bar:
        for row in dataset_iterable:
            text = _row_text(row).strip()
            if text and (keep is None or keep(text)):
                out.append(text)
                bar.update(1)
                if n is not None and len(out) >= n:
                    break
    return out


def _load_datasets_file(path: Path, split: str):
    """A streaming `datasets` split over a local .json/.jsonl/.parquet file."""
    import datasets

    fmt = "parquet" if path.suffix.lower() == ".parquet" else "json"
    return datasets.load_dataset(fmt, data_files={split: str(path)}, split=split, streaming=True)


def _read_documents(path: Path, n: int | None, split: str, keep=None, by_line: bool = False) -> list[str]:
    """Documents of a local file: .txt (see split_documents) or a json/jsonl/parquet table."""
    if path.suffix.lower() in (".json", ".jsonl", ".parquet"):
        try:
            return _stream_texts(_load_datasets_file(path, split), n, keep, desc=path.name)
        except ValueError:
            raise
        except Exception as e:  # the datasets library's many error types, made one clear message
            raise ValueError(f"could not read {path} as {path.suffix[1:]}: {type(e).__name__}: {e}. "
                             "It needs one record per example with a 'text' (or 'story') field.") from e
    text = _read_utf8(path)
    docs = [line.strip() for line in text.splitlines() if line.strip()] if by_line else split_documents(text)
    if keep is not None:
        docs = [d for d in docs if keep(d)]
    return docs if n is None else docs[:n]


def _nonempty(texts: list[str], path, what: str) -> list[str]:
    if not texts:
        raise ValueError(f"{path}: no {what} found (the file is empty or has only blank lines); "
                         "give a file with text in it.")
    return texts


def _try_hub(name: str, key_parts: tuple, fetch) -> tuple[list[str] | None, str]:
    """(texts, "cached" | "streamed") from the hub or from an earlier download in the cache, which
    works offline too; (None, why not) when the hub cannot be used."""
    if not _texts_cache_path(name, key_parts).exists():
        reason = hub_offline_reason()
        if reason is not None:
            return None, reason
    try:
        texts, hit = _cached_texts(name, key_parts, fetch)
    except Exception as e:  # the hub answered the probe, but the download failed
        return None, f"the hub failed: {type(e).__name__}"
    if not texts:
        return None, "the hub returned no texts"
    return texts, "cached" if hit else "streamed"


# ----------------------------------------------------------------------------------------------
# Loaders


def load_tinystories(n: int = 20000, split: str = "train", path=None) -> Corpus:
    """The first n TinyStories: a local file, else the hub, else the synthetic offline corpus.

    path (or $PICOLLM_TINYSTORIES): .txt with stories separated by <|endoftext|>, by blank
    lines, or one per line; or .json/.jsonl/.parquet with a 'text' or 'story' field.
    """
    n = _check_n(n, "n")
    if not isinstance(split, str) or not re.fullmatch(r"\w+", split):
        raise ValueError(f"split={split!r}: use a split name such as 'train' or 'validation'.")
    path = path or os.environ.get("PICOLLM_TINYSTORIES") or None
    if path:
        p = _resolve(path, "TinyStories file")
        texts, _ = _cached_texts("tinystories-file", (_file_identity(p), split, n),
                                 lambda: _read_documents(p, n, split))
        texts = _nonempty(texts, p, "stories")
        return _report(Corpus(texts, f"TinyStories: {len(texts)} stories from {_display(p)} (local file)"), n)

    def from_hub():
        import datasets

        ds = datasets.load_dataset(TINYSTORIES_HUB, split=split, streaming=True)
        return _stream_texts(ds, n, desc="TinyStories from the hub")

    texts, how = _try_hub("tinystories-hub", (TINYSTORIES_HUB, split, n), from_hub)
    if texts is not None:
        return _report(Corpus(texts, f"TinyStories: {len(texts)} stories from the Hugging Face hub "
                                     f"({TINYSTORIES_HUB}, {split}, {how})"), n)

    from .stories import GENERATOR_VERSION, generate_stories

    seed = 0 if split == "train" else zlib.crc32(split.encode())  # another split, other stories
    texts, _ = _cached_texts("tinystories-synthetic", (GENERATOR_VERSION, seed, n),
                             lambda: generate_stories(n, seed=seed))
    return _report(Corpus(texts, f"TinyStories: {n} stories from the kit's story generator "
                                 f"(synthetic offline corpus; {how})", synthetic=True), n)


def load_3seqs(path=None) -> Corpus:
    """data/3seqs.txt (made by picollm_helpers.seqs if it is missing), one sequence per line."""
    from .seqs import default_3seqs_path, write_3seqs

    made = ""
    if path is None:
        p = default_3seqs_path()
        if not p.exists():
            write_3seqs(p)
            made = ", just generated"
    else:
        p = _resolve(path, "3seqs file")
    lines = _nonempty(_read_documents(p, None, "train", by_line=True), p, "lines")
    return _report(Corpus(lines, f"3seqs: {len(lines)} integer sequences from {_display(p)}{made}"))


def load_text_files(paths) -> Corpus:
    """One example per non-empty line of each UTF-8 file (a path or a list of paths)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths or [])
    if not paths:
        raise ValueError("load_text_files: no paths given; pass a file path or a list of them.")
    texts, names = [], []
    for path in paths:
        p = _resolve(path, "text file")
        texts += _nonempty(_read_documents(p, None, "train", by_line=True), p, "lines")
        names.append(_display(p))
    return _report(Corpus(texts, f"Text files: {len(texts)} lines from {', '.join(names)}"))


def _is_wiki_text(line: str) -> bool:
    """wikitext lines that are prose: not headings like '= = History = ='."""
    return not (line.startswith("=") and line.endswith("="))


def load_wiki(n_lines: int = 30000, path=None) -> Corpus:
    """Long-form factual text: a local file, else wikitext-103 from the hub (first n_lines
    non-empty, non-heading lines), else English documentation that ships with Python."""
    n = _check_n(n_lines, "n_lines")
    path = path or os.environ.get("PICOLLM_WIKI") or None
    if path:
        p = _resolve(path, "wiki file")
        texts, _ = _cached_texts("wiki-file", (_file_identity(p), n),
                                 lambda: _read_documents(p, n, "train", keep=_is_wiki_text, by_line=True))
        texts = _nonempty(texts, p, "lines")
        return _report(Corpus(texts, f"Wiki: {len(texts)} lines from {_display(p)} (local file)"), n)

    def from_hub():
        import datasets

        ds = datasets.load_dataset(*WIKI_HUB, split="train", streaming=True)
        return _stream_texts(ds, n, keep=_is_wiki_text, desc="wikitext from the hub")

    texts, how = _try_hub("wiki-hub", (*WIKI_HUB, n), from_hub)
    if texts is not None:
        return _report(Corpus(texts, f"Wiki: {len(texts)} lines of {WIKI_HUB[1]} from the Hugging Face hub "
                                     f"({WIKI_HUB[0]}, {how})"), n)

    import sys

    texts, _ = _cached_texts("wiki-python-docs", (sys.version,), _python_docs_in_subprocess)
    texts = texts[:n]
    return _report(Corpus(texts, f"Wiki: {len(texts)} lines of Python's own documentation (the language "
                                 f"reference and standard-library docstrings; offline stand-in, {how})",
                          synthetic=True), n)


def _report(corpus: Corpus, wanted: int | None = None) -> Corpus:
    """Print the corpus's one source line (noting a shortfall) and return it."""
    if not corpus.texts:
        raise ValueError(f"{corpus.source}: the corpus is empty; check the file or the filters.")
    if wanted is not None and len(corpus) < wanted:
        corpus.source += f" [only {len(corpus)} of the {wanted} asked for are available]"
    print(corpus.source)
    return corpus


# ----------------------------------------------------------------------------------------------
# Offline long-form English: Python's language reference and standard-library docstrings

# Modules never imported for their docstrings: they act on import (open a browser, print, change
# the terminal) or drag in a GUI toolkit.
DOC_MODULES_SKIPPED = {"antigravity", "this", "turtle", "turtledemo", "tkinter", "idlelib", "readline",
                       "rlcompleter", "lib2to3", "ensurepip", "venv", "pydoc_data", "msilib", "winreg",
                       "winsound", "msvcrt", "nturl2path", "ntpath", "nt", "test", "tests", "__main__"}


def _prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of running English in a docstring or reference page, each made one line.
    Code and grammar blocks, doctests, tables and headings are dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [l.strip() for l in para.splitlines()]
        if not lines or any(l.startswith((">>>", "...", "+-", "|", "==", "**", "--")) for l in lines):
            continue
        line = " ".join(lines)
        words = line.split()
        letters = sum(ch.isalpha() or ch == " " for ch in line)
        if (len(words) >= 6 and letters >= 0.8 * len(line) and "::=" not in line
                and line[0].isupper() and line[-1] in ".:;)?!"):
            out.append(line)
    return out


def _doc_modules() -> list[str]:
    """The standard library's public modules, and their packages' direct submodules, sorted."""
    import importlib.util
    import pkgutil
    import sys

    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in DOC_MODULES_SKIPPED:
            continue
        names.append(top)
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            names += sorted(f"{top}.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations)
                            if not m.name.startswith("_") and m.name not in DOC_MODULES_SKIPPED)
    return names


def python_docs_lines() -> list[str]:
    """Deterministic prose lines from Python's language reference (pydoc_data) and the docstrings
    of the standard library's modules, classes and functions (a fixed, sorted list)."""
    import contextlib
    import importlib
    import inspect
    import io
    import warnings

    from pydoc_data.topics import topics

    lines: list[str] = []
    seen: set[int] = set()
    for name in sorted(topics):
        lines += _prose_paragraphs(topics[name])
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        for modname in _doc_modules():
            try:
                mod = importlib.import_module(modname)
            except BaseException:  # a module this Python lacks or cannot import here
                continue
            docs = [inspect.getdoc(mod) or ""]
            for attr in sorted(vars(mod)):
                obj = getattr(mod, attr, None)
                if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__ or id(obj) in seen:
                    continue
                seen.add(id(obj))
                if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                    docs.append(inspect.getdoc(obj) or "")
                if inspect.isclass(obj):
                    docs += [inspect.getdoc(m) or "" for a, m in sorted(vars(obj).items())
                             if not a.startswith("_") and callable(m)]
            for doc in docs:
                lines += _prose_paragraphs(doc)
    return list(dict.fromkeys(lines))  # drop repeats, keep the first-seen order


def _python_docs_in_subprocess() -> list[str]:
    """python_docs_lines() computed in a fresh interpreter: importing hundreds of standard-library
    modules for their docstrings then leaves the caller's process (a notebook kernel) untouched."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root()), os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run([sys.executable, "-m", "picollm_helpers.data", "--python-docs"], env=env,
                             capture_output=True, check=True, timeout=300, cwd=repo_root()).stdout
        return json.loads(out)
    except (subprocess.SubprocessError, OSError, ValueError):
        return python_docs_lines()  # e.g. no subprocesses allowed: collect them here instead


# ----------------------------------------------------------------------------------------------
# Tokenization, cached on disk

_PROBE = "Once upon a time, 3 cats said: \"Hello\" - naïve café 12345 <|endoftext|>!"


def _tokenizer_key(tokenizer) -> str:
    """Identity of a tokenizer: its name, vocabulary size and how it encodes a probe string."""
    probe = tokenizer.encode_ordinary(_PROBE)
    return f"{getattr(tokenizer, 'name', type(tokenizer).__name__)}-{tokenizer.n_vocab}-{_key(probe)[:10]}"


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

    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8"))
        digest.update(b"\0")
    path = cache_dir() / "tokens" / f"{name}-{_key(_tokenizer_key(tokenizer), digest.hexdigest(), len(texts))}.pt"
    if path.exists():
        try:
            saved = torch.load(path, weights_only=True)
            return saved["tokens"], saved["lengths"]
        except Exception:
            pass  # damaged cache file: tokenize again
    ids: list[list[int]] = []
    chunk = 2000
    threads = os.cpu_count() or 1
    for i in tqdm(range(0, len(texts), chunk), desc=f"tokenizing {name}", leave=False,
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
    torch.save({"tokens": tokens, "lengths": lengths}, buf)
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
    files = list(getattr(cfg, "input_files", ()) or ())
    w_tiny, w_wiki = float(cfg.tinystories_weight), float(cfg.wiki_weight)
    for name, w in (("tinystories_weight", w_tiny), ("wiki_weight", w_wiki)):
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"{name}={w}: it is a probability; use a value in [0, 1].")
    rest = 1.0 - w_tiny - w_wiki
    if w_tiny + w_wiki <= 1e-9 and not files:
        raise ValueError("tinystories_weight = wiki_weight = 0 and no input_files: there is no data to train on; "
                         "set tinystories_weight=1.0 or pass input_files.")
    if rest < -1e-9:
        raise ValueError(f"tinystories_weight + wiki_weight = {w_tiny + w_wiki:g} > 1: they are probabilities "
                         "of one draw; make them sum to at most 1.")
    if rest > 1e-9 and not files:
        # As in pico-llm: with no input files every draw comes from the named datasets.
        w_tiny, w_wiki = w_tiny / (w_tiny + w_wiki), w_wiki / (w_tiny + w_wiki)
        rest = 0.0
    if files and rest <= 1e-9:
        print(f"Note: input_files {files} are not used: tinystories_weight + wiki_weight = 1 leaves no draws "
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
        raise ValueError(f"block_size={block_size}: use a context length >= 1.")
    test_fraction = float(cfg.test_fraction)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}: it is the share held out for testing; use [0, 1).")
    packed = bool(getattr(cfg, "packed", False))

    tokenized = {}
    for name in weights:
        if name == "TinyStories":
            corpus = load_tinystories(int(cfg.num_tinystories))
        elif name == "Wiki":
            corpus = load_wiki(int(cfg.num_wiki_lines))
        else:
            corpus = load_text_files(cfg.input_files)
        tokenized[name] = tokenize_texts(corpus.texts, tokenizer, name.replace(" ", "-").lower())
    if getattr(cfg, "compact_vocab", False) and not isinstance(tokenizer, CompactTokenizer):
        # Train over only the GPT-2 ids these sources use (see tokenizer.CompactTokenizer).
        used = torch.cat([tokens for tokens, _ in tokenized.values()]).unique()
        tokenizer = CompactTokenizer(tokenizer, used)
        tokenized = {name: (tokenizer.from_base[tokens.long()].to(torch.int32), lengths)
                     for name, (tokens, lengths) in tokenized.items()}
        print(f"Vocabulary: compact, the {tokenizer.n_vocab - 1:,} GPT-2 tokens the data uses (+ <|unk|>) "
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
            raise ValueError(f"{name} gives no training examples (its documents are under 2 tokens or all held "
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
    print(f"Datasets: train {len(train):,} examples ({train.source}), test {len(test):,} examples; {mode}")
    return train, test


# ----------------------------------------------------------------------------------------------
# Batching


def collate_batch(examples, pad_id: int = EOT_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a list of 1-D token tensors: x = seq[:-1], y = seq[1:], right-padded.

    x is padded with pad_id (<|endoftext|>), y with IGNORE_INDEX, so padding never counts in the
    loss. A real <|endoftext|> inside a sequence stays a target: the mask comes from the lengths.
    """
    if len(examples) == 0:
        raise ValueError("collate_batch got no examples; pass a non-empty list of token tensors.")
    seqs = [torch.as_tensor(e, dtype=torch.long) for e in examples]
    lengths = torch.tensor([len(s) for s in seqs])                                     # (B,)
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)  # (B, L)
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
        raise ValueError(f"batch_size={batch_size}: use 1 or more.")
    n = len(ds)
    order = epoch_permutation(n, seed, epoch) if shuffle else torch.arange(n)
    pad_id = getattr(ds, "pad_id", EOT_ID)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        yield collate_batch([ds[int(j)] for j in order[i:i + batch_size]], pad_id)


def make_loader(ds: TokenDataset, cfg, *, shuffle: bool = True, epoch: int = 0, drop_last: bool = False):
    """A torch DataLoader over ds yielding (x, y) batches of cfg.batch_size, in the same order as
    batches(ds, cfg.batch_size, seed=cfg.seed, epoch=epoch). Call loader.sampler.set_epoch(e)
    to move to another epoch's order."""
    sampler = SeededSampler(len(ds), cfg.seed, epoch) if shuffle else None
    return torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last,
                                       collate_fn=partial(collate_batch, pad_id=getattr(ds, "pad_id", EOT_ID)))

if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--python-docs"]:  # used by _python_docs_in_subprocess
        sys.stdout.write(json.dumps(python_docs_lines()))
