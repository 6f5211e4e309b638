"""make grade: a folder of collected notebooks -> grades.csv, one row per student and exercise; a file that is
not a notebook, or a notebook that runs past its time limit, gets a row that says so and the others are graded.
Also the graded mode of the checks that the nbgrader course's test cells use."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest
from submissions import fake_submissions, lesson_notebook, quickest_lesson_with_two_exercises

from picollm_helpers.checks import CHECKS, CheckFailed
from picollm_helpers.exercises import build_notebook, points
from picollm_helpers.grade import NOTEBOOK_ROW, grade, main, submissions

LESSON = quickest_lesson_with_two_exercises()


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    """The three fake hand-ins of the student build, a broken file, graded once: (rows, csv rows, exercises, wrong)."""
    folder = tmp_path_factory.mktemp("collected")
    handed_out = build_notebook(lesson_notebook(LESSON), f"{LESSON}.ipynb")
    fakes, exs, wrong = fake_submissions(LESSON, handed_out)
    for student, nb in fakes.items():
        (folder / student).mkdir()
        (folder / student / f"{LESSON}.ipynb").write_text(json.dumps(nb, indent=1), encoding="utf-8")
    (folder / "dana.ipynb").write_text('{"cells": [ this is where the upload was cut off', encoding="utf-8")
    out = tmp_path_factory.mktemp("sheet") / "grades.csv"
    rows = grade(folder, out, timeout=300, log=lambda *_: None)
    with open(out, newline="", encoding="utf-8") as f:
        return rows, list(csv.DictReader(f)), exs, wrong


def _of(rows, student):
    return {r.exercise: r for r in rows if r.student == student}


def test_the_kits_solutions_pass_every_exercise_with_full_points(sheet):
    rows, _, exs, _ = sheet
    mine = _of(rows, "solutions")
    assert set(mine) == {e.name for e in exs}
    for e in exs:
        r = mine[e.name]
        assert (r.result, r.status, r.points, r.out_of, r.lesson) == ("passed", "passed", points(e.difficulty),
                                                                     points(e.difficulty), LESSON)
        assert r.message.startswith(f"{e.name}: the kit's checks passed") and r.seconds > 0


def test_the_stubs_fail_every_exercise_as_not_implemented(sheet):
    rows, _, exs, _ = sheet
    mine = _of(rows, "stubs")
    assert set(mine) == {e.name for e in exs}
    assert all((r.result, r.status, r.points) == ("failed", "not implemented", 0) for r in mine.values())


def test_a_wrong_implementation_fails_its_exercise_only_with_the_checks_first_line(sheet):
    rows, _, exs, wrong = sheet
    mine = _of(rows, "one_wrong")
    assert {name for name, r in mine.items() if r.result == "failed"} == {wrong.name}
    r = mine[wrong.name]
    assert r.status in ("failed", "raised") and r.message.startswith(f"{wrong.name}: ") and "\n" not in r.message
    assert sum(r.points for r in mine.values()) == sum(points(e.difficulty) for e in exs) - points(wrong.difficulty)


def test_a_file_that_is_not_a_notebook_gets_one_row_saying_so(sheet):
    rows, _, _, _ = sheet
    mine = [r for r in rows if r.student == "dana"]
    assert len(mine) == 1 and mine[0].exercise == NOTEBOOK_ROW and mine[0].status == "not a notebook"
    assert "not valid JSON" in mine[0].message


def test_the_csv_holds_the_same_rows(sheet):
    rows, table, _, _ = sheet
    assert [(r["student"], r["exercise"], r["result"]) for r in table] == [(r.student, r.exercise, r.result)
                                                                         for r in rows]
    assert list(table[0]) == ["student", "file", "lesson", "exercise", "result", "status", "points", "out_of",
                              "message", "seconds"]


def _zombie(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_a_notebook_past_its_time_limit_is_stopped_and_the_next_is_graded(tmp_path):
    cell = {"cell_type": "code", "execution_count": None, "id": "c", "metadata": {}, "outputs": []}
    nb = {"cells": [], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                   "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    folder = tmp_path / "in"
    folder.mkdir()
    pid_file = tmp_path / "kernel.pid"
    slow = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)"
    (folder / "slow.ipynb").write_text(json.dumps({**nb, "cells": [{**cell, "source": slow}]}))
    (folder / "quick.ipynb").write_text(json.dumps({**nb, "cells": [{**cell, "source": "x = 1"}]}))
    rows = grade(folder, tmp_path / "grades.csv", timeout=20, log=lambda *_: None)
    slow, quick = _of(rows, "slow")[NOTEBOOK_ROW], _of(rows, "quick")[NOTEBOOK_ROW]
    assert slow.status == "timed out" and "20 s" in slow.message and 20 <= slow.seconds < 60
    assert quick.status == "no exercises"  # it ran: a notebook of no lesson has nothing to grade
    kernel = int(pid_file.read_text())
    for _ in range(50):  # the stopped notebook's kernel does not outlive it
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        if _zombie(kernel):  # exited, not yet reaped by its new parent
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the kernel of the stopped notebook (pid {kernel}) still runs")


def test_students_are_named_by_their_file_or_their_folder(tmp_path):
    for rel in ("alice.ipynb", "bob/05_overfitting.ipynb", ".hidden/x.ipynb", "carl/.ipynb_checkpoints/x.ipynb"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    found = [(s, p.name) for s, p in submissions(tmp_path)]
    assert found == [("alice", "alice.ipynb"), ("bob", "05_overfitting.ipynb")]


def test_the_command_writes_the_sheet_and_sums_up_each_student(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "erin.pdf").write_bytes(b"%PDF-1.7 \xff\xfe")
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "grades.csv")]) == 0
    out = capsys.readouterr().out
    assert "erin: 0 of 0 points, 0 of 0 exercises passed (not a notebook)" in out
    with open(tmp_path / "grades.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert (row["student"], row["status"], row["message"]) == ("erin", "not a notebook", "not a notebook: the file is "
                                                                                         "not text")


def test_the_command_refuses_an_output_inside_the_submissions(tmp_path):
    done = subprocess.run([sys.executable, "-m", "picollm_helpers.grade", str(tmp_path), "--out",
                           str(tmp_path / "grades.csv")], capture_output=True, text=True)
    assert done.returncode == 2 and "inside" in done.stderr


# The checks' graded mode ------------------------------------------------------------------------------

def _stub(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("name", ["ngram_share", "sinusoidal_encoding"])
def test_a_strict_check_raises_with_the_verdict_and_carries_the_fallback(name, capsys):
    check = CHECKS[name]
    with pytest.raises(CheckFailed) as e:
        check(_stub, strict=True)
    assert isinstance(e.value, AssertionError) and e.value.fallback is check.reference
    assert str(e.value) == e.value.verdict.message and "not implemented yet" in str(e.value)
    assert check(check.reference, strict=True) is check.reference  # a pass returns the student's code


def test_graded_mode_comes_from_the_environment_and_strict_false_overrides_it(monkeypatch, capsys):
    check = CHECKS["ngram_share"]
    monkeypatch.setenv("PICOLLM_GRADED", "1")
    with pytest.raises(CheckFailed):
        check(_stub)
    assert check(_stub, strict=False) is check.reference
    monkeypatch.setenv("PICOLLM_GRADED", "0")
    assert check(_stub) is check.reference  # the handed-out notebooks: never stuck


def test_each_verdict_is_appended_to_the_verdicts_file(tmp_path, monkeypatch, capsys):
    log = tmp_path / "verdicts.jsonl"
    monkeypatch.setenv("PICOLLM_VERDICTS", str(log))
    check = CHECKS["ngram_share"]
    check(_stub)
    check(check.reference)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(v["name"], v["status"]) for v in lines] == [("ngram_share", "not implemented"), ("ngram_share", "passed")]
    assert all(v["seconds"] >= 0 and v["message"].startswith("ngram_share: ") for v in lines)
