"""A grade sheet from collected notebooks, without a grading server: `make grade SUBMISSIONS=dir`.

    python -m picollm_helpers.grade SUBMISSIONS_DIR [--out grades.csv] [--timeout 300]

Every file under SUBMISSIONS_DIR is one student's hand-in: `alice.ipynb`, or `alice/05_overfitting.ipynb`
(the student is the file's name, or the first folder's). Each notebook runs headless, one after
another, in a temporary folder with the smoke profile and a time limit; a cell that raises does not
stop it (as under nbgrader), so every exercise's check gets its turn. The checks append their
verdicts to a file the run names ($PICOLLM_VERDICTS, see checks/_core.py), so the sheet holds the
checks' own words, never a parse of the outputs; an exercise's first verdict counts (its check cell).
The notebook's code runs as handed in: unlike nbgrader, which restores its locked test cells, this
trusts that the student left the check calls alone.

grades.csv has one row per student and exercise: the result (passed or failed), the check's status
and first message line, the points (the nbgrader course's: the difficulty), and the notebook's run
time. An exercise whose check never ran (the notebook stopped first) is failed, "not reached". A
file that is not a notebook, a notebook that times out or whose kernel dies gets a row of its own
(exercise "(notebook)") that says so, and the other notebooks are graded as usual.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .config import repo_root
from .exercises import CHECK_CALL, exercises_of, points

NOTEBOOK_ROW = "(notebook)"
BUILT_FROM = re.compile(r"built from `notebooks/(?P<lesson>\d\d_\w+)\.ipynb`")
LESSON_IN_NAME = re.compile(r"(?<!\d)(?P<nn>\d\d)_[a-z]")


@dataclass
class Row:
    student: str
    file: str
    lesson: str
    exercise: str
    result: str  # passed | failed
    status: str  # the check's status (passed, failed, raised, not implemented), or what happened to the notebook
    points: int
    out_of: int
    message: str  # the check's first line, or what went wrong
    seconds: float  # the notebook's run time


@dataclass
class Run:
    """What running one notebook gave: the checks' verdicts, and what went wrong with the notebook if anything."""
    verdicts: list
    seconds: float
    problem: str = ""  # "" | "timed out" | "failed to run"
    detail: str = ""


def submissions(folder: Path) -> list[tuple[str, Path]]:
    """(student, file) for every file under folder (hidden files and folders skipped), in order."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        found.append((rel.parts[0] if len(rel.parts) > 1 else path.stem, path))
    return found


def read_notebook(path: Path) -> tuple[dict | None, str]:
    """(the notebook, "") or (None, why it is not a notebook)."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return None, "not a notebook: the file is not text"
    except json.JSONDecodeError as e:
        return None, f"not a notebook: not valid JSON (line {e.lineno}: {e.msg})"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or nb.get("nbformat") != 4:
        return None, "not a notebook: valid JSON, but no nbformat 4 notebook (no 'cells' list or nbformat != 4)"
    return nb, ""


def lesson_of(nb: dict, path: Path, root: Path) -> str:
    """The lesson a notebook was built from: named in its student-build header, else in its file name; "" if none."""
    lessons = {p.stem for p in (root / "notebooks").glob("[0-9]*.ipynb")}
    for cell in nb["cells"][:3]:
        m = BUILT_FROM.search("".join(cell.get("source", "")))
        if m and m["lesson"] in lessons:
            return m["lesson"]
    m = LESSON_IN_NAME.search(path.name)
    matches = sorted(lesson for lesson in lessons if m and lesson.startswith(m["nn"] + "_"))
    return matches[0] if len(matches) == 1 else ""


def expected_exercises(nb: dict, lesson: str, root: Path) -> list:
    """(name, points) of the lesson's exercises; for an unknown lesson, those whose checks the notebook calls."""
    if lesson:
        src = json.loads((root / "notebooks" / f"{lesson}.ipynb").read_text(encoding="utf-8"))
        return [(e.name, points(e.difficulty)) for e in exercises_of(src, lesson)]
    from .checks import CHECKS  # the check's marker is not at hand: its points are unknown (0)

    names = []
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            for line in "".join(cell.get("source", "")).split("\n"):
                m = CHECK_CALL.match(line)
                if m and m["name"] in CHECKS and m["name"] not in names:
                    names.append(m["name"])
    return [(name, 0) for name in names]


def run_notebook(nb: dict, work: Path, timeout: float) -> Run:
    """Execute nb headless in the folder work (smoke profile, errors allowed) within timeout seconds."""
    work.mkdir(parents=True)
    (work / "submission.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    verdicts = work / "verdicts.jsonl"
    env = dict(os.environ, PICOLLM_PROFILE="smoke", PICOLLM_VERDICTS=str(verdicts), PICOLLM_GRADED="0",
               PICOLLM_FIGURES=str(work / "figures"), PICOLLM_RESULTS=str(work / "results"), MPLBACKEND="Agg")
    # the kit's kernel whatever kernel the student's notebook names (a kernel of their own machine is not here)
    cmd = [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "--allow-errors",
           "--ExecutePreprocessor.timeout=-1", "--ExecutePreprocessor.kernel_name=python3",
           "--output", "executed.ipynb", "submission.ipynb"]
    start = time.perf_counter()
    # its own process group, killed on a timeout; the kernel (a session of its own) exits with its parent,
    # nbconvert (ipykernel polls for that)
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        problem = "" if proc.returncode == 0 else "failed to run"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        problem = "timed out"
    seconds = time.perf_counter() - start
    found = [json.loads(line) for line in verdicts.read_text(encoding="utf-8").splitlines()] \
        if verdicts.exists() else []
    detail = ""
    if problem == "timed out":
        detail = f"timed out after {timeout:g} s (the time limit per notebook)"
    elif problem:
        last = [line for line in (out or "").splitlines() if line.strip()]
        detail = "failed to run: " + (last[-1].strip() if last else f"exit status {proc.returncode}")
    return Run(found, seconds, problem, detail)


def grade_one(student: str, path: Path, folder: Path, work: Path, timeout: float, root: Path) -> list[Row]:
    name = str(path.relative_to(folder))
    nb, why = read_notebook(path)
    if nb is None:
        return [Row(student, name, "", NOTEBOOK_ROW, "failed", "not a notebook", 0, 0, why, 0.0)]
    lesson = lesson_of(nb, path, root)
    expected = expected_exercises(nb, lesson, root)
    run = run_notebook(nb, work, timeout)
    seconds = round(run.seconds, 1)
    first = {}  # each exercise's first verdict: its check cell, right after it (a later call does not count)
    for v in run.verdicts:
        first.setdefault(v["name"], v)
    rows = []
    for exercise, pts in expected + [(n, 0) for n in first if n not in dict(expected)]:
        v = first.get(exercise)
        if v is None:
            why = run.detail or "the notebook ended before this exercise's check ran (its check call was removed?)"
            rows.append(Row(student, name, lesson, exercise, "failed", "not reached", 0, pts, why, seconds))
        else:
            ok = v["status"] == "passed"
            rows.append(Row(student, name, lesson, exercise, "passed" if ok else "failed", v["status"],
                            pts if ok else 0, pts, v["message"].split("\n")[0], seconds))
    if run.problem:
        rows.append(Row(student, name, lesson, NOTEBOOK_ROW, "failed", run.problem, 0, 0, run.detail, seconds))
    if not expected and not first and not run.problem:
        rows.append(Row(student, name, lesson, NOTEBOOK_ROW, "failed", "no exercises", 0, 0,
                        "ran, but no exercise check was found in it (is it a lesson of the kit?)", seconds))
    return rows


def grade(folder: Path, out: Path, timeout: float = 300.0, root: Path | None = None, log=print) -> list[Row]:
    """Grade every file under folder into the CSV file out; returns the rows."""
    root = Path(root or repo_root())
    found = submissions(folder)
    rows = []
    with tempfile.TemporaryDirectory(prefix="picollm-grade-") as tmp:
        for i, (student, path) in enumerate(found):
            log(f"[{i + 1}/{len(found)}] {student}: {path.relative_to(folder)}")
            rows += grade_one(student, path, folder, Path(tmp) / str(i), timeout, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m picollm_helpers.grade",
                                 description="Run every collected student notebook (smoke profile, time limit) and "
                                             "write grades.csv: one row per student and exercise.")
    ap.add_argument("submissions", type=Path, help="the folder of collected notebooks")
    ap.add_argument("--out", type=Path, default=Path("grades.csv"), help="the CSV file to write (grades.csv)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per notebook before it is stopped (300)")
    args = ap.parse_args(argv)
    if not args.submissions.is_dir():
        print(f"error: {args.submissions} is not a folder: give the folder holding the collected notebooks, "
              "e.g. make grade SUBMISSIONS=collected/", file=sys.stderr)
        return 2
    if args.submissions.resolve() in args.out.resolve().parents:
        print(f"error: {args.out} is inside {args.submissions}: the next run would grade it as a hand-in; write it "
              "elsewhere (--out / GRADES=)", file=sys.stderr)
        return 2
    rows = grade(args.submissions, args.out, args.timeout)
    students = sorted({r.student for r in rows})
    print(f"wrote {args.out}: {len(rows)} rows for {len(students)} students")
    for s in students:
        mine = [r for r in rows if r.student == s and r.exercise != NOTEBOOK_ROW]
        notes = [r.status for r in rows if r.student == s and r.exercise == NOTEBOOK_ROW]
        print(f"  {s}: {sum(r.points for r in mine)} of {sum(r.out_of for r in mine)} points, "
              f"{sum(r.result == 'passed' for r in mine)} of {len(mine)} exercises passed"
              + (f" ({', '.join(notes)})" if notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
