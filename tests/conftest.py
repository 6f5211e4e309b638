"""Fixtures several test files share."""

import pytest

from picollm_helpers import data
from picollm_helpers.progress import forget_notes
from picollm_helpers.tokenizer import get_tokenizer


@pytest.fixture(autouse=True)
def fresh_notes():
    """Each test starts as a new process would: no one-time note printed yet."""
    forget_notes()


@pytest.fixture(scope="session")
def gpt2():
    """The GPT-2 tokenizer, loaded once, before any test points the cache folder elsewhere."""
    return get_tokenizer()


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """Its own empty cache folder for the test, and no network (the hub counts as offline)."""
    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PICOLLM_TINYSTORIES", raising=False)
    monkeypatch.delenv("PICOLLM_WIKI", raising=False)
    monkeypatch.setattr(data, "_hub_probe", None)
    return tmp_path / "cache"
