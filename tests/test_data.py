"""The loaders in picollm_helpers.data (and the 3seqs file they read): local files, the hub path,
the offline fallbacks, and the errors for bad input."""

import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from picollm_helpers import data, seqs, stories
from picollm_helpers.config import cache_dir, repo_root

STORIES = ["Once upon a time, there was a cat.\nIt was happy.",
           "Tom had a red ball. He liked it.",
           'Sue said, "Hello!" The end.']


@pytest.fixture(scope="module")
def tok(gpt2):
    return gpt2


pytestmark = pytest.mark.usefixtures("offline_cache")


# ---------------------------------------------------------------------------------------------- 3seqs

def test_3seqs_size_families_and_determinism(tok):
    fam = seqs.generate_3seqs_with_families()
    lines = [line for _, line in fam]
    assert len(lines) == 10000
    assert {f for f, _ in fam} == {f for f, _ in seqs.FAMILIES}
    assert seqs.generate_3seqs() == lines
    assert seqs.generate_3seqs(50) == lines[:50]
    assert seqs.generate_3seqs(12345)[:10000] == lines          # a longer file starts with this one
    assert seqs.generate_3seqs(50, seed=1) != lines[:50]
    assert max(len(ids) for ids in tok.encode_ordinary_batch(lines)) < 1024


def test_3seqs_follows_the_course_file_shares_lengths_and_starts():
    """The course file's families in its exact shares, 12-40 numbers a line (median 26), its start ranges."""
    fam = seqs.generate_3seqs_with_families()
    shares = {f: sum(g == f for g, _ in fam) / len(fam) for f, _ in seqs.FAMILIES}
    assert shares == {"counting": 0.605, "fibonacci": 0.147, "squares": 0.104, "powers_of_two": 0.100,
                      "zeros": 0.044}
    lengths = sorted(len(line.split()) for _, line in fam)
    assert lengths[0] == 12 and lengths[-1] == 40 and lengths[len(lengths) // 2] == 26
    starts = {f: set() for f, _ in seqs.FAMILIES}
    for f, line in fam:
        nums = [int(x) for x in line.split()]
        starts[f].add(tuple(nums[:2]) if f == "fibonacci" else nums[0])
        if f == "counting":
            assert all(b - a == 1 for a, b in zip(nums, nums[1:])), line
        elif f == "fibonacci":
            assert all(c == a + b for a, b, c in zip(nums, nums[1:], nums[2:])), line
        elif f == "squares":
            k = int(round(nums[0] ** 0.5))
            assert nums == [(k + i) ** 2 for i in range(len(nums))], line
        elif f == "powers_of_two":
            assert all(b == 2 * a for a, b in zip(nums, nums[1:])), line
        else:
            assert set(nums) == {0}, line
    assert starts["counting"] == set(range(-10, 101))            # every start in -10..100, none outside
    assert starts["fibonacci"] == {(0, 1), (1, 1), (1, 2), (2, 3)}
    assert starts["squares"] == {k * k for k in range(21)}
    assert starts["powers_of_two"] == {1, 2}
    assert starts["zeros"] == {0}
    # the exact shares hold in every block of 10,000 lines, so a smaller file is close to them too
    first = seqs.generate_3seqs_with_families(2000)
    assert abs(sum(f == "counting" for f, _ in first) / 2000 - 0.605) < 0.03


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
    assert not list((cache_dir() / "texts").glob("tinystories-hub-*"))


def test_synthetic_corpus_is_cached(monkeypatch):
    first = data.load_tinystories(100)
    assert list((cache_dir() / "texts").glob("tinystories-synthetic-*.json"))
    monkeypatch.setattr(stories, "generate_stories", lambda *a, **k: pytest.fail("regenerated"))
    assert data.load_tinystories(100).texts == first.texts


def test_hub_probe_runs_once_per_process(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    calls = []

    def no_dns(host, port, *args, **kwargs):
        calls.append((host, port))
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    reason = "huggingface.co is unreachable: its name does not resolve (Name or service not known)"
    assert data.hub_offline_reason() == reason
    assert not data.hub_reachable()
    assert calls == [("huggingface.co", 443)]
    out = []
    monkeypatch.setattr("builtins.print", out.append)
    data.load_tinystories(5)                                  # the loader's line says why
    assert f"(synthetic offline corpus; {reason})" in out[0]
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



@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_malformed_table_names_the_file_and_the_row(tmp_path, kind):
    from picollm_helpers.errors import DataError
    path = tmp_path / f"stories.{kind}"
    if kind == "jsonl":
        path.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n{not json\n")
        row = "row 3"
    else:
        path.write_bytes(b"PAR1 this is not a parquet file")
        row = "row 1"
    with pytest.raises(DataError, match=rf"stories\.{kind}, row \d+") as e:
        data.load_tinystories(3, path=path)
    assert row in str(e.value) and "fix or remove that row" in str(e.value)
