"""Fake hand-ins for the grading tests (tests/test_grade.py, tests_instructor/test_nbgrader.py): a lesson with
two exercises or more, and the three submissions made from a handed-out notebook of it: the kit's solutions,
the stubs as handed out, and the solutions with one exercise replaced by a deliberately wrong implementation
from tests/test_checks.py."""

import ast
import inspect
import json
import textwrap

from test_checks import WRONG

from picollm_helpers.config import repo_root
from picollm_helpers.exercises import answer, exercises_of

ROOT = repo_root()


def lesson_notebook(name):
    return json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))


def _wrong_function(exercise):
    return next((w for w in WRONG.get(exercise.name, ()) if inspect.isfunction(w)), None)


def quickest_lesson_with_two_exercises():
    """A partial score needs one exercise right and one wrong (a wrong function from tests/test_checks.py): of the
    lessons with two exercises or more and such a function, the one whose recorded run time is the shortest."""
    fits = []
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        exs = exercises_of(lesson_notebook(path.stem), path.name)
        if len(exs) >= 2 and any(_wrong_function(e) for e in exs):
            results = ROOT / "results" / f"{path.stem}.json"
            wall = json.loads(results.read_text())["wall_time_s"] if results.exists() else float("inf")
            fits.append((wall, path.stem))
    assert fits, "no lesson has two exercises, one of them with a wrong function in tests/test_checks.py"
    return min(fits)[1]


def wrong_code(name, nb):
    """A wrong implementation of exercise `name` as a student writes it in place of the stub of the handed-out
    notebook nb: the wrong function, then a call of it with the arguments of the function the exercise sits in."""
    fn = next(w for w in WRONG[name] if inspect.isfunction(w))
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and f"# EXERCISE {name} " in src:
            line = src[:src.index(f"# EXERCISE {name} ")].count("\n") + 1
            outer = next(f for f in ast.walk(ast.parse(src)) if isinstance(f, ast.FunctionDef)
                         and f.lineno < line <= f.end_lineno)
            params = ", ".join(a.arg for a in outer.args.args)
            return textwrap.dedent(inspect.getsource(fn)) + f"\nreturn {fn.__name__}({params})"
    raise AssertionError(f"no exercise {name} in the notebook")


def fake_submissions(lesson, handed_out):
    """({student: notebook}, the lesson's exercises, the exercise made wrong in "one_wrong")."""
    exs = exercises_of(lesson_notebook(lesson), lesson)
    made_wrong = next(e for e in exs if _wrong_function(e))
    solutions = {e.name: e.solution for e in exs}
    return ({"solutions": answer(handed_out, solutions), "stubs": handed_out,
             "one_wrong": answer(handed_out, {**solutions, made_wrong.name: wrong_code(made_wrong.name, handed_out)})},
            exs, made_wrong)
