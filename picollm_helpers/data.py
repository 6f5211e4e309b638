"""Data: the text corpora and their loaders.

Loaders return a `Corpus` (texts plus one line saying where they came from) and print that line:

    load_tinystories(n)   a local file ($PICOLLM_TINYSTORIES), else the Hugging Face hub
                          (roneneldan/TinyStories, streamed), else the kit's synthetic stories
    load_3seqs()          data/3seqs.txt (generated deterministically if missing)
    load_wiki(n_lines)    a local file ($PICOLLM_WIKI), else wikitext-103 from the hub, else real
                          English that ships with Python (language reference + docstrings)
    load_text_files(paths) one example per non-empty line

Texts are cached under cache_dir()/texts, so a second load is near-instant. Whether the hub is
reachable is decided once per process (hub_offline_reason).

Neighbours: `batching` turns corpora into tokenized train/test datasets and (x, y) batches
(make_datasets, collate_batch); `pydocs` collects the offline Wiki stand-in; `stories` and `seqs`
generate the synthetic TinyStories and 3seqs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from .config import cache_dir, repo_root
from .errors import DataError, MissingFileError, PicoLLMError
from .files import write_bytes
from .net import https_unreachable_reason
from .progress import note
from .pydocs import python_docs_in_subprocess

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
# Hub reachability: decided once per process, in bounded time

HUB_PORT = 443
_hub_probe: tuple | None = None   # None: not probed yet; else (reason or None,) for the whole process


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_address() -> tuple[str, int]:
    """(host, port) of the hub the datasets library would use: $HF_ENDPOINT (an HTTPS mirror), else the hub."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    if endpoint:
        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if url.hostname:
            return url.hostname, url.port or 443
    return HUB_HOST, HUB_PORT


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub is not used, or None when it is reachable.

    HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are honoured on every call; otherwise one probe decides
    for the whole process: the name, a TCP connection and an HTTPS request, each given at most
    2 s (net.https_unreachable_reason). The datasets library would instead retry for about 24 s
    in every notebook before failing.
    """
    global _hub_probe
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _env_true(name):
            return f"{name}=1"
    if _hub_probe is None:
        _hub_probe = (https_unreachable_reason(*_hub_address()),)
    return _hub_probe[0]


def hub_reachable() -> bool:
    return hub_offline_reason() is None


# ----------------------------------------------------------------------------------------------
# Small file helpers


def cache_key(*parts) -> str:
    """The short hash that names a cache file (texts here, tokens in batching); _CACHE_VERSION is
    part of it, so bumping that invalidates both."""
    return hashlib.sha256(json.dumps([_CACHE_VERSION, *parts], default=str).encode()).hexdigest()[:20]


def _texts_cache_path(name: str, key_parts: tuple) -> Path:
    return cache_dir() / "texts" / f"{name}-{cache_key(name, *key_parts)}.json"


def texts_digest(texts: list[str]) -> str:
    """sha256 of the texts in order, each ended by a NUL byte: their fingerprint in the caches."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def cache_note(path: Path, why: str) -> None:
    """The one line a cache file that does not match its key prints before it is rebuilt."""
    note(f"cache: {_display(path)} {why}; rebuilt (the file is replaced, nothing is trained on it)")


def _read_texts_cache(path: Path, key: str) -> list[str] | None:
    """The texts a cache file holds, or None (with a one-line note) when it does not match its key."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return cache_note(path, f"is unreadable ({type(e).__name__})")
    if isinstance(saved, list):   # the format before fingerprints: nothing proves what it holds
        return cache_note(path, f"is in the format before caches recorded their key and fingerprint ({len(saved)} "
                                f"texts, unverifiable)")
    texts = saved.get("texts") if isinstance(saved, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return cache_note(path, "does not hold a list of texts")
    if saved.get("key") != key:
        return cache_note(path, "belongs to another key")
    if saved.get("n") != len(texts) or saved.get("sha256") != texts_digest(texts):
        return cache_note(path, f"holds {len(texts)} texts that do not match its fingerprint")
    return texts


def _cached_texts(name: str, key_parts: tuple, make) -> tuple[list[str], bool]:
    """(texts, hit): texts from cache_dir()/texts/<name>-<key>.json, else make() and store them.

    The file records its key, the number of texts and their sha256; a file that does not match
    (damaged, truncated, edited, another key) is rebuilt with a one-line note."""
    path = _texts_cache_path(name, key_parts)
    key = cache_key(name, *key_parts)
    if path.exists():
        texts = _read_texts_cache(path, key)
        if texts is not None:
            return texts, True
    texts = make()
    _write_texts_cache(path, key, texts)
    return texts, False


def _write_texts_cache(path: Path, key: str, texts: list[str]) -> None:
    record = {"key": key, "n": len(texts), "sha256": texts_digest(texts), "texts": texts}
    write_bytes(path, json.dumps(record, ensure_ascii=False).encode("utf-8"))


def _resolve(path, what: str) -> Path:
    """A file path as given, else relative to the kit's folder or its data/ folder."""
    if path is None or str(path).strip() == "":
        raise DataError(f"{what}: the path is empty; pass the path of a text file.")
    p = Path(os.path.expanduser(str(path)))
    candidates = [p] if p.is_absolute() else [p, repo_root() / p, repo_root() / "data" / p]
    for c in candidates:
        if c.is_file():
            return c
    if p.as_posix() in ("3seqs.txt", "data/3seqs.txt"):  # the course's own file: made on demand
        from .seqs import default_3seqs_path, write_3seqs

        return write_3seqs() if not default_3seqs_path().exists() else default_3seqs_path()
    if any(c.is_dir() for c in candidates):
        raise DataError(f"{what}: {path} is a folder; pass a file inside it.")
    raise MissingFileError(
        f"{what}: no file {str(path)!r} (looked in {', '.join(str(c.parent.resolve()) for c in candidates)}); "
        "check the path, or give an absolute one."
    )


def _utf16(data: bytes) -> bool:
    """UTF-16 text: a byte-order mark, or (without one) a NUL byte in every other position of its start."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    head = data[:4096]
    odd, even = head[1::2], head[0::2]
    return len(head) >= 8 and (odd.count(0) > 0.9 * len(odd) or even.count(0) > 0.9 * len(even))


def _read_utf8(path: Path) -> str:
    """The file's text; a clear error naming the byte offset when it is not UTF-8 (or that it is UTF-16)."""
    data = path.read_bytes()
    if _utf16(data):
        raise DataError(f"{path} is UTF-16 text, not UTF-8. Re-save the file as UTF-8 (e.g. "
                        f"`iconv -f utf-16 -t utf-8 {path.name} > fixed.txt`, or 'UTF-8' in your editor's "
                        f"save dialog).")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text: byte {e.start} (0x{data[e.start]:02x}) cannot be decoded. "
            f"Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.txt`)."
        ) from None
    return text.removeprefix("\ufeff")


def _file_identity(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _check_n(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"{name}={n!r}: must be a whole number >= 1, e.g. {name}=20000.")
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
    raise DataError(f"a record has fields {sorted(row)}, but no {' or '.join(repr(f) for f in fields)} field; "
                     "rename the field holding the text to 'text'.")


def _stream_texts(dataset_iterable, n: int | None, keep=None, desc: str = "loading",
                  rows_read: list | None = None) -> list[str]:
    """The first n (None: all) non-empty texts of an iterable of records (a streaming `datasets` split).

    The same function reads a local json/parquet file and the hub, so the hub path is the tested one.
    """
    out = []
    with tqdm(total=n, desc=desc, unit=" texts", leave=False, disable=n is not None and n < 5000) as bar:
        for row in _counted(dataset_iterable, rows_read):
            text = _row_text(row).strip()
            if text and (keep is None or keep(text)):
                out.append(text)
                bar.update(1)
                if n is not None and len(out) >= n:
                    break
    return out


def _counted(iterable, rows_read: list | None):
    """Iterate, keeping in rows_read[0] how many records came out, so an error can name its row."""
    for row in iterable:
        if rows_read is not None:
            rows_read[0] += 1
        yield row


def _bad_json_line(path: Path) -> int | None:
    """The 1-based line of the first record in a JSON Lines file that is not a JSON object; None
    for other files. The datasets library parses in blocks, so its error cannot name the line."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    if not isinstance(json.loads(line), dict):
                        return lineno
                except ValueError:
                    return lineno
    return None


def _load_datasets_file(path: Path, split: str):
    """A streaming `datasets` split over a local .json/.jsonl/.parquet file."""
    import datasets

    fmt = "parquet" if path.suffix.lower() == ".parquet" else "json"
    return datasets.load_dataset(fmt, data_files={split: str(path)}, split=split, streaming=True)


def _read_documents(path: Path, n: int | None, split: str, keep=None, by_line: bool = False) -> list[str]:
    """Documents of a local file: .txt (see split_documents) or a json/jsonl/parquet table."""
    if path.suffix.lower() in (".json", ".jsonl", ".parquet"):
        rows = [0]   # records read so far: the failing one is row rows[0] + 1 (1-based)
        try:
            return _stream_texts(_load_datasets_file(path, split), n, keep, desc=path.name, rows_read=rows)
        except Exception as e:  # the datasets library's many error types, made one clear message
            why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            row = rows[0] if isinstance(e, PicoLLMError) else _bad_json_line(path) or rows[0] + 1
            raise DataError(f"{path}, row {row}: cannot be read as "
                            f"{path.suffix[1:]} ({why}). It needs one record per example with a 'text' "
                            "(or 'story') field; fix or remove that row.") from e
    text = _read_utf8(path)
    docs = [line.strip() for line in text.splitlines() if line.strip()] if by_line else split_documents(text)
    if keep is not None:
        docs = [d for d in docs if keep(d)]
    return docs if n is None else docs[:n]


def _nonempty(texts: list[str], path, what: str) -> list[str]:
    if not texts:
        raise DataError(f"{path}: no {what} found (the file is empty or has only blank lines); "
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
        raise DataError(f"split={split!r}: use a split name such as 'train' or 'validation'.")
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
        raise DataError("load_text_files: no paths given; pass a file path or a list of them.")
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

    texts, _ = _cached_texts("wiki-python-docs", (sys.version,), python_docs_in_subprocess)
    texts = texts[:n]
    return _report(Corpus(texts, f"Wiki: {len(texts)} lines of Python's own documentation (the language "
                                 f"reference and standard-library docstrings; offline stand-in, {how})",
                          synthetic=True), n)


def _report(corpus: Corpus, wanted: int | None = None) -> Corpus:
    """Print the corpus's one source line (noting a shortfall) and return it."""
    if not corpus.texts:
        raise DataError(f"{corpus.source}: the corpus is empty; check the file or the filters.")
    if wanted is not None and len(corpus) < wanted:
        corpus.source += f" [only {len(corpus)} of the {wanted} asked for are available]"
    note(corpus.source)   # once per process: five cells loading one corpus say it once
    return corpus

