"""picollm_helpers.pydocs: the offline stand-in for WikiText, and load_wiki's use of it."""

import subprocess

import pytest

from picollm_helpers import data, pydocs

pytestmark = pytest.mark.usefixtures("offline_cache")


def test_wiki_offline_fallback_is_real_english(capsys, monkeypatch):
    # The lines come from the subprocess runner; the in-process fallback would hide a broken one.
    monkeypatch.setattr(pydocs, "python_docs_lines", lambda: pytest.fail("fell back to this process"))
    corpus = data.load_wiki(400)
    out = capsys.readouterr().out
    assert corpus.synthetic and "Python" in out and "HF_HUB_OFFLINE=1" in out
    assert len(corpus) == 400 and len(set(corpus.texts)) == 400
    common = {"the", "is", "of", "a", "to", "and", "in"}
    english = sum(len(common & set(line.lower().split())) >= 2 for line in corpus.texts)
    assert english / len(corpus) > 0.8
    assert sum(len(line.split()) for line in corpus.texts) > 5000
    assert data.load_wiki(400).texts == corpus.texts  # deterministic (and cached)


def test_prose_paragraphs_keep_running_english_only():
    text = """Return the sum of the two numbers given to this function here.

>>> add(1, 2)
3

Usage::

    x ::= y | z

Heading
=======

short one.

It ends without a full stop and a lowercase start is not prose either

all lowercase words make up this sentence which is dropped too."""
    assert pydocs._prose_paragraphs(text) == ["Return the sum of the two numbers given to this function here."]
    wrapped = "The first line of a paragraph\n    goes on here, wrapped as a docstring would be."
    assert pydocs._prose_paragraphs(wrapped) == [
        "The first line of a paragraph goes on here, wrapped as a docstring would be."]


def test_doc_modules_skip_private_and_side_effect_modules():
    names = pydocs._doc_modules()
    assert "json" in names and "json.decoder" in names  # packages bring their public submodules
    assert not any(n.split(".")[-1].startswith("_") for n in names)
    assert not set(names) & pydocs.DOC_MODULES_SKIPPED
    assert names == pydocs._doc_modules()  # a fixed list, so the lines are too


def test_subprocess_failure_collects_the_lines_here(monkeypatch):
    def refuse(*a, **k):
        raise OSError("no subprocesses here")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(pydocs, "python_docs_lines", lambda: ["Collected in this process instead."])
    assert pydocs.python_docs_in_subprocess() == ["Collected in this process instead."]
