import json
import re
import socket
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from picollm_helpers import data, seqs, stories
from picollm_helpers.config import RunConfig, repo_root
from picollm_helpers.tokenizer import EOT_ID, CompactTokenizer, get_tokenizer

STORIES = ["Once upon a time, there was a cat.\nIt was happy.",
           "Tom had a red ball. He liked it.",
           'Sue said, "Hello!" The end.']


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()  # before the per-test cache folder is set: the ranks come from the real cache


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test: its own empty cache, and no network (the hub counts as offline)."""
    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PICOLLM_TINYSTORIES", raising=False)
    monkeypatch.delenv("PICOLLM_WIKI", raising=False)
    monkeypatch.setattr(data, "_hub_probe", None)


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
    base = dict(input_files=(), tinystories_weight=0.0, wiki_weight=0.0, num_tinystories=200,
                num_wiki_lines=200, packed=False, block_size=16, test_fraction=0.1, seed=1337, batch_size=4)
    base.update(kw)
    return SimpleNamespace(**base)


def lines_file(tmp_path, n=300, name="lines.txt"):
    path = tmp_path / name
    path.write_text("\n".join(f"line {i} says hello to the number {i * 7}" for i in range(n)) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- 3seqs

def test_3seqs_size_families_and_determinism(tok):
    fam = seqs.generate_3seqs_with_families()
    lines = [line for _, line in fam]
    assert len(lines) == 10000
    assert {f for f, _ in fam} == {f for f, _ in seqs.FAMILIES}
    assert seqs.generate_3seqs() == lines
    assert seqs.generate_3seqs(50) == lines[:50]
    assert seqs.generate_3seqs(50, seed=1) != lines[:50]
    assert sum(line.startswith("0 1 2 3 4 ") for line in lines) > 1000
    for f, line in fam[:2000]:
        nums = [int(x) for x in line.split()]
        assert 8 <= len(nums) <= 40
        if f == "counting":
            assert all(b - a == 1 for a, b in zip(nums, nums[1:]))
        if f == "fibonacci":
            assert all(c == a + b for a, b, c in zip(nums, nums[1:], nums[2:]))
        if f == "squares":
            assert all(int(round(abs(v) ** 0.5)) ** 2 == v for v in nums)
        if f == "powers_of_two":
            assert all(b == 2 * a for a, b in zip(nums, nums[1:]))
        if f == "zeros":
            assert set(nums) == {0}
    assert max(len(ids) for ids in tok.encode_ordinary_batch(lines)) < 1024


def test_committed_3seqs_file_regenerates_identically(tmp_path):
    committed = repo_root() / "data" / "3seqs.txt"
    fresh = seqs.write_3seqs(tmp_path / "3seqs.txt")
    assert fresh.read_bytes() == committed.read_bytes()


def test_load_3seqs_generates_missing_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "data" / "3seqs.txt"
    monkeypatch.setattr(seqs, "default_3seqs_path", lambda: target)
    corpus = data.load_3seqs()
    assert target.exists() and len(corpus) == 10000 and not corpus.synthetic
    assert corpus.texts[:20] == seqs.generate_3seqs(20)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "3seqs" in out[0] and "generated" in out[0]
    assert data.load_3seqs(target).texts == corpus.texts


# ---------------------------------------------------------------------------------------------- loaders

@pytest.mark.parametrize("style", ["eot", "blank", "line"])
def test_tinystories_local_txt_styles(tmp_path, style, capsys):
    path = tmp_path / f"{style}.txt"
    if style == "eot":
        path.write_text("<|endoftext|>".join(STORIES) + "<|endoftext|>\n")
        expected = STORIES
    elif style == "blank":
        path.write_text("\n\n".join(s.replace("\n", " ") for s in STORIES) + "\n")
        expected = [s.replace("\n", " ") for s in STORIES]
    else:
        path.write_text("\n".join(s.replace("\n", " ") for s in STORIES) + "\n")
        expected = [s.replace("\n", " ") for s in STORIES]
    corpus = data.load_tinystories(10, path=path)
    assert corpus.texts == expected and not corpus.synthetic
    assert "local file" in capsys.readouterr().out
    assert data.load_tinystories(2, path=path).texts == expected[:2]


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet"])
def test_tinystories_json_and_parquet_through_datasets(tmp_path, monkeypatch, kind):
    rows = [{"story": s, "id": i} for i, s in enumerate(STORIES * 3)]
    path = tmp_path / f"stories.{kind}"
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.table({"text": [r["story"] for r in rows]}), path)
    calls = []
    real = data._stream_texts
    monkeypatch.setattr(data, "_stream_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("PICOLLM_TINYSTORIES", str(path))
    corpus = data.load_tinystories(5)
    assert corpus.texts == [s.strip() for s in (STORIES * 3)[:5]]
    assert calls, "local tables go through the same _stream_texts as the hub"


def test_hub_code_path_offline_against_local_parquet(tmp_path, monkeypatch, capsys):
    """The hub branch, with load_dataset pointed at a local parquet file."""
    import datasets

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": [f"Story number {i}." for i in range(50)]}), path)
    real = datasets.load_dataset
    seen = []

    def fake_load_dataset(name, *args, split=None, streaming=False, **kw):
        seen.append((name, split, streaming))
        assert name == data.TINYSTORIES_HUB and streaming
        return real("parquet", data_files={split: str(path)}, split=split, streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(data, "hub_offline_reason", lambda: None)
    corpus = data.load_tinystories(20)
    assert corpus.texts == [f"Story number {i}." for i in range(20)] and not corpus.synthetic
    assert seen == [(data.TINYSTORIES_HUB, "train", True)]
    assert "hub" in capsys.readouterr().out
    # cached: a second load does not touch the hub, even when it has gone away
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub called again"))
    assert data.load_tinystories(20).texts == corpus.texts


def test_offline_fallback_says_so_and_never_calls_the_hub(monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset called offline"))
    corpus = data.load_tinystories(300)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "synthetic offline corpus" in out[0] and "HF_HUB_OFFLINE=1" in out[0]
    assert corpus.synthetic and corpus.texts == stories.generate_stories(300)
    # the validation split is a different set of stories
    assert not set(data.load_tinystories(50, split="validation").texts) & set(corpus.texts)


def test_hub_failure_falls_back(monkeypatch, capsys):
    import datasets

    def broken(*a, **k):
        raise ConnectionError("reset by peer")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    monkeypatch.setattr(data, "hub_offline_reason", lambda: None)
    corpus = data.load_tinystories(20)
    assert corpus.synthetic and "the hub failed: ConnectionError" in capsys.readouterr().out
    assert not list((data.cache_dir() / "texts").glob("tinystories-hub-*"))


def test_synthetic_corpus_is_cached(monkeypatch):
    first = data.load_tinystories(100)
    assert list((data.cache_dir() / "texts").glob("tinystories-synthetic-*.json"))
    monkeypatch.setattr(stories, "generate_stories", lambda *a, **k: pytest.fail("regenerated"))
    assert data.load_tinystories(100).texts == first.texts


def test_hub_probe_runs_once_per_process(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls = []

    def refuse(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("no network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert data.hub_offline_reason() == "huggingface.co is unreachable"
    assert not data.hub_reachable()
    assert calls == [(("huggingface.co", 443), 2.0)]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert data.hub_offline_reason() == "HF_DATASETS_OFFLINE=1"


def test_load_text_files(tmp_path, capsys):
    a = tmp_path / "a.txt"
    a.write_text("first line\n\n   \nsecond line  \n")
    b = tmp_path / "b.txt"
    b.write_text("third\n")
    corpus = data.load_text_files([a, str(b)])
    assert corpus.texts == ["first line", "second line", "third"]
    assert data.load_text_files(a).texts == ["first line", "second line"]
    assert capsys.readouterr().out.count("\n") == 2
    assert len(data.load_text_files(["3seqs.txt"])) == 10000  # the course's file, by name


def test_wiki_offline_fallback_is_real_english(capsys):
    corpus = data.load_wiki(400)
    out = capsys.readouterr().out
    assert corpus.synthetic and "Python" in out and "HF_HUB_OFFLINE=1" in out
    assert len(corpus) == 400 and len(set(corpus.texts)) == 400
    common = {"the", "is", "of", "a", "to", "and", "in"}
    english = sum(len(common & set(line.lower().split())) >= 2 for line in corpus.texts)
    assert english / len(corpus) > 0.8
    assert sum(len(line.split()) for line in corpus.texts) > 5000
    assert data.load_wiki(400).texts == corpus.texts  # deterministic (and cached)


def test_wiki_local_file_drops_headings(tmp_path, monkeypatch):
    path = tmp_path / "wiki.txt"
    path.write_text(" = Title = \n\n The first paragraph . \n = = Section = = \n The second one . \n")
    monkeypatch.setenv("PICOLLM_WIKI", str(path))
    assert data.load_wiki(10).texts == ["The first paragraph .", "The second one ."]


# ---------------------------------------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.load_tinystories(10, path=tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        data.load_text_files(["missing.txt"])
    with pytest.raises(ValueError, match="folder"):
        data.load_text_files([tmp_path])


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty.txt.*no lines"):
        data.load_text_files([path])
    with pytest.raises(ValueError, match="no stories"):
        data.load_tinystories(10, path=path)


def test_non_utf8_file_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"hello\nwor\xe9ld\n")
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8.*byte 9"):
        data.load_text_files([path])


def test_empty_corpus_after_filtering(tmp_path):
    path = tmp_path / "headings.txt"
    path.write_text(" = Title = \n = = More = = \n")
    with pytest.raises(ValueError, match="headings.txt.*no lines"):
        data.load_wiki(10, path=path)


def test_table_without_text_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="'text'"):
        data.load_tinystories(3, path=path)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "100", None])
def test_bad_n(bad):
    with pytest.raises(ValueError, match="n"):
        data.load_tinystories(bad)
    with pytest.raises(ValueError, match="n_lines"):
        data.load_wiki(bad)


def test_bad_weights(tmp_path):
    f = lines_file(tmp_path)
    with pytest.raises(ValueError, match="sum to at most 1"):
        data.source_weights(cfg(tinystories_weight=0.7, wiki_weight=0.5))
    # With no input files, pico-llm draws every example from the named datasets.
    assert data.source_weights(cfg(tinystories_weight=0.5)) == {"TinyStories": 1.0}
    assert data.source_weights(cfg(tinystories_weight=0.3, wiki_weight=0.1)) == \
        pytest.approx({"TinyStories": 0.75, "Wiki": 0.25})
    with pytest.raises(ValueError, match="no data"):
        data.make_datasets(cfg(), None)
    assert data.source_weights(cfg(tinystories_weight=0.25, input_files=[str(f)])) == \
        {"TinyStories": 0.25, "input files": 0.75}


def test_collate_empty():
    with pytest.raises(ValueError, match="no examples"):
        data.collate_batch([])


# ---------------------------------------------------------------------------------------------- datasets

def test_collate_masks_exactly_the_padding():
    a = torch.tensor([5, 6, 7, EOT_ID, 8])          # a real <|endoftext|> stays a target
    b = torch.tensor([1, 2, 3])
    c = torch.tensor([9])
    x, y = data.collate_batch([a, b, c])
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (3, 4)
    assert x.tolist() == [[5, 6, 7, EOT_ID], [1, 2, EOT_ID, EOT_ID], [EOT_ID] * 4]
    assert y.tolist() == [[6, 7, EOT_ID, 8], [2, 3, -100, -100], [-100, -100, -100, -100]]
    assert data.IGNORE_INDEX == -100


def test_split_is_deterministic_and_disjoint(tmp_path, tok):
    f = lines_file(tmp_path, n=300)
    c = cfg(input_files=[str(f)], test_fraction=0.2)
    train, test = data.make_datasets(c, tok)
    train2, test2 = data.make_datasets(c, tok)
    assert len(test) == 60 and len(train) == 240
    assert [t.tolist() for t in test] == [t.tolist() for t in test2]
    assert [t.tolist() for t in train] == [t.tolist() for t in train2]
    train_set = {tuple(t.tolist()) for t in train}
    test_set = {tuple(t.tolist()) for t in test}
    assert not train_set & test_set and len(train_set | test_set) == 300
    # the test set keeps the file's order
    test_ids = [int(re.match(r"line (\d+)", tok.decode(t.tolist())).group(1)) for t in test]
    assert test_ids == sorted(test_ids)
    _, other = data.make_datasets(cfg(input_files=[str(f)], test_fraction=0.2, seed=7), tok)
    assert {tuple(t.tolist()) for t in other} != test_set


def test_per_line_truncation_and_storage(tmp_path, tok):
    f = tmp_path / "long.txt"
    f.write_text("short line\n" + " ".join(["word"] * 100) + "\nx\n")
    train, test = data.make_datasets(cfg(input_files=[str(f)], test_fraction=0.0, block_size=8), tok)
    assert len(test) == 0
    lengths = sorted(len(t) for t in train)
    assert lengths == [2, 9]  # "x" is one token: no target, dropped; the long line is cut to 9
    assert train.tokens.dtype == torch.int32 and train[0].dtype == torch.int64


def test_packed_windows(tmp_path, tok):
    f = lines_file(tmp_path, n=50)
    c = cfg(input_files=[str(f)], test_fraction=0.0, packed=True, block_size=16)
    train, _ = data.make_datasets(c, tok)
    docs = [tok.encode_ordinary(line) for line in f.read_text().splitlines()]
    stream = [t for d in docs for t in d + [EOT_ID]]
    assert all(len(t) <= 17 for t in train) and len(train[0]) == 17
    rebuilt = train[0].tolist() + [t for ex in list(train)[1:] for t in ex.tolist()[1:]]
    assert rebuilt == stream  # windows overlap by one token and cover the stream in order
    assert sum(t.tolist().count(EOT_ID) for t in train) >= 50


def test_mixing_proportions(tmp_path, tok):
    f = tmp_path / "3seqs.txt"
    f.write_text("\n".join(seqs.generate_3seqs(2000)) + "\n")
    c = cfg(input_files=[str(f)], tinystories_weight=0.3, num_tinystories=2000)
    train, test = data.make_datasets(c, tok)
    n = len(train)
    assert n == 1800 + 1800
    from_stories = sum(bool(re.search(r"[A-Za-z]", tok.decode(t.tolist()))) for t in train)
    assert abs(from_stories / n - 0.3) < 5 * (0.3 * 0.7 / n) ** 0.5  # within 5 standard deviations
    assert train.parts["TinyStories"] == from_stories
    # the test set is every source's held-out part, not a mixture
    assert len(test) == 400 and test.parts == {"TinyStories": 200, "input files": 200}
    again, _ = data.make_datasets(c, tok)
    assert [t.tolist() for t in again] == [t.tolist() for t in train]  # the draw is seeded


def test_tokenization_is_cached(tmp_path, tok):
    f = lines_file(tmp_path)
    c = cfg(input_files=[str(f)], tinystories_weight=0.5, num_tinystories=300)
    counting = CountingTokenizer(tok)
    train, test = data.make_datasets(c, counting)
    assert counting.batch_calls == 2
    assert len(list((data.cache_dir() / "tokens").glob("*.pt"))) == 2
    cached = CountingTokenizer(tok)
    train2, test2 = data.make_datasets(c, cached)
    assert cached.batch_calls == 0
    assert [t.tolist() for t in train2] == [t.tolist() for t in train]
    # another block size reuses the same cache
    data.make_datasets(cfg(input_files=[str(f)], tinystories_weight=0.5, num_tinystories=300, block_size=64), cached)
    assert cached.batch_calls == 0


def test_compact_tokenizer(tmp_path, tok):
    f = lines_file(tmp_path)
    full, _ = data.make_datasets(cfg(input_files=[str(f)]), tok)
    used = {i for t in full for i in t.tolist()}
    compact = CompactTokenizer(tok, used)
    train, _ = data.make_datasets(cfg(input_files=[str(f)]), compact)
    assert train.pad_id == compact.eot_token
    assert max(int(t.max()) for t in train) < compact.n_vocab
    assert compact.decode(train[0].tolist()) == tok.decode(full[0].tolist())
    x, _ = next(data.batches(train, 4, seed=0))
    assert int(x.max()) < compact.n_vocab


def test_compact_vocab_config_builds_the_tokenizer_from_all_sources(tmp_path, tok, capsys):
    f = lines_file(tmp_path)
    full_train, full_test = data.make_datasets(cfg(input_files=[str(f)]), tok)
    assert full_train.tokenizer is tok and full_train.vocab_size == 50257
    train, test = data.make_datasets(cfg(input_files=[str(f)], compact_vocab=True), tok)
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
    train, test = data.make_datasets(c, tok)
    assert len(train) + len(test) == 300
    assert "Datasets:" in capsys.readouterr().out


def test_batches_and_loader_are_seeded(tmp_path, tok):
    f = lines_file(tmp_path, n=100)
    train, _ = data.make_datasets(cfg(input_files=[str(f)], test_fraction=0.0), tok)

    def firsts(it):  # each batch's rows, as token lists
        return [x.tolist() for x, _ in it]

    a = firsts(data.batches(train, 8, seed=3))
    assert a == firsts(data.batches(train, 8, seed=3))
    assert a != firsts(data.batches(train, 8, seed=3, epoch=1))
    assert sum(len(b) for b in a) == 100
    assert len(list(data.batches(train, 8, seed=3, drop_last=True))) == 12
    loader = data.make_loader(train, cfg(batch_size=8, seed=3))
    x, y = next(iter(loader))
    assert x.shape[0] == 8 and (y[x == EOT_ID] == -100).all()
    assert firsts(loader) == firsts(loader) == a  # the order of batches(); re-iterating repeats it
    loader.sampler.set_epoch(1)
    assert firsts(loader) == firsts(data.batches(train, 8, seed=3, epoch=1))


def test_source_without_training_examples(tmp_path, tok):
    f = tmp_path / "tiny.txt"
    f.write_text("x\ny\nz\n")  # one token per line: no (input, target) pair
    with pytest.raises(ValueError, match="no training examples"):
        data.make_datasets(cfg(input_files=[str(f)]), tok)
