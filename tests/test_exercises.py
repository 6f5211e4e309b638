"""The student build (make exercises): deterministic, up to date, every exercise with its goal, a
collapsed hint and a collapsed solution, no answer given away before its check, and every student
notebook runs to the end with each exercise's check saying "not implemented yet"."""

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
        "    # HINT: multiply by a small",
        "    # HINT: integer",
        "    y = x * 2",
        "    return y",
        "    # END EXERCISE",
        "",
        "f = check_f(f)",
    ]
    out, found = stub_cell(lines, "here")
    assert out == ["def f(x):", '    """Docstring stays."""', "    # EXERCISE f (difficulty 2, 10 min): double it",
                   "    raise NotImplementedError('exercise f: double it')", "", "f = check_f(f)"]
    assert [(e.name, e.difficulty, e.minutes, e.goal, e.hint, e.solution) for e in found] == [
        ("f", 2, 10, "double it", "multiply by a small integer", "y = x * 2\nreturn y")]


def test_the_student_build_adds_a_collapsed_hint_and_solution_after_the_exercise():
    nb = {"cells": [{"cell_type": "markdown", "id": "t", "metadata": {}, "source": ["# title"]},
                    {"cell_type": "code", "id": "ex", "metadata": {}, "outputs": [], "execution_count": 1,
                     "source": _join_lines(["def f(x):", "    # EXERCISE f (difficulty 1, 5 min): double it",
                                            "    # HINT: twice x", "    return x * 2", "    # END EXERCISE"])},
                    {"cell_type": "code", "id": "chk", "metadata": {}, "outputs": [], "execution_count": 2,
                     "source": ["f = check_f(f)"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    cells = build_notebook(nb, "99_test.ipynb")["cells"]
    assert [c["id"] for c in cells] == ["t", "student-version", "ex", "f-help", "chk"]
    stub, help_md = "".join(cells[2]["source"]), "".join(cells[3]["source"])
    assert "HINT" not in stub and "x * 2" not in stub and "raise NotImplementedError('exercise f: double it')" in stub
    assert help_md == ("<details><summary>Hint</summary>\n\ntwice x\n\n</details>\n\n"
                       "<details><summary>Solution</summary>\n\n```python\nreturn x * 2\n```\n\n</details>")
    assert "| `f` | * (1/3) | 5 | double it |" in "".join(cells[1]["source"])


def _join_lines(lines):
    return [line + "\n" for line in lines[:-1]] + lines[-1:]


@pytest.mark.parametrize("lines,says", [
    (["# EXERCISE f: no difficulty", "x = 1", "# END EXERCISE"], "malformed exercise marker"),
    (["# EXERCISE f (difficulty 2, 5 min): hint", "x = 1"], "no '# END EXERCISE'"),
    (["x = 1", "# END EXERCISE"], "without an opening"),
    (["# EXERCISE f (difficulty 1, 5 min): a", "# EXERCISE g (difficulty 1, 5 min): b", "# END EXERCISE"],
     "contains another exercise marker"),
    (["# EXERCISE f (difficulty 1, 5 min): a", "x = 1", "# END EXERCISE"], "has no hint"),
    (["# EXERCISE f (difficulty 1, 5 min): a", "# HINT: h", "x = 1", "# HINT: late", "# END EXERCISE"],
     "after its code"),
    (["# HINT: stray", "x = 1"], "outside an exercise"),
    (["# EXERCISE f (difficulty 1, 5 min): a", "# HINT: only a hint", "# END EXERCISE"], "no code"),
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


@pytest.mark.parametrize("lesson", LESSONS)
def test_a_marker_states_the_goal_not_the_code(lesson):
    """The marker line is the goal in words; calls, attribute access, indexing and operators belong in the hint."""
    for ex in exercises_of(_nb(lesson), lesson):
        code = re.findall(r"\w\.\w|\w\(|@|\*\*|\[|=", ex.goal)
        assert not code, f"{lesson}: the goal of {ex.name} reads as code ({code}): {ex.goal!r}"
        assert ex.hint and ex.solution


# No answer before the check ---------------------------------------------------------------------------

STUDENT = {name: json.loads((ROOT / "exercises" / name).read_text(encoding="utf-8")) for name in LESSONS}
ALL_EXERCISES = [(lesson, ex) for lesson in LESSONS for ex in exercises_of(_nb(lesson), lesson)]
MIN_LINE = 20  # shorter solution lines (loss.backward(), return loss.item()) are common to any training loop


def _norm(line: str) -> str:
    return re.sub(r"\s+", "", re.sub(r"#.*$", "", line))


def _code_cells(lesson):
    return [(n, "".join(c["source"])) for n, c in enumerate(STUDENT[lesson]["cells"]) if c["cell_type"] == "code"]


def _check_cell(lesson, name):
    return next(n for n, src in _code_cells(lesson) if re.search(rf"\bcheck_{name}\(", src))


@pytest.mark.parametrize("lesson,ex", ALL_EXERCISES, ids=lambda x: x if isinstance(x, str) else x.name)
def test_no_other_cell_holds_the_solutions_code(lesson, ex):
    """Each line of the solution (normalised, of MIN_LINE characters or more) appears in no code cell of any
    student notebook: the stub removed it from the exercise's cell, and no other cell may compute it again."""
    lines = {_norm(line) for line in ex.solution.split("\n")} - {""}
    lines = {line for line in lines if len(line) >= MIN_LINE}
    assert lines, f"{ex.name}: no solution line long enough to look for"
    for other in LESSONS:
        for n, src in _code_cells(other):
            found = lines & {_norm(line) for line in src.split("\n")}
            assert not found, f"{other} cell {n} holds {ex.name}'s solution: {sorted(found)}"


def _imported_names(src: str) -> set:
    names = set()
    for m in re.finditer(r"^\s*from\s+[\w.]+\s+import\s+(\([^)]*\)|[^\n]*)", src, re.M):
        names |= {n.strip().split(" as ")[0] for n in m.group(1).strip("()").replace("\n", " ").split(",")}
    for m in re.finditer(r"^\s*import\s+([^\n]*)", src, re.M):
        names |= {n.strip().split(" as ")[0].split(".")[-1] for n in m.group(1).split(",")}
    return names - {""}


@pytest.mark.parametrize("lesson,ex", ALL_EXERCISES, ids=lambda x: x if isinstance(x, str) else x.name)
def test_the_kits_answer_is_not_imported_before_the_check(lesson, ex):
    kit_names = set(CHECKS[ex.name].kit_names)
    for n, src in _code_cells(lesson):
        if n >= _check_cell(lesson, ex.name):
            break
        found = sorted(kit_names & _imported_names(src))
        assert not found, f"{lesson} cell {n} imports {found}, the answer of {ex.name}, before its check"


@pytest.mark.parametrize("lesson", LESSONS)
def test_no_student_notebook_prints_the_source_of_an_exercises_answer(lesson):
    kit_names = {n for c in CHECKS.values() for n in c.kit_names}
    for n, src in _code_cells(lesson):
        for arg in re.findall(r"getsource\(([^)]*)\)", src):
            assert not kit_names & set(re.findall(r"\w+", arg)), f"{lesson} cell {n} prints the source of {arg}"


# What gave answers away before, each in the words of its code: (exercise, pattern, where). "before": in a
# code cell before the exercise's check; "anywhere": in any code cell but the exercise's own.
GIVEAWAYS = [
    ("one_hot_embedding", r"one_hot\([^\n]*@", "anywhere"),          # 01: one_hot(...).float() @ W
    ("kgram_logits", r"\.windows\(", "before"),                      # 02: model.windows(ids)
    ("kgram_logits", r"\bkgram_forward_loop\b", "before"),
    ("top_p_filter", r"cumsum", "before"),                             # 03: nucleus_by_hand
    ("kv_cache_step", r"masked_fill\(", "before"),                    # 04: the masked softmax written out
    ("sinusoidal_encoding", r"\bsinusoidal_embedding\b", "anywhere"),  # 06: the kit's encoding
    ("previous_token_score", r"pattern_scores\(", "before"),          # 07: the scores table
    ("block_grad_norms", r"\bgrad_norms_by_layer\b", "before"),      # 08
]


@pytest.mark.parametrize("name,pattern,where", GIVEAWAYS, ids=[f"{g[0]}-{i}" for i, g in enumerate(GIVEAWAYS)])
def test_no_answer_is_given_away_before_its_check(name, pattern, where):
    lesson, ex = next((lesson, ex) for lesson, ex in ALL_EXERCISES if ex.name == name)
    exercise_cells = {n for n, src in _code_cells(lesson) if "# EXERCISE " in src}
    stop = _check_cell(lesson, name) if where == "before" else len(STUDENT[lesson]["cells"])
    for n, src in _code_cells(lesson):
        if n < stop and n not in exercise_cells:
            assert not re.search(pattern, src), f"{lesson} cell {n} gives {name}'s answer away ({pattern!r})"


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
