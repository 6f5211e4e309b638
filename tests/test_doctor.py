"""The doctor reports every item, and a missing one with its fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from picollm_helpers import doctor

ROOT = Path(__file__).resolve().parent.parent
ITEMS = ["Python", "torch", "kit", "packages", "threads", "decode", "memory", "device", "tokenizer", "3seqs",
         "TinyStories", "WikiText", "widgets", "speed"]


@pytest.fixture
def offline(offline_cache, monkeypatch):
    """No network (HF_HUB_OFFLINE=1), an empty cache folder, the laptop profile."""
    monkeypatch.delenv("PICOLLM_PROFILE", raising=False)
    return offline_cache


def by_item(results):
    return {c.item: c for c in results}


def test_report_lists_every_item_and_each_problem_has_a_fix(offline, capsys):
    results = doctor.checks()
    assert [c.item for c in results] == ITEMS
    assert all(c.fix for c in results if c.status is False)
    doctor.report(results)
    out = capsys.readouterr().out
    for c in results:
        assert f"{c.mark}  {c.item}" in out and c.detail in out
    assert out.strip().splitlines()[-1].startswith(f"{sum(c.status is True for c in results)} ok")
    got = by_item(results)
    assert torch.__version__ in got["torch"].detail and sys.executable in got["Python"].detail
    assert f"torch uses {torch.get_num_threads()} threads" in got["threads"].detail
    assert got["device"].detail.startswith("cpu") or "cuda" in got["device"].detail
    assert "GB" in got["memory"].detail


def test_offline_files_missing_are_reported_with_their_fix(offline, monkeypatch):
    got = by_item(doctor.checks())
    tok = got["tokenizer"]                                   # the empty cache: no GPT-2 ranks
    assert tok.status is False and "not cached" in tok.detail and "make setup" in tok.fix
    ts = got["TinyStories"]                                  # no hub (HF_HUB_OFFLINE=1), no local file
    assert ts.status is None and "synthetic stories" in ts.detail and "HF_HUB_OFFLINE=1" in ts.detail
    assert "PICOLLM_TINYSTORIES" in ts.fix
    (offline / "tokenizer").mkdir(parents=True)
    (offline / "tokenizer" / "gpt2.tiktoken").write_text("not the ranks")
    assert "damaged" in doctor.check_tokenizer().detail
    monkeypatch.setenv("PICOLLM_WIKI", str(offline / "nope.txt"))
    wiki = doctor.check_wiki()
    assert wiki.status is False and "no such file" in wiki.detail and "PICOLLM_WIKI" in wiki.fix


def test_the_cached_tokenizer_works_offline(gpt2):
    from picollm_helpers.tokenizer import ranks_path

    assert ranks_path().exists()
    c = doctor.check_tokenizer()
    assert c.status is True and "works offline" in c.detail


def test_missing_torch_and_kit_say_make_setup(offline, monkeypatch):
    real = doctor.importlib.import_module

    def no_torch(name, *args):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real(name, *args)
    monkeypatch.setattr(doctor.importlib, "import_module", no_torch)
    for check in (doctor.check_torch, doctor.check_threads, doctor.check_device):
        c = check()
        assert c.status is False and "not installed" in c.detail and "make setup" in c.fix
    monkeypatch.setattr(doctor.metadata, "distributions", lambda name=None: [])
    kit = doctor.check_kit()
    assert kit.status is False and "not installed in this Python" in kit.detail and "pip install -e" in kit.fix


def test_versions_caveats(offline, monkeypatch, tmp_path):
    assert doctor.check_python((3, 9, 1)).status is False and "3.10 or newer" in doctor.check_python((3, 9, 1)).fix
    assert doctor.check_python((3, 13, 0)).status is None and "tested on 3.11" in doctor.check_python((3, 13, 0)).detail
    monkeypatch.setattr(doctor, "_pins", lambda: {"numpy": "0.0.1", "torch": "9.9.9"})
    packages = doctor.check_packages()
    assert packages.status is None and f"numpy {doctor._installed('numpy')} (tested: 0.0.1)" in packages.detail
    assert "make setup" in packages.fix
    t = doctor.check_torch()
    assert t.status is None and "tested with 9.9.9" in t.detail
    monkeypatch.setattr(doctor, "_installed", lambda name: None if name == "tiktoken" else "1.0")
    missing = doctor.check_packages()
    assert missing.status is False and "tiktoken" in missing.detail and "make setup" in missing.fix


def test_machine_caveats(offline, monkeypatch):
    monkeypatch.setattr(doctor, "_usable_cores", lambda: (2, "cores"))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    c = doctor.check_threads()
    assert c.status is None and "more threads than cores" in c.detail and "OMP_NUM_THREADS=2" in c.fix
    monkeypatch.setattr(doctor, "_memory_gb", lambda: (4.0, 0.5))
    c = doctor.check_memory()
    assert c.status is None and "0.5 GB available" in c.detail and "PICOLLM_PROFILE=smoke" in c.fix
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        monkeypatch.setenv("PICOLLM_PROFILE", "full")
        c = doctor.check_device()
        assert c.status is None and "sized for a GPU" in c.detail and "PICOLLM_PROFILE=laptop" in c.fix
    monkeypatch.setenv("PICOLLM_PROFILE", "huge")
    c = doctor.check_device()
    assert c.status is False and "PICOLLM_PROFILE='huge'" in c.detail


def test_widgets_missing_or_mismatched(offline, monkeypatch, tmp_path):
    assert doctor.check_widgets().status is True           # this environment: matching, kernel registered
    real = doctor._installed
    monkeypatch.setattr(doctor, "_installed", lambda name: None if name == "ipywidgets" else real(name))
    c = doctor.check_widgets()
    assert c.status is False and "ipywidgets is not installed" in c.detail and "make setup" in c.fix
    monkeypatch.setattr(doctor, "_installed", real)
    monkeypatch.setattr(doctor, "_jupyter_data_dirs", lambda: [tmp_path / "empty"])   # no extension anywhere
    c = doctor.check_widgets()
    assert c.status is False and "widget extension" in c.detail and "Error displaying widget" in c.detail
    stale = tmp_path / "user" / "labextensions" / doctor.WIDGET_EXTENSION
    stale.mkdir(parents=True)
    (stale / "package.json").write_text(json.dumps({"name": doctor.WIDGET_EXTENSION, "version": "3.0.0"}))
    monkeypatch.setattr(doctor, "_jupyter_data_dirs", lambda: [tmp_path / "user", Path(sys.prefix) / "share/jupyter"])
    c = doctor.check_widgets()
    assert c.status is None and "has 3.0.0" in c.detail and "remove the other copy" in c.fix


def test_a_failing_check_is_reported_not_raised(offline, monkeypatch):
    def broken():
        raise RuntimeError("boom")
    monkeypatch.setattr(doctor, "CHECKS", (doctor.check_python, broken))
    results = doctor.checks()
    assert results[1].status is False and "could not be checked (RuntimeError: boom)" in results[1].detail


def test_python_m_doctor_exits_1_only_when_something_is_to_fix(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PICOLLM_CACHE": str(tmp_path / "cache")}   # no ranks cached
    r = subprocess.run([sys.executable, "-m", "picollm_helpers.doctor"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "!!  tokenizer" in r.stdout and "fix: `make setup`" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    for item in ITEMS:
        assert f"  {item}" in r.stdout
