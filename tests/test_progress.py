"""Progress bars (a notebook saved after a run shows each bar's final line), one-time notes, the reporting mode."""

import io
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from picollm_helpers import data
from picollm_helpers import progress as progress_module
from picollm_helpers.progress import in_notebook, note, progress


def test_a_notebook_keeps_the_finished_line_of_each_bar():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from picollm_helpers.progress import progress\n"
        "for i in progress(range(40), desc='epoch 1/1'):\n"
        "    pass\n"
        "for i in progress(range(5), desc='hidden', leave=False):\n"
        "    pass")]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    texts = [o.get("data", {}).get("text/plain", "") for o in nb.cells[0].outputs]
    assert any("epoch 1/1: 100%" in t and "40/40" in t for t in texts), texts
    assert not any(" 0%" in t for t in texts), texts      # no bar frozen at its first frame
    assert not any("hidden" in t for t in texts), texts   # leave=False leaves nothing behind


def test_outside_a_notebook_it_is_a_text_bar(capsys):
    assert not in_notebook()
    assert list(progress(range(3), desc="counting")) == [0, 1, 2]
    assert "counting: 100%" in capsys.readouterr().err


def test_a_note_is_printed_once_per_process(capsys):
    assert note("Tokenizer: GPT-2 BPE from somewhere") is True
    assert note("Tokenizer: GPT-2 BPE from somewhere") is False
    assert note("TinyStories: 300 stories from the kit's story generator") is True   # another message
    assert capsys.readouterr().out == ("Tokenizer: GPT-2 BPE from somewhere\n"
                                       "TinyStories: 300 stories from the kit's story generator\n")


def test_a_data_source_line_is_said_once_however_often_it_is_loaded(tmp_path, capsys):
    path = tmp_path / "lines.txt"
    path.write_text("one line\nanother line\n", encoding="utf-8")
    first = data.load_text_files([path])
    printed = capsys.readouterr().out
    assert str(path.name) in printed and len(printed.splitlines()) == 1
    again = data.load_text_files([path])
    assert capsys.readouterr().out == "" and again.texts == first.texts and again.source == first.source


def test_the_reporting_mode_is_decided_in_one_place(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert progress_module.reporting_mode() == "log"                 # a file or a pipe: a line per epoch

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert progress_module.reporting_mode() == "terminal"
    monkeypatch.setattr(progress_module, "in_notebook", lambda: True)
    assert progress_module.reporting_mode() == "notebook" == progress_module.reporting_mode("notebook")
    assert progress_module.reporting_mode("log") == "log"
    with pytest.raises(ValueError, match="reporting='bars' is not a reporting mode"):
        progress_module.reporting_mode("bars")
