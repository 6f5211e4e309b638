"""GPT-2's BPE tokenizer, identical ids to `tiktoken.get_encoding("gpt2")`, and usable offline.

tiktoken downloads GPT-2's merge ranks on first use, which fails with no network. The same ranks,
in tiktoken's own file format, ship inside the source distribution of `openai-whisper==20250625`
on PyPI (`whisper/assets/gpt2.tiktoken`). So the ranks come from, in order:

1. the kit's cached ranks file (`<cache>/tokenizer/gpt2.tiktoken`, written by `make setup`);
2. tiktoken's own download, when its host answers within a couple of seconds;
3. that sdist fetched with pip (no dependencies, sha256 checked), extracted into the cache;
4. otherwise one error that names the fixes.

Each source is tried with a bounded time, so a dead network costs seconds, never a hang.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import tiktoken
import torch

from .config import cache_dir
from .errors import TokenizerError, VocabularyError
from .files import write_bytes
from .models import vocab_size_of
from .net import https_unreachable_reason
from .progress import note

EOT_ID = 50256
VOCAB_SIZE = 50257
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
# GPT-2's pre-tokenisation split pattern (the one tiktoken's "gpt2" encoding uses).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TIKTOKEN_HOST = "openaipublic.blob.core.windows.net"


def ranks_path() -> Path:
    return cache_dir() / "tokenizer" / "gpt2.tiktoken"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_ranks(data: bytes) -> None:
    """Store verified ranks atomically, so a crash never leaves a half-written cache file."""
    write_bytes(ranks_path(), data)


def _ranks_from_tiktoken() -> bytes | None:
    """GPT-2's ranks through tiktoken's own download, re-encoded in the .tiktoken file format."""
    if https_unreachable_reason(TIKTOKEN_HOST) is not None:   # name, connection, HTTPS: 2 s each at most
        return None
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception:
        return None
    ranks = enc._mergeable_ranks  # bytes -> rank, the same table the file stores
    lines = (f"{base64.b64encode(tok).decode()} {rank}" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    return ("\n".join(lines) + "\n").encode()


def _ranks_from_pypi(timeout: float = 180.0) -> bytes | None:
    """Fetch the openai-whisper sdist with pip (no dependencies) and pull out gpt2.tiktoken."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--dest", tmp, WHISPER_SDIST]
        try:
            subprocess.run(cmd, check=True, timeout=timeout, capture_output=True)
        except (subprocess.SubprocessError, OSError):
            return None
        for sdist in Path(tmp).glob("openai_whisper-*.tar.gz"):
            with tarfile.open(sdist) as tar:
                for member in tar.getmembers():
                    if member.name.endswith("whisper/assets/gpt2.tiktoken"):
                        return tar.extractfile(member).read()
    return None


def ensure_ranks(verbose: bool = True) -> Path:
    """Make sure the verified GPT-2 ranks file is in the cache; return its path."""
    path = ranks_path()
    if path.exists() and _sha256(path.read_bytes()) == GPT2_RANKS_SHA256:
        return path
    sources = (("tiktoken's download", _ranks_from_tiktoken), (f"PyPI ({WHISPER_SDIST} sdist)", _ranks_from_pypi))
    for source, fetch in sources:
        data = fetch()
        if data is not None and _sha256(data) == GPT2_RANKS_SHA256:
            _write_ranks(data)
            if verbose:
                note(f"Tokenizer: GPT-2 ranks fetched from {source} into {path}")
            return path
    if path.exists():   # a file is there, but not the right one: say so, not "no cached file"
        got = _sha256(path.read_bytes())
        raise TokenizerError(
            f"the cached GPT-2 ranks file {path} failed its sha256 check (expected {GPT2_RANKS_SHA256[:12]}..., "
            f"got {got[:12]}...: damaged, or another file), and no good copy could be fetched (tiktoken's host "
            f"is unreachable and `pip download {WHISPER_SDIST}` failed). Fixes: delete it and run `make setup` "
            f"once with access to PyPI; or copy a good gpt2.tiktoken over it; or set PICOLLM_CACHE to a folder "
            f"that has a good tokenizer/gpt2.tiktoken."
        )
    raise TokenizerError(
        "Could not get GPT-2's BPE ranks: no cached file at "
        f"{path}, tiktoken's host is unreachable and `pip download {WHISPER_SDIST}` failed. Fixes: run "
        "`make setup` once with access to PyPI; or copy a gpt2.tiktoken file (sha256 "
        f"{GPT2_RANKS_SHA256[:12]}...) to {path}; or set PICOLLM_CACHE to a folder that has tokenizer/gpt2.tiktoken."
    )


def _load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def get_tokenizer(verbose: bool = False) -> tiktoken.Encoding:
    """GPT-2's tokenizer as a `tiktoken.Encoding` (vocab 50257, <|endoftext|> = 50256)."""
    path = ensure_ranks(verbose=verbose)
    enc = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=_load_ranks(path),
        special_tokens={"<|endoftext|>": EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )
    if verbose:
        note(f"Tokenizer: GPT-2 BPE from {path} (vocab {enc.n_vocab})")
    return enc


class CompactTokenizer:
    """GPT-2's tokenizer restricted to the token ids that occur in a corpus, renumbered densely.

    With V = 50257 and a small model, the output layer and its softmax dominate a CPU training step
    (most of those 50257 rows belong to tokens the corpus never uses). Training over only the ids
    that occur, say 3,000, makes that layer about 17x cheaper. Text is still split by GPT-2's
    BPE: ids are mapped to dense ids after encoding and back before decoding. A token that never
    occurred in the corpus becomes `<|unk|>` (the last id), which the model has never seen.
    It has the methods of a tiktoken Encoding that the kit uses, so it can stand in for one.
    """

    UNK = "<|unk|>"

    def __init__(self, base: tiktoken.Encoding, used_ids):
        used = torch.as_tensor(sorted({int(i) for i in used_ids} | {base.eot_token}), dtype=torch.long)
        self.base = base
        self.name = f"{base.name}-compact{len(used)}"
        self.to_base = torch.cat([used, torch.tensor([-1])])  # dense id -> GPT-2 id (-1: unk)
        self.unk_token = len(used)
        self.from_base = torch.full((base.n_vocab,), self.unk_token, dtype=torch.long)  # GPT-2 id -> dense
        self.from_base[used] = torch.arange(len(used))
        self.n_vocab = len(used) + 1
        self.eot_token = int(self.from_base[base.eot_token])

    def encode_base(self, base_ids) -> list[int]:
        return self.from_base[torch.as_tensor(list(base_ids), dtype=torch.long)].tolist()

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode_base(self.base.encode_ordinary(text))

    def encode(self, text: str, **kwargs) -> list[int]:
        return self.encode_base(self.base.encode(text, **kwargs))

    def encode_ordinary_batch(self, texts, num_threads: int = 8) -> list[list[int]]:
        return [self.encode_base(ids) for ids in self.base.encode_ordinary_batch(texts, num_threads=num_threads)]

    def decode(self, ids) -> str:
        pieces, run = [], []
        for i in (int(t) for t in ids):
            if i == self.unk_token:
                pieces += [self.base.decode(run), self.UNK]
                run = []
            else:
                run.append(int(self.to_base[i]))
        return "".join(pieces) + self.base.decode(run)

    def __repr__(self) -> str:
        return f"CompactTokenizer({self.n_vocab - 1} GPT-2 tokens + {self.UNK})"


def vocab_name(tokenizer) -> str | None:
    """A short name of the vocabulary a tokenizer's ids index: "gpt2" for GPT-2's own 50257 ids,
    "gpt2-compact3001#1a2b3c4d" for a compact one (the hash is of its id map, so two corpora's compact
    vocabularies of the same size differ), else the tokenizer's name and size. A model records the
    name it was trained with (model.vocab_name), so another tokenizer can be refused."""
    if tokenizer is None:
        return None
    name = str(getattr(tokenizer, "name", None) or type(tokenizer).__name__)
    to_base = getattr(tokenizer, "to_base", None)
    if to_base is not None:
        cached = getattr(tokenizer, "_vocab_name", None)
        if cached is not None:
            return cached
        ids = torch.as_tensor(to_base, dtype=torch.long).contiguous()
        full = f"{name}#{hashlib.blake2b(ids.numpy().tobytes(), digest_size=4).hexdigest()}"
        try:
            tokenizer._vocab_name = full
        except AttributeError:
            pass
        return full
    n = getattr(tokenizer, "n_vocab", None)
    if name == "gpt2" and n == VOCAB_SIZE:
        return name
    return f"{name}/{n}" if n is not None else name


def check_tokenizer(model, tokenizer, who: str = "generate") -> None:
    """Refuse a tokenizer whose ids are not the ones the model was trained on (VocabularyError).

    With the compact vocabulary, id 17 means another token than in GPT-2's: the wrong tokenizer
    gives garbage text, or ids past the model's output layer. A model trained by train() (or loaded
    by load_checkpoint) records its vocabulary's name, which must equal the tokenizer's; for a
    model without one, the tokenizer's size must equal the model's output size.
    """
    if tokenizer is None or model is None:
        return
    mine, n = vocab_name(tokenizer), getattr(tokenizer, "n_vocab", None)
    theirs, size = getattr(model, "vocab_name", None), vocab_size_of(model)
    if theirs is not None:
        if theirs == mine:
            return
        model_says = f"the model was trained with the vocabulary {theirs}" + (f" ({size:,} ids)" if size else "")
    elif size is not None and n is not None and size != n:
        model_says = f"the model's output layer has {size:,} ids"
    else:
        return
    tok_says = f"the tokenizer's vocabulary is {mine}" + (f" ({n:,} ids)" if n is not None else "")
    raise VocabularyError(f"{who}: {tok_says}, but {model_says}, so its ids name other tokens. Pass the tokenizer "
                          f"the model was trained with: the dataset's (train_ds.tokenizer), or for a loaded "
                          f"checkpoint load_checkpoint(path)[1]['tokenizer'] (None there means get_tokenizer()).")


def check_prompt(tokenizer, prompt: str, who: str = "") -> list[int]:
    """The prompt's token ids, after checking a model can start from them.

    Raises PromptError for a prompt with no tokens, or whose every token is one a compact
    vocabulary lacks (the model would start from <|unk|> alone). Tokens the vocabulary lacks in
    an otherwise usable prompt are named in a printed note rather than silently becoming <|unk|>.
    """
    from .errors import PromptError

    ids = list(getattr(tokenizer, "encode_ordinary", tokenizer.encode)(prompt))
    if not ids:
        raise PromptError(f"{who}prompt={prompt!r} has no tokens: give some text to start the samples from, "
                          f"e.g. --prompt 'Once upon a'.")
    unk = getattr(tokenizer, "unk_token", None)
    if unk is None or unk not in ids:
        return ids
    base = tokenizer.base
    missing = [base.decode([b]) for b, i in zip(base.encode_ordinary(prompt), ids) if i == unk]
    listed = ", ".join(repr(m) for m in dict.fromkeys(missing))
    if len(missing) == len(ids):
        raise PromptError(f"{who}prompt={prompt!r}: none of its tokens ({listed}) occurs in the training data, "
                          f"so with the compact vocabulary it is all {CompactTokenizer.UNK}. Use a prompt in the "
                          f"style of the data, or --no-compact_vocab (compact_vocab=False).")
    note(f"{who}note: the prompt's tokens {listed} never occur in the training data; with the compact "
          f"vocabulary they become {CompactTokenizer.UNK} (compact_vocab=False keeps them).")
    return ids


if __name__ == "__main__":  # `python -m picollm_helpers.tokenizer`: prefetch the ranks (used by setup)
    tok = get_tokenizer(verbose=True)
    assert tok.encode("Hello world") == [15496, 995]
