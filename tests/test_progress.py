"""Progress bars: a notebook saved after a run shows each bar's final line, not its first frame."""

import nbformat
from nbclient import NotebookClient

from picollm_helpers.progress import in_notebook, progress


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
