"""The nbgrader course that make exercises builds (instructor/nbgrader/source/): nbgrader's markers and cell
metadata, one locked autograded test cell per exercise worth its difficulty, no solution outside the solution
regions, and instructor/README.md's table of exercises, points and minutes as the markers say.
nbgrader itself runs the course in tests_instructor/ (make test-instructor)."""

import json
import re

import pytest

from picollm_helpers.config import repo_root
from picollm_helpers.errors import PicoLLMError
from picollm_helpers.exercises import (
    _with_table,
    answer,
    build_nbgrader,
    build_notebook,
    exercises_of,
    exercises_table,
    points,
    solution_cell,
)

ROOT = repo_root()
LESSONS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))


def _nb(lesson):
    return json.loads((ROOT / "notebooks" / f"{lesson}.ipynb").read_text(encoding="utf-8"))


def _src(cell):
    return "".join(cell["source"])


def test_a_region_becomes_a_solution_region_after_its_marker_and_hint():
    lines = ["def f(x):", "    # EXERCISE f (difficulty 2, 10 min): double it", "    # HINT: twice", "    y = x * 2",
             "    return y", "    # END EXERCISE", "", "z = 1"]
    out, found = solution_cell(lines, "here")
    assert out == ["def f(x):", "    # EXERCISE f (difficulty 2, 10 min): double it", "    # HINT: twice",
                   "    ### BEGIN SOLUTION", "    y = x * 2", "    return y", "    ### END SOLUTION", "", "z = 1"]
    assert [e.name for e in found] == ["f"]


@pytest.mark.parametrize("lesson", LESSONS)
def test_each_exercise_gets_one_locked_graded_cell_worth_its_difficulty(lesson):
    nb = build_nbgrader(_nb(lesson), f"{lesson}.ipynb")
    exs = exercises_of(_nb(lesson), lesson)
    meta = [c["metadata"]["nbgrader"] for c in nb["cells"] if "nbgrader" in c["metadata"]]
    ids = [m["grade_id"] for m in meta]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
    cell_ids = [c["id"] for c in nb["cells"] if "id" in c]
    assert len(cell_ids) == len(set(cell_ids))
    graded = {c["metadata"]["nbgrader"]["grade_id"]: c for c in nb["cells"]
              if c["metadata"].get("nbgrader", {}).get("grade")}
    assert set(graded) == {f"check_{e.name}" for e in exs}
    for e in exs:
        cell = graded[f"check_{e.name}"]
        m = cell["metadata"]["nbgrader"]
        assert (m["points"], m["locked"], m["solution"], m["schema_version"]) == (points(e.difficulty), True, False, 3)
        assert re.search(rf"= check_{e.name}\(\w+, strict=True\)", _src(cell)) and "failed.fallback" in _src(cell)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None and "NBVAL_CHECK_OUTPUT" not in _src(cell)


@pytest.mark.parametrize("lesson", LESSONS)
def test_no_solution_line_lies_outside_a_solution_region(lesson):
    nb = build_nbgrader(_nb(lesson), f"{lesson}.ipynb")
    outside = []
    for cell in nb["cells"]:
        text = _src(cell)
        if cell["metadata"].get("nbgrader", {}).get("solution"):
            assert text.count("### BEGIN SOLUTION") == text.count("### END SOLUTION") >= 1
            text = re.sub(r"### BEGIN SOLUTION.*?### END SOLUTION", "", text, flags=re.S)
        else:
            assert "BEGIN SOLUTION" not in text
        outside += [re.sub(r"\s+", "", line) for line in text.split("\n")]
    for e in exercises_of(_nb(lesson), lesson):
        lines = {re.sub(r"\s+", "", re.sub(r"#.*$", "", line)) for line in e.solution.split("\n")}
        leaked = {line for line in lines if len(line) >= 20} & set(outside)
        assert not leaked, f"{lesson}: {e.name}'s solution outside its region: {leaked}"


def test_the_instructor_readmes_table_is_the_markers():
    readme = (ROOT / "instructor" / "README.md").read_text(encoding="utf-8")
    table = exercises_table({lesson: exercises_of(_nb(lesson), lesson) for lesson in LESSONS})
    assert _with_table(readme, table, ROOT / "instructor" / "README.md") == readme, "run `make exercises`"
    total = sum(e.minutes for lesson in LESSONS for e in exercises_of(_nb(lesson), lesson))
    assert f"| {total} |" in table.split("\n")[-1]


def test_answer_fills_the_stubs_of_both_handed_out_forms():
    lesson = next(les for les in LESSONS if exercises_of(_nb(les), les))
    exs = exercises_of(_nb(lesson), lesson)
    code = {e.name: e.solution for e in exs}
    student = answer(build_notebook(_nb(lesson), f"{lesson}.ipynb"), code)
    text = "\n".join(_src(c) for c in student["cells"] if c["cell_type"] == "code")
    assert "raise NotImplementedError('exercise" not in text
    assert all(e.solution.split("\n")[0].strip() in text for e in exs)
    with pytest.raises(PicoLLMError, match="no exercise marker"):
        answer(build_notebook(_nb(lesson), f"{lesson}.ipynb"), {"no_such_exercise": "pass"})
