"""The nbgrader course, round trip with nbgrader itself (the `instructor` extra; `make test-instructor`).

`nbgrader generate_assignment` on one lesson's nbgrader notebook (built from the lesson as `make exercises`
builds instructor/nbgrader/source/), then `nbgrader autograde` on three submissions made from its release:
the kit's solutions (full marks), the release as handed out (zero), and the solutions with one exercise
replaced by a deliberately wrong implementation from tests/test_checks.py (every point but that
exercise's). The lesson runs in the smoke profile.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from nbgrader.api import Gradebook

from picollm_helpers.config import repo_root
from picollm_helpers.exercises import build_nbgrader, points

ROOT = repo_root()
sys.path.insert(0, str(ROOT / "tests"))
from submissions import fake_submissions, lesson_notebook, quickest_lesson_with_two_exercises  # noqa: E402

LESSON = quickest_lesson_with_two_exercises()


def _nbgrader(args, cwd, env):
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Run the round trip once: (gradebook path, the lesson's exercises, the exercise made wrong, the release)."""
    course = tmp_path_factory.mktemp("course")
    shutil.copy(ROOT / "instructor" / "nbgrader" / "nbgrader_config.py", course)
    source = course / "source" / LESSON / f"{LESSON}.ipynb"
    source.parent.mkdir(parents=True)
    source.write_text(json.dumps(build_nbgrader(lesson_notebook(LESSON), f"{LESSON}.ipynb"), indent=1,
                                 ensure_ascii=False) + "\n", encoding="utf-8")
    env = dict(os.environ, PICOLLM_PROFILE="smoke", PICOLLM_FIGURES=str(course / "figures"),
               PICOLLM_RESULTS=str(course / "results"), MPLBACKEND="Agg",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))  # nbgrader runs alembic
    env.pop("PICOLLM_GRADED", None)
    _nbgrader(["generate_assignment", LESSON], course, env)
    release = json.loads((course / "release" / LESSON / f"{LESSON}.ipynb").read_text(encoding="utf-8"))
    submissions, exs, made_wrong = fake_submissions(LESSON, release)
    for student, nb in submissions.items():
        dest = course / "submitted" / student / LESSON / f"{LESSON}.ipynb"
        dest.parent.mkdir(parents=True)
        dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _nbgrader(["autograde", LESSON], course, env)
    return course / "gradebook.db", exs, made_wrong, release


def _scores(db, student):
    with Gradebook(f"sqlite:///{db}") as gb:
        sub = gb.find_submission(LESSON, student)
        return sub.score, sub.max_score, {g.name: g.score for g in sub.notebooks[0].grades}


def test_the_release_holds_no_solution_and_keeps_the_goals_and_hints(graded):
    _, exs, _, release = graded
    code = "\n".join("".join(c["source"]) for c in release["cells"] if c["cell_type"] == "code")
    for e in exs:
        assert f"# EXERCISE {e.name} (difficulty {e.difficulty}, {e.minutes} min)" in code
        long_lines = [line.strip() for line in e.solution.split("\n") if len(line.strip()) >= 20]
        assert long_lines and not any(line in code for line in long_lines), f"{e.name}'s solution is in the release"
    assert code.count("raise NotImplementedError()") == len(exs)


def test_the_kits_solutions_get_full_marks(graded):
    db, exs, _, _ = graded
    score, max_score, grades = _scores(db, "solutions")
    assert max_score == sum(points(e.difficulty) for e in exs) and len(grades) == len(exs)
    assert score == max_score, grades


def test_the_stubs_as_handed_out_get_zero(graded):
    db, exs, _, _ = graded
    score, max_score, grades = _scores(db, "stubs")
    assert max_score == sum(points(e.difficulty) for e in exs)
    assert score == 0, grades


def test_a_wrong_implementation_loses_exactly_its_exercises_points(graded):
    db, exs, wrong, _ = graded
    score, max_score, grades = _scores(db, "one_wrong")
    assert grades == {f"check_{e.name}": (0 if e.name == wrong.name else points(e.difficulty)) for e in exs}
    assert score == max_score - points(wrong.difficulty) > 0
