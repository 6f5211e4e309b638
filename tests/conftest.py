"""Fixtures several test files share."""

import pytest
from test_cli import course_dir, offline_env

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


@pytest.fixture
def course(tmp_path):
    """A course folder with a small 3seqs.txt, an offline environment, and the arguments of a one-model
    LSTM run into out/ (smoke profile, 2 steps an epoch): (folder, env, argv)."""
    work = course_dir(tmp_path, n_lines=400)
    env = offline_env(tmp_path)
    argv = ["--tinystories_weight", "0.0", "--input_files", "data/3seqs.txt", "--block_size", "16",
            "--max_steps_per_epoch", "2", "--models", "lstm", "--output_dir", "out"]
    return work, env, argv
