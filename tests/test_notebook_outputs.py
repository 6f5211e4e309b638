"""The committed lessons read as a course, not a log: their saved outputs stay short.

A lesson saved after a laptop-profile run holds no output cell over 40 lines and no more than 250
lines in all (a figure counts as one line, an empty display as none). A training run leaves one
summary line; a per-epoch log or a progress bar per epoch would break these bounds at once.
"""

import json
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_CELL, MAX_LESSON = 40, 250


def output_lines(output: dict) -> int:
    if output.get("output_type") == "stream":
        text = "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
    elif output.get("output_type") in ("display_data", "execute_result"):
        data = output.get("data", {})
        if "image/png" in data:
            return 1
        text = data.get("text/plain", "")
        text = "".join(text) if isinstance(text, list) else text
    elif output.get("output_type") == "error":
        return len(output.get("traceback", []))
    else:
        return 0
    return len(text.rstrip("\n").split("\n")) if text.strip() else 0


def test_output_lines_counts_text_figures_and_nothing_for_an_empty_display():
    assert output_lines({"output_type": "stream", "text": ["a\n", "b\n"]}) == 2
    assert output_lines({"output_type": "display_data", "data": {"image/png": "...", "text/plain": "<Figure>"}}) == 1
    assert output_lines({"output_type": "display_data", "data": {"text/plain": ""}}) == 0
    assert output_lines({"output_type": "execute_result", "data": {"text/plain": "x\ny"}}) == 2


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_a_saved_lesson_holds_no_wall_of_output(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    per_cell = {i: sum(output_lines(o) for o in cell.get("outputs", []))
                for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"}
    long_cells = {i: n for i, n in per_cell.items() if n > MAX_CELL}
    assert not long_cells, f"{path.name}: cells with more than {MAX_CELL} lines of output: {long_cells}"
    assert sum(per_cell.values()) <= MAX_LESSON, f"{path.name}: {sum(per_cell.values())} lines of saved output"


def test_there_are_lessons_to_check():
    assert len(LESSONS) >= 8
