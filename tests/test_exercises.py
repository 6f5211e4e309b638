"""The student build (make exercises): deterministic, up to date, and every student notebook runs
to the end with each exercise's check saying "not implemented yet"."""

import json
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from picollm_helpers.checks import CHECKS
from picollm_helpers.config import repo_root
from picollm_helpers.errors import PicoLLMError
from picollm_helpers.exercises import build, build_notebook, exercises_of, stub_cell

ROOT = repo_root()
LESSONS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))


def _nb(name):
    return json.loads((ROOT / "notebooks" / name).read_text(encoding="utf-8"))


def test_a_region_becomes_a_stub_keeping_what_surrounds_it():
    lines = [
        "def f(x):",
        '    """Docstring stays."""',
        "    # EXERCISE f (difficulty 2, 10 min): double it",
        "    y = x * 2",
        "    return y",
        "    # END EXERCISE",
        "",
        "f = check_f(f)",
    ]
    out, found = stub_cell(lines, "here")
    assert out == ["def f(x):", '    """Docstring stays."""', "    # EXERCISE f (difficulty 2, 10 min): double it",
                   "    raise NotImplementedError('exercise f: double it')", "", "f = check_f(f)"]
    assert [(e.name, e.difficulty, e.minutes, e.hint) for e in found] == [("f", 2, 10, "double it")]


@pytest.mark.parametrize("lines,says", [
    (["# EXERCISE f: no difficulty", "x = 1", "# END EXERCISE"], "malformed exercise marker"),
    (["# EXERCISE f (difficulty 2, 5 min): hint", "x = 1"], "no '# END EXERCISE'"),
    (["x = 1", "# END EXERCISE"], "without an opening"),
    (["# EXERCISE f (difficulty 1, 5 min): a", "# EXERCISE g (difficulty 1, 5 min): b", "# END EXERCISE"],
     "contains another exercise marker"),
])
def test_a_malformed_region_is_refused_with_its_place(lines, says):
    with pytest.raises(PicoLLMError, match=says) as e:
        stub_cell(lines, "03_top_p_sampling.ipynb, cell 4")
    assert "cell 4" in str(e.value)


def test_the_build_is_deterministic_and_leaves_no_outputs():
    nb = _nb(LESSONS[0])
    a, b = build_notebook(nb, LESSONS[0]), build_notebook(nb, LESSONS[0])
    assert a == b
    for cell in a["cells"]:
        assert "NBVAL_CHECK_OUTPUT" not in "".join(cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_the_committed_student_notebooks_equal_a_fresh_build():
    stale = build(check=True)
    assert not stale, f"out of date, run `make exercises`: {[p.name for p in stale]}"
    assert sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb")) == LESSONS


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_exercise_has_a_check_called_after_it(lesson):
    nb = _nb(lesson)
    exs = exercises_of(nb, lesson)
    assert exs, f"{lesson} has no exercise"
    later = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    for ex in exs:
        assert ex.name in CHECKS, f"{lesson}: exercise {ex.name!r} has no check in picollm_helpers.checks"
        assert 5 <= ex.minutes <= 20, f"{lesson}: {ex.name} is {ex.minutes} minutes; an exercise takes 5-20"
        assert re.search(rf"\bcheck_{ex.name}\(", later), f"{lesson}: nothing calls check_{ex.name}"


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


@pytest.mark.parametrize("lesson", LESSONS)
def test_a_fresh_student_notebook_runs_to_the_end(lesson, tmp_path, monkeypatch):
    """Run All on the student notebook, smoke profile: no cell fails, every check reports its stub."""
    monkeypatch.setenv("PICOLLM_PROFILE", "smoke")
    monkeypatch.setenv("PICOLLM_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("PICOLLM_RESULTS", str(tmp_path / "results"))
    nb = nbformat.read(ROOT / "exercises" / lesson, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "exercises")}}).execute()
    text = _outputs_text(nb)
    for ex in exercises_of(_nb(lesson), lesson):
        assert f"{ex.name}: not implemented yet" in text, f"{lesson}: the check of {ex.name} did not report its stub"
    assert "continues with" in text
    assert os.environ["PICOLLM_PROFILE"] == "smoke"
