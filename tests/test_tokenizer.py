import hashlib

import pytest
import torch

from picollm_helpers import tokenizer as tk


def test_gpt2_ids():
    tok = tk.get_tokenizer()
    assert tok.n_vocab == 50257
    assert tok.eot_token == 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("Once upon a time") == [7454, 2402, 257, 640]
    assert tok.encode("<|endoftext|>", allowed_special="all") == [50256]
    text = "Lily's dog ran 3.5 km!\n\n  It's  fine."
    assert tok.decode(tok.encode(text)) == text


def test_cached_ranks_are_verified():
    path = tk.ensure_ranks()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tk.GPT2_RANKS_SHA256


def test_offline_without_cache_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(tk, "_ranks_from_tiktoken", lambda: None)
    monkeypatch.setattr(tk, "_ranks_from_pypi", lambda: None)
    with pytest.raises(RuntimeError, match="make setup"):
        tk.ensure_ranks()
    assert not (tmp_path / "tokenizer" / "gpt2.tiktoken").exists()


def test_corrupt_download_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(tk, "_ranks_from_tiktoken", lambda: b"not the ranks\n")
    monkeypatch.setattr(tk, "_ranks_from_pypi", lambda: None)
    with pytest.raises(RuntimeError):
        tk.ensure_ranks()


def test_falls_back_to_pypi_and_caches(tmp_path, monkeypatch):
    real = tk.ensure_ranks().read_bytes()
    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(tk, "_ranks_from_tiktoken", lambda: None)
    monkeypatch.setattr(tk, "_ranks_from_pypi", lambda: real)
    path = tk.ensure_ranks(verbose=False)
    assert path == tmp_path / "tokenizer" / "gpt2.tiktoken" and path.read_bytes() == real


def test_compact_tokenizer_round_trips_and_maps_unknown_tokens():
    base = tk.get_tokenizer()
    corpus = "Once upon a time, there was a little girl named Lily. She loved to play."
    compact = tk.CompactTokenizer(base, base.encode(corpus))
    assert compact.n_vocab == len(set(base.encode(corpus)) | {50256}) + 1
    ids = compact.encode(corpus)
    assert max(ids) < compact.unk_token and compact.decode(ids) == corpus
    assert compact.decode([compact.eot_token]) == "<|endoftext|>"
    # Mapped densely and in GPT-2 order, so ids are stable for a given corpus.
    assert compact.to_base[torch.tensor(ids)].tolist() == base.encode(corpus)
    odd = compact.encode("Once upon a zeppelin.")
    assert compact.unk_token in odd
    assert compact.decode(odd).startswith("Once upon a") and compact.UNK in compact.decode(odd)
