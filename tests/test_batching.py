"""picollm_helpers.batching: tokenizing, the train/test split, mixing sources, packing and batches."""

import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from picollm_helpers import batching, seqs
from picollm_helpers.config import IGNORE_INDEX, RunConfig, cache_dir
from picollm_helpers.tokenizer import EOT_ID, CompactTokenizer


@pytest.fixture(scope="module")
def tok(gpt2):
    return gpt2


pytestmark = pytest.mark.usefixtures("offline_cache")


class CountingTokenizer:
    """The GPT-2 tokenizer, counting its batch calls."""

    def __init__(self, tok):
        self.tok, self.batch_calls = tok, 0
        self.name, self.n_vocab, self.eot_token = tok.name, tok.n_vocab, tok.eot_token

    def encode_ordinary(self, text):
        return self.tok.encode_ordinary(text)

    def encode_ordinary_batch(self, texts, num_threads=1):
        self.batch_calls += 1
        return self.tok.encode_ordinary_batch(texts, num_threads=num_threads)


def cfg(**kw):
    """Every RunConfig field, without RunConfig's validation, so the checks of source_weights and
    make_datasets themselves are reached too."""
    base = dict(input_files=(), tinystories_weight=0.0, wiki_weight=0.0, num_tinystories=200,
                num_wiki_lines=200, packed=False, block_size=16, test_fraction=0.1, seed=1337, batch_size=4)
    base.update(kw)
    return SimpleNamespace(**{**RunConfig().to_dict(), **base})


def lines_file(tmp_path, n=300, name="lines.txt"):
    path = tmp_path / name
    path.write_text("\n".join(f"line {i} says hello to the number {i * 7}" for i in range(n)) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- errors

def test_bad_weights(tmp_path):
    f = lines_file(tmp_path)
    with pytest.raises(ValueError, match="sum to at most 1"):
        batching.source_weights(cfg(tinystories_weight=0.7, wiki_weight=0.5))
    # With no input files, pico-llm draws every example from the named datasets.
    assert batching.source_weights(cfg(tinystories_weight=0.5)) == {"TinyStories": 1.0}
    assert batching.source_weights(cfg(tinystories_weight=0.3, wiki_weight=0.1)) == \
        pytest.approx({"TinyStories": 0.75, "Wiki": 0.25})
    with pytest.raises(ValueError, match="no data"):
        batching.make_datasets(cfg(), None)
    assert batching.source_weights(cfg(tinystories_weight=0.25, input_files=[str(f)])) == \
        {"TinyStories": 0.25, "input files": 0.75}


def test_collate_empty():
    with pytest.raises(ValueError, match="no examples"):
        batching.collate_batch([])


# ---------------------------------------------------------------------------------------------- datasets

def test_collate_masks_exactly_the_padding():
    a = torch.tensor([5, 6, 7, EOT_ID, 8])          # a real <|endoftext|> stays a target
    b = torch.tensor([1, 2, 3])
    c = torch.tensor([9])
    x, y = batching.collate_batch([a, b, c])
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, 4)
    assert x.tolist() == [[5, 6, 7, EOT_ID], [1, 2, EOT_ID, EOT_ID], [EOT_ID] * 4]
    assert y.tolist() == [[6, 7, EOT_ID, 8], [2, 3, -100, -100], [-100, -100, -100, -100]]


def test_length_buckets_pad_to_a_multiple_and_keep_the_targets():
    assert [batching.bucket_length(n, 8, max_len=20) for n in (1, 8, 9, 17, 20)] == [8, 8, 16, 20, 20]
    assert batching.bucket_length(23, 8, max_len=20) == 23  # longer than max_len: never cut
    assert batching.bucket_length(9, 0, max_len=20) == 9    # no buckets: the longest example
    a, b = torch.tensor([5, 6, 7, EOT_ID, 8]), torch.tensor([1, 2, 3])
    x0, y0 = batching.collate_batch([a, b])
    x, y = batching.collate_batch([a, b], length_bucket=3, max_len=32)
    assert x.shape == y.shape == (2, 6)
    assert torch.equal(x[:, :4], x0) and torch.equal(y[:, :4], y0)
    assert (x[:, 4:] == EOT_ID).all() and (y[:, 4:] == -100).all()
    assert batching.collate_batch([a, b], length_bucket=3, max_len=5)[0].shape == (2, 5)


def test_padding_adds_nothing_to_the_loss():
    """The loss of a padded batch is the loss of its sequences alone: padded targets are skipped."""
    examples = [torch.tensor([5, 6, 7, 0, 8]), torch.tensor([1, 2, 3]), torch.tensor([4, 9])]
    x, y = batching.collate_batch(examples, pad_id=0)
    torch.manual_seed(0)
    logits = torch.randn(*x.shape, 10)                                                  # (B, T, V)
    padded = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    alone = sum(F.cross_entropy(logits[b, :len(s) - 1], s[1:], reduction="sum") for b, s in enumerate(examples))
    assert torch.allclose(padded, alone)
    assert int((y != IGNORE_INDEX).sum()) == sum(len(s) - 1 for s in examples)


def test_split_is_deterministic_and_disjoint(tmp_path, tok):
    f = lines_file(tmp_path, n=300)
    c = cfg(input_files=[str(f)], test_fraction=0.2)
    train, test = batching.make_datasets(c, tok)
    train2, test2 = batching.make_datasets(c, tok)
    assert len(test) == 60 and len(train) == 240
    assert [t.tolist() for t in test] == [t.tolist() for t in test2]
    assert [t.tolist() for t in train] == [t.tolist() for t in train2]
    train_set = {tuple(t.tolist()) for t in train}
    test_set = {tuple(t.tolist()) for t in test}
    assert not train_set & test_set and len(train_set | test_set) == 300
    # the test set keeps the file's order
    test_ids = [int(re.match(r"line (\d+)", tok.decode(t.tolist())).group(1)) for t in test]
    assert test_ids == sorted(test_ids)
    _, other = batching.make_datasets(cfg(input_files=[str(f)], test_fraction=0.2, seed=7), tok)
    assert {tuple(t.tolist()) for t in other} != test_set


def test_per_line_truncation_and_storage(tmp_path, tok):
    f = tmp_path / "long.txt"
    f.write_text("short line\n" + " ".join(["word"] * 100) + "\nx\n")
    train, test = batching.make_datasets(cfg(input_files=[str(f)], test_fraction=0.0, block_size=8), tok)
    assert len(test) == 0
    lengths = sorted(len(t) for t in train)
    assert lengths == [2, 9]  # "x" is one token: no target, dropped; the long line is cut to 9
    assert train.tokens.dtype == torch.int32 and train[0].dtype == torch.int64


def test_packed_windows(tmp_path, tok):
    f = lines_file(tmp_path, n=50)
    c = cfg(input_files=[str(f)], test_fraction=0.0, packed=True, block_size=16)
    train, _ = batching.make_datasets(c, tok)
    docs = [tok.encode_ordinary(line) for line in f.read_text().splitlines()]
    stream = [t for d in docs for t in d + [EOT_ID]]
    assert all(len(t) <= 17 for t in train) and len(train[0]) == 17
    rebuilt = train[0].tolist() + [t for ex in list(train)[1:] for t in ex.tolist()[1:]]
    assert rebuilt == stream  # windows overlap by one token and cover the stream in order
    assert sum(t.tolist().count(EOT_ID) for t in train) >= 50


def test_packed_batches_have_no_padding(tmp_path, tok):
    # Lines of 2 to 30 words: one per example, a batch pads every line to its longest; packed, only
    # the last window of each split can be short, and every token of the lines is a target once.
    f = tmp_path / "ragged.txt"
    f.write_text("\n".join(" ".join(["word"] * (2 + (i * 7) % 29)) for i in range(200)) + "\n")
    per_line, _ = batching.make_datasets(cfg(input_files=[str(f)], block_size=32), tok)
    train, test = batching.make_datasets(cfg(input_files=[str(f)], block_size=32, packed=True), tok)
    for ds in (train, test):
        assert all(len(ex) == 33 for ex in list(ds)[:-1]) and 2 <= len(ds[len(ds) - 1]) <= 33
        x, y = batching.collate_batch(list(ds)[:-1], ds.pad_id)
        assert x.shape[1] == 32 and not (y == IGNORE_INDEX).any()
    def targets(ds):
        return int((ds.lengths - 1).sum())
    # packed: each line's tokens and its <|endoftext|>, less the stream's first token
    assert targets(train) == targets(per_line) + 2 * len(per_line) - 1
    padded = [(y == IGNORE_INDEX).float().mean() for _, y in batching.batches(per_line, 8, seed=0)]
    assert sum(padded) / len(padded) > 0.3


def test_mixing_proportions(tmp_path, tok):
    f = tmp_path / "3seqs.txt"
    f.write_text("\n".join(seqs.generate_3seqs(2000)) + "\n")
    c = cfg(input_files=[str(f)], tinystories_weight=0.3, num_tinystories=2000)
    train, test = batching.make_datasets(c, tok)
    n = len(train)
    assert n == 1800 + 1800
    from_stories = sum(bool(re.search(r"[A-Za-z]", tok.decode(t.tolist()))) for t in train)
    assert abs(from_stories / n - 0.3) < 5 * (0.3 * 0.7 / n) ** 0.5  # within 5 standard deviations
    assert train.parts["TinyStories"] == from_stories
    # the test set is every source's held-out part, not a mixture
    assert len(test) == 400 and test.parts == {"TinyStories": 200, "input files": 200}
    again, _ = batching.make_datasets(c, tok)
    assert [t.tolist() for t in again] == [t.tolist() for t in train]  # the draw is seeded


def test_tokenization_is_cached(tmp_path, tok):
    f = lines_file(tmp_path)
    c = cfg(input_files=[str(f)], tinystories_weight=0.5, num_tinystories=300)
    counting = CountingTokenizer(tok)
    train, test = batching.make_datasets(c, counting)
    assert counting.batch_calls == 2
    assert len(list((cache_dir() / "tokens").glob("*.pt"))) == 2
    cached = CountingTokenizer(tok)
    train2, test2 = batching.make_datasets(c, cached)
    assert cached.batch_calls == 0
    assert [t.tolist() for t in train2] == [t.tolist() for t in train]
    # another block size reuses the same cache
    mixed = cfg(input_files=[str(f)], tinystories_weight=0.5, num_tinystories=300, block_size=64)
    batching.make_datasets(mixed, cached)
    assert cached.batch_calls == 0


def test_compact_tokenizer(tmp_path, tok):
    f = lines_file(tmp_path)
    full, _ = batching.make_datasets(cfg(input_files=[str(f)]), tok)
    used = {i for t in full for i in t.tolist()}
    compact = CompactTokenizer(tok, used)
    train, _ = batching.make_datasets(cfg(input_files=[str(f)]), compact)
    assert train.pad_id == compact.eot_token
    assert max(int(t.max()) for t in train) < compact.n_vocab
    assert compact.decode(train[0].tolist()) == tok.decode(full[0].tolist())
    x, _ = next(batching.batches(train, 4, seed=0))
    assert int(x.max()) < compact.n_vocab


def test_compact_vocab_config_builds_the_tokenizer_from_all_sources(tmp_path, tok, capsys):
    f = lines_file(tmp_path)
    full_train, full_test = batching.make_datasets(cfg(input_files=[str(f)]), tok)
    assert full_train.tokenizer is tok and full_train.vocab_size == 50257
    train, test = batching.make_datasets(cfg(input_files=[str(f)], compact_vocab=True), tok)
    assert "compact" in capsys.readouterr().out
    compact = train.tokenizer
    assert isinstance(compact, CompactTokenizer) and test.tokenizer is compact
    used = {i for ds in (full_train, full_test) for t in ds for i in t.tolist()}
    assert train.vocab_size == len(used | {tok.eot_token}) + 1
    # Same examples, renumbered: decoding gives the same text, and the test set needs no <|unk|>.
    assert [compact.decode(t.tolist()) for t in test] == [tok.decode(t.tolist()) for t in full_test]
    assert all(int(t.max()) < compact.unk_token for t in test)


def test_with_runconfig(tmp_path, tok, capsys):
    f = lines_file(tmp_path)
    c = RunConfig(tinystories_weight=0.0, input_files=[str(f)], block_size=32, batch_size=8)
    train, test = batching.make_datasets(c, tok)
    assert len(train) + len(test) == 300
    assert "Datasets:" in capsys.readouterr().out


def test_batches_and_loader_are_seeded(tmp_path, tok):
    f = lines_file(tmp_path, n=100)
    train, _ = batching.make_datasets(cfg(input_files=[str(f)], test_fraction=0.0), tok)

    def firsts(it):  # each batch's rows, as token lists
        return [x.tolist() for x, _ in it]

    a = firsts(batching.batches(train, 8, seed=3))
    assert a == firsts(batching.batches(train, 8, seed=3))
    assert a != firsts(batching.batches(train, 8, seed=3, epoch=1))
    assert sum(len(b) for b in a) == 100
    assert len(list(batching.batches(train, 8, seed=3, drop_last=True))) == 12
    loader = batching.make_loader(train, cfg(batch_size=8, seed=3))
    x, y = next(iter(loader))
    assert x.shape[0] == 8 and (y[x == EOT_ID] == -100).all()
    assert firsts(loader) == firsts(loader) == a  # the order of batches(); re-iterating repeats it
    loader.sampler.set_epoch(1)
    assert firsts(loader) == firsts(batching.batches(train, 8, seed=3, epoch=1))


def test_source_without_training_examples(tmp_path, tok):
    f = tmp_path / "tiny.txt"
    f.write_text("x\ny\nz\n")  # one token per line: no (input, target) pair
    with pytest.raises(ValueError, match="no training examples"):
        batching.make_datasets(cfg(input_files=[str(f)]), tok)


# Caches are verified: a file that does not match its key is rebuilt with a note, never used.

def _poke_tokens_cache(mutate):
    import glob
    import os

    import torch

    from picollm_helpers.batching import tokenize_texts
    from picollm_helpers.config import cache_dir
    from picollm_helpers.tokenizer import get_tokenizer

    tok = get_tokenizer()
    texts = ["a cache test story, one", "and another, two", f"pid {os.getpid()}"]
    first = tokenize_texts(texts, tok, name="cachetest")
    (path,) = glob.glob(str(cache_dir() / "tokens" / "cachetest-*.pt"))
    saved = torch.load(path, weights_only=True)
    mutate(path, saved)
    return texts, tok, first


@pytest.mark.parametrize("how,says", [
    ("truncate", "is unreadable"),
    ("wrong_type", "does not hold int32 token ids"),
    ("wrong_size", "lengths summing to"),
    ("wrong_ids", "do not match their fingerprint"),
    ("other_key", "belongs to another key"),
])
def test_a_tokens_cache_that_does_not_match_its_key_is_rebuilt(tmp_path, monkeypatch, capsys, how, says):
    import torch

    from picollm_helpers.batching import tokenize_texts

    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path))

    def mutate(path, saved):
        if how == "truncate":
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
            return
        if how == "wrong_type":
            saved["tokens"] = saved["tokens"].float()
        elif how == "wrong_size":
            saved["lengths"] = saved["lengths"] + 1
        elif how == "wrong_ids":
            saved["tokens"] = saved["tokens"] + 1
        elif how == "other_key":
            saved["key"] = "another"
        torch.save(saved, path)

    texts, tok, (tokens, lengths) = _poke_tokens_cache(mutate)
    capsys.readouterr()
    again, again_lengths = tokenize_texts(texts, tok, name="cachetest")
    out = capsys.readouterr().out
    assert says in out and "rebuilt" in out and out.count("\n") == 1
    assert torch.equal(again, tokens) and torch.equal(again_lengths, lengths)
    tokenize_texts(texts, tok, name="cachetest")
    assert capsys.readouterr().out == ""  # the rebuilt file is good


@pytest.mark.parametrize("how,says", [
    ("garbage", "is unreadable"),
    ("not_texts", "does not hold a list of texts"),
    ("edited", "do not match its fingerprint"),
    ("old_format", "format before caches recorded their key and fingerprint"),
])
def test_a_texts_cache_that_does_not_match_its_key_is_rebuilt(tmp_path, monkeypatch, capsys, how, says):
    import json

    from picollm_helpers import data

    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path))
    made = []

    def make():
        made.append(1)
        return ["one story", "two stories"]

    assert data._cached_texts("cachetest", ("k",), make) == (["one story", "two stories"], False)
    path = data._texts_cache_path("cachetest", ("k",))
    saved = json.loads(path.read_text())
    if how == "garbage":
        path.write_text("{not json")
    elif how == "not_texts":
        saved["texts"] = [1, 2]
        path.write_text(json.dumps(saved))
    elif how == "edited":
        saved["texts"][0] = "one storY"
        path.write_text(json.dumps(saved))
    elif how == "old_format":
        path.write_text(json.dumps(saved["texts"]))
    capsys.readouterr()
    assert data._cached_texts("cachetest", ("k",), make) == (["one story", "two stories"], False)
    out = capsys.readouterr().out
    assert says in out and "rebuilt" in out and len(made) == 2
    assert data._cached_texts("cachetest", ("k",), make)[1] is True


def test_a_texts_cache_in_the_format_before_fingerprints_is_not_trusted(tmp_path, monkeypatch, capsys):
    """A bare list proves nothing: `[]` would make every run fail with "the corpus is empty", a
    2-text list would be trained on under a line that says 400. It is rebuilt, with a note."""
    import json

    from picollm_helpers import data

    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path))
    path = data._texts_cache_path("cachetest", ("k",))
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in ([], ["two", "stories"]):
        path.write_text(json.dumps(old))
        assert data._cached_texts("cachetest", ("k",), lambda: ["made", "again", "here"]) == (
            ["made", "again", "here"], False)
        assert f"{len(old)} texts, unverifiable" in capsys.readouterr().out
        assert json.loads(path.read_text())["sha256"] == data.texts_digest(["made", "again", "here"])
