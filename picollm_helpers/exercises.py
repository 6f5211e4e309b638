"""The student build: notebooks/NN_*.ipynb (the solutions) -> exercises/NN_*.ipynb.

Inside a lesson's code cell, a marked region is what the student writes:

    def rms_norm(x, weight, eps):
        \"\"\"...\"\"\"
        # EXERCISE rms_norm (difficulty 1, 5 min): scale each vector to root-mean-square 1, then by the weight
        # HINT: the mean of the squares is over the last dimension only; eps goes inside the square root
        ms = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(ms + eps) * weight
        # END EXERCISE

The marker line states the goal (what the code must do, not how), the difficulty (1-3) and the
expected minutes; the `# HINT:` lines right after it (one or more) are the hint, which the
solution notebook shows as comments. The build keeps the marker line and replaces the rest of the
region by `raise NotImplementedError(<goal>)`; everything around it (the signature, the docstring,
the check in the next cell) stays. Right after the exercise's code cell it adds a markdown cell
with two collapsed blocks, ARENA style: the hint, and the solution (the region's code without its
hint lines). All outputs are cleared, `# NBVAL_CHECK_OUTPUT` markers dropped, and a cell listing
the lesson's exercises is added under the title. The build is deterministic: `make exercises`
rewrites the committed student notebooks byte for byte, and `python -m picollm_helpers.exercises
--check` fails when they are out of date.

The same markers make the instructor's nbgrader course, instructor/nbgrader/source/NN_x/NN_x.ipynb:
each region becomes a solution region (`### BEGIN SOLUTION` / `### END SOLUTION` after the marker
and its hint lines, in a cell with nbgrader's solution metadata), and each check call
`name = check_name(name)` becomes an autograded test cell of its own, worth the exercise's points
(its difficulty), that runs the check strict: a failing check fails the cell, and the lesson goes on
with the kit's implementation. The build also writes the table of every lesson's exercises, points
and minutes into instructor/README.md, between its two table markers.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .config import repo_root
from .errors import PicoLLMError
from .files import write_text

BEGIN = re.compile(r"^(?P<indent>\s*)# EXERCISE (?P<name>[a-z_][a-z0-9_]*) "
                   r"\(difficulty (?P<difficulty>[123]), (?P<minutes>\d+) min\): (?P<goal>\S.*)$")
END = re.compile(r"^\s*# END EXERCISE\s*$")
HINT = re.compile(r"^\s*# HINT:(?P<text>.*)$")
CHECK_OUTPUT = re.compile(r"^\s*# NBVAL_CHECK_OUTPUT\s*$")
CHECK_CALL = re.compile(r"^(?P<target>[A-Za-z_]\w*) = check_(?P<name>[a-z_][a-z0-9_]*)\((?P<arg>[A-Za-z_]\w*)"
                        r"(?P<kwargs>(, *[a-z_]+=[^,()]+)*)\)\s*(#.*)?$")
NBGRADER_SCHEMA = 3
TABLE_BEGIN = "<!-- exercises table: written by make exercises from the lessons' markers; do not edit by hand -->"
TABLE_END = "<!-- end of the exercises table -->"


def points(difficulty: int) -> int:
    """An exercise's points in the nbgrader course: its difficulty (1-3)."""
    return difficulty


@dataclass(frozen=True)
class Exercise:
    name: str
    difficulty: int
    minutes: int
    goal: str  # the marker's text: what the code must do
    hint: str  # the # HINT: lines, joined into one paragraph
    solution: str  # the region's code without its hint lines, dedented
    cell: int  # index of the code cell in the solution notebook


def _source(cell) -> list[str]:
    src = cell["source"]
    return (src if isinstance(src, str) else "".join(src)).split("\n")


def stub_cell(lines: list[str], where: str) -> tuple[list[str], list[Exercise]]:
    """Replace each marked region of one cell's lines by its stub: (new lines, the exercises)."""
    out, found, i = [], [], 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        if lines[i].lstrip().startswith("# EXERCISE") and not m:
            raise PicoLLMError(f"{where}: malformed exercise marker {lines[i].strip()!r}: write "
                               "'# EXERCISE name (difficulty 1-3, N min): the goal, in words'")
        if END.match(lines[i]):
            raise PicoLLMError(f"{where}: '# END EXERCISE' without an opening '# EXERCISE' marker")
        if HINT.match(lines[i]):
            raise PicoLLMError(f"{where}: a '# HINT:' line outside an exercise: put it right after the marker")
        if not m:
            out.append(lines[i])
            i += 1
            continue
        j = next((j for j in range(i + 1, len(lines)) if END.match(lines[j])), None)
        if j is None:
            raise PicoLLMError(f"{where}: exercise {m['name']!r} has no '# END EXERCISE' line")
        body = lines[i + 1:j]
        if any(BEGIN.match(line) for line in body):
            raise PicoLLMError(f"{where}: exercise {m['name']!r} contains another exercise marker")
        n_hint = next((k for k, line in enumerate(body) if not HINT.match(line)), len(body))
        if n_hint == 0:
            raise PicoLLMError(f"{where}: exercise {m['name']!r} has no hint: write '# HINT: ...' lines right "
                               "after its marker")
        if any(HINT.match(line) for line in body[n_hint:]):
            raise PicoLLMError(f"{where}: exercise {m['name']!r} has a '# HINT:' line after its code: the hint "
                               "lines go right after the marker")
        hint = " ".join(HINT.match(line)["text"].strip() for line in body[:n_hint])
        solution = textwrap.dedent("\n".join(body[n_hint:])).strip("\n")
        if not solution.strip():
            raise PicoLLMError(f"{where}: exercise {m['name']!r} has no code between its hint and '# END EXERCISE'")
        ex = Exercise(m["name"], int(m["difficulty"]), int(m["minutes"]), m["goal"], hint, solution, -1)
        found.append(ex)
        out.append(lines[i])
        out.append(f"{m['indent']}raise NotImplementedError({('exercise ' + ex.name + ': ' + ex.goal)!r})")
        i = j + 1
    return out, found


def _join(lines: list[str]) -> list[str]:
    """Lines back into nbformat's list of strings (each but the last ending in a newline)."""
    text = "\n".join(lines)
    return [line + "\n" for line in text.split("\n")[:-1]] + [text.split("\n")[-1]] if text else []


def exercises_of(nb: dict, where: str = "notebook") -> list[Exercise]:
    """The exercises marked in a solution notebook, in order."""
    found = []
    for n, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            _, exs = stub_cell(_source(cell), f"{where}, cell {n}")
            found += [Exercise(e.name, e.difficulty, e.minutes, e.goal, e.hint, e.solution, n) for e in exs]
    return found


def help_cell(exs: list[Exercise]) -> dict:
    """The markdown cell after an exercise's code cell: its hint and its solution, each collapsed."""
    parts = []
    for ex in exs:
        label = f" (`{ex.name}`)" if len(exs) > 1 else ""
        parts.append(f"<details><summary>Hint{label}</summary>\n\n{ex.hint}\n\n</details>\n\n"
                     f"<details><summary>Solution{label}</summary>\n\n```python\n{ex.solution}\n```\n\n</details>")
    return {"cell_type": "markdown", "id": f"{exs[0].name.replace('_', '-')}-help", "metadata": {},
            "source": _join("\n\n".join(parts).split("\n"))}


def _header(lesson: str, exs: list[Exercise]) -> dict:
    rows = "\n".join(f"| `{e.name}` | {'*' * e.difficulty} ({e.difficulty}/3) | {e.minutes} | {e.goal} |" for e in exs)
    total = sum(e.minutes for e in exs)
    text = (
        "**Student version.** This notebook is built from `notebooks/" + lesson + "` by `make exercises`. "
        "Each exercise is a marked region in a code cell (`# EXERCISE name ...: its goal`) that raises "
        "`NotImplementedError`: replace that line with your code. Under the cell, **Hint** and **Solution** "
        "open when you click them; try without them first. The check in the cell after runs your code on the "
        "kit's cases and says either that they passed or which case failed, with the input, the expected and "
        "the received values and where they first differ. Passing means your code agrees with the kit's on "
        "those cases, not that it is right in every case. Until an exercise passes, the lesson goes on with "
        "the kit's own implementation, so *Run All* always reaches the end and you can do the exercises in "
        "any order.\n\n"
        f"| exercise | difficulty | minutes | goal |\n|---|---|---|---|\n{rows}\n\n"
        f"About {total} minutes of exercises in all."
        if exs else
        "**Student version.** This notebook is built from `notebooks/" + lesson + "` by `make exercises`; "
        "this lesson has no exercises yet, so it is the lesson itself with its outputs cleared."
    )
    return {"cell_type": "markdown", "id": "student-version", "metadata": {}, "source": _join(text.split("\n"))}


def build_notebook(nb: dict, lesson: str) -> dict:
    """The student notebook of one solution notebook (a new dict; nb is not changed)."""
    cells = []
    for n, cell in enumerate(nb["cells"]):
        new = {k: v for k, v in cell.items() if k not in ("outputs", "execution_count")}
        new["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k not in ("execution", "scrolled")}
        exs = []
        if cell["cell_type"] == "code":
            lines, exs = stub_cell(_source(cell), f"{lesson}, cell {n}")
            new["source"] = _join([line for line in lines if not CHECK_OUTPUT.match(line)])
            new["outputs"], new["execution_count"] = [], None
        cells.append(new)
        if exs:
            cells.append(help_cell(exs))
    exs = exercises_of(nb, lesson)
    cells.insert(1 if cells and cells[0]["cell_type"] == "markdown" else 0, _header(lesson, exs))
    meta = {k: v for k, v in nb.get("metadata", {}).items() if k not in ("widgets",)}
    return {"cells": cells, "metadata": meta, "nbformat": nb["nbformat"], "nbformat_minor": nb["nbformat_minor"]}


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


# The nbgrader course ---------------------------------------------------------------------------------

def _nbgrader_meta(grade_id: str, *, solution=False, grade=False, locked=False, pts=None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": NBGRADER_SCHEMA,
            "solution": solution, "task": False}
    if pts is not None:
        meta["points"] = pts
    return {"nbgrader": meta}


def solution_cell(lines: list[str], where: str) -> tuple[list[str], list[Exercise]]:
    """One cell's marked regions in nbgrader's form: the marker and its hint lines stay (the student sees
    them), the code goes between `### BEGIN SOLUTION` and `### END SOLUTION` at the marker's indent."""
    _, found = stub_cell(lines, where)  # the same validation and the same exercises as the student build
    out, indent, in_hint = [], None, False
    for line in lines:
        m = BEGIN.match(line)
        if m:
            out.append(line)
            indent, in_hint = m["indent"], True
        elif indent is not None and in_hint and HINT.match(line):
            out.append(line)
        elif indent is not None and END.match(line):
            out.append(f"{indent}### END SOLUTION")
            indent = None
        else:
            if indent is not None and in_hint:
                out.append(f"{indent}### BEGIN SOLUTION")
                in_hint = False
            out.append(line)
    return out, found


def graded_cell(target: str, name: str, arg: str, pts: int, cell_id: str, kwargs: str = "") -> dict:
    """The autograded test cell of one exercise: its check (with the lesson's keyword arguments, if any), strict."""
    text = (f"# Graded: {pts} point{'s' * (pts != 1)}. A failing check fails this cell; the lesson goes on with the "
            "kit's version.\n"
            "from picollm_helpers.checks import CheckFailed\n\n"
            "try:\n"
            f"    {target} = check_{name}({arg}{kwargs}, strict=True)\n"
            "except CheckFailed as failed:\n"
            f"    {target} = failed.fallback\n"
            "    raise")
    return {"cell_type": "code", "execution_count": None, "id": cell_id,
            "metadata": _nbgrader_meta(f"check_{name}", grade=True, locked=True, pts=pts),
            "outputs": [], "source": _join(text.split("\n"))}


def _nbgrader_header(lesson: str, exs: list[Exercise]) -> dict:
    rows = "\n".join(f"| `{e.name}` | {points(e.difficulty)} | {e.minutes} | {e.goal} |" for e in exs)
    text = (
        "**Graded version.** This notebook is built from `notebooks/" + lesson + "` for nbgrader by "
        "`make exercises`. Write each exercise's code in place of `raise NotImplementedError()` under its "
        "marker and hint. The cell after each exercise is graded: it runs the kit's check on your code and "
        "fails when the check fails. Whatever happens there, the lesson goes on (with the kit's version of "
        "an exercise that failed), so the later exercises are graded on their own.\n\n"
        f"| exercise | points | minutes | goal |\n|---|---|---|---|\n{rows}\n\n"
        f"{sum(points(e.difficulty) for e in exs)} points, about {sum(e.minutes for e in exs)} minutes."
    )
    return {"cell_type": "markdown", "id": "graded-version", "metadata": {}, "source": _join(text.split("\n"))}


def build_nbgrader(nb: dict, lesson: str) -> dict:
    """The nbgrader source notebook of one solution notebook (a new dict; nb is not changed)."""
    exs = {e.name: e for e in exercises_of(nb, lesson)}
    cells, graded = [], set()
    for n, cell in enumerate(nb["cells"]):
        new = {k: v for k, v in cell.items() if k not in ("outputs", "execution_count")}
        new["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k not in ("execution", "scrolled")}
        if cell["cell_type"] != "code":
            cells.append(new)
            continue
        new["outputs"], new["execution_count"] = [], None
        lines, found = solution_cell(_source(cell), f"{lesson}, cell {n}")
        lines = [line for line in lines if not CHECK_OUTPUT.match(line)]
        pieces, rest = [], []
        for line in lines:  # each exercise's (first) check call becomes its own graded cell, in place
            m = CHECK_CALL.match(line)
            if m and m["name"] in exs and m["name"] not in graded:
                graded.add(m["name"])
                pieces += [rest, m]
                rest = []
            else:
                rest.append(line)
        pieces.append(rest)
        k = 0
        for piece in pieces:
            if isinstance(piece, re.Match):
                e = exs[piece["name"]]
                cells.append(graded_cell(piece["target"], e.name, piece["arg"], points(e.difficulty),
                                         f"check-{e.name.replace('_', '-')}", piece["kwargs"] or ""))
                if nb.get("nbformat_minor", 0) < 5:  # cell ids came with nbformat 4.5
                    del cells[-1]["id"]
                continue
            while piece and not piece[0].strip():
                piece = piece[1:]
            if not piece:
                continue
            part = {**new, "source": _join(piece), "metadata": dict(new["metadata"])}
            if "id" in new and k:
                part["id"] = f"{new['id']}-{k}"
            if found and any("### BEGIN SOLUTION" in line for line in piece):  # the regions' part of the cell
                grade_id = "solution_" + "_".join(e.name for e in found) + (f"_{k}" if k else "")
                part["metadata"].update(_nbgrader_meta(grade_id, solution=True))
            cells.append(part)
            k += 1
    missing = sorted(set(exs) - graded)
    if missing:
        raise PicoLLMError(f"{lesson}: no line `x = check_NAME(x)` calls the check of {', '.join(missing)}: the "
                           "nbgrader course makes each such line a graded cell, so write the check call on a line of "
                           "its own, assigning what it returns (keyword arguments such as quiet=True may follow x)")
    header = _nbgrader_header(lesson, list(exs.values()))
    cells.insert(1 if cells and cells[0]["cell_type"] == "markdown" else 0, header)
    meta = {k: v for k, v in nb.get("metadata", {}).items() if k not in ("widgets",)}
    return {"cells": cells, "metadata": meta, "nbformat": nb["nbformat"], "nbformat_minor": nb["nbformat_minor"]}


def exercises_table(lessons: dict[str, list[Exercise]]) -> str:
    """instructor/README.md's table: per lesson, its exercises, points and minutes (from the markers)."""
    rows = ["| lesson | exercises | points | minutes |", "|---|---|---|---|"]
    for lesson, exs in lessons.items():
        names = ", ".join(f"`{e.name}` ({points(e.difficulty)})" for e in exs) or "none yet"
        pts, minutes = sum(points(e.difficulty) for e in exs), sum(e.minutes for e in exs)
        rows.append(f"| {lesson} | {names} | {pts} | {minutes} |")
    total = [e for exs in lessons.values() for e in exs]
    rows.append(f"| all | {len(total)} exercises | {sum(points(e.difficulty) for e in total)} | "
                f"{sum(e.minutes for e in total)} |")
    return "\n".join(rows)


def _with_table(readme: str, table: str, where: Path) -> str:
    if TABLE_BEGIN not in readme or TABLE_END not in readme:
        raise PicoLLMError(f"{where}: the exercises table's markers are missing; put the two lines\n{TABLE_BEGIN}\n"
                           f"{TABLE_END}\nwhere the table goes")
    head, rest = readme.split(TABLE_BEGIN, 1)
    return head + TABLE_BEGIN + "\n" + table + "\n" + TABLE_END + rest.split(TABLE_END, 1)[1]


def answer(nb: dict, code: dict[str, str]) -> dict:
    """A copy of a handed-out notebook (the student build or nbgrader's release) with the stub of each exercise
    named in `code` replaced by that code, indented at its marker: what a student who wrote it hands in."""
    out = copy.deepcopy(nb)
    done = set()
    for cell in out["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines, new, i = _source(cell), [], 0
        while i < len(lines):
            m = BEGIN.match(lines[i])
            new.append(lines[i])
            i += 1
            if not m or m["name"] not in code:
                continue
            while i < len(lines) and HINT.match(lines[i]):
                new.append(lines[i])
                i += 1
            if i < len(lines) and lines[i].strip() == "# YOUR CODE HERE":  # nbgrader's stub is two lines
                i += 1
            if i >= len(lines) or not lines[i].strip().startswith("raise NotImplementedError"):
                raise PicoLLMError(f"exercise {m['name']}: no stub (raise NotImplementedError) under its marker")
            new += [m["indent"] + line if line.strip() else "" for line in code[m["name"]].split("\n")]
            done.add(m["name"])
            i += 1
        cell["source"] = _join(new)
    if set(code) - done:
        raise PicoLLMError(f"no exercise marker for {sorted(set(code) - done)} in this notebook")
    return out


def _write_if_changed(dest: Path, text: str, check: bool, changed: list[Path]) -> None:
    if dest.exists() and dest.read_text(encoding="utf-8") == text:
        return
    changed.append(dest)
    if not check:
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_text(dest, text)


def build(root: Path | None = None, check: bool = False) -> list[Path]:
    """Write exercises/NN_*.ipynb and instructor/nbgrader/source/NN_*/NN_*.ipynb for every notebooks/NN_*.ipynb,
    and the exercises table of instructor/README.md; with check=True write nothing and return the files that are
    missing or differ from a fresh build."""
    root = Path(root or repo_root())
    changed, lessons = [], {}
    for src in sorted((root / "notebooks").glob("[0-9]*.ipynb")):
        nb = json.loads(src.read_text(encoding="utf-8"))
        lessons[src.stem] = exercises_of(nb, src.name)
        _write_if_changed(root / "exercises" / src.name, _dump(build_notebook(nb, src.name)), check, changed)
        if lessons[src.stem]:
            _write_if_changed(root / "instructor" / "nbgrader" / "source" / src.stem / src.name,
                              _dump(build_nbgrader(nb, src.name)), check, changed)
    readme = root / "instructor" / "README.md"
    if readme.exists():
        text = readme.read_text(encoding="utf-8")
        _write_if_changed(readme, _with_table(text, exercises_table(lessons), readme), check, changed)
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m picollm_helpers.exercises",
                                 description="Build the student notebooks exercises/NN_*.ipynb and the nbgrader course "
                                             "instructor/nbgrader/source/ from notebooks/.")
    ap.add_argument("--check", action="store_true", help="write nothing; fail if a student notebook is out of date")
    args = ap.parse_args(argv)
    try:
        changed = build(check=args.check)
    except PicoLLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rel = [str(p.relative_to(repo_root())) for p in changed]
    if args.check:
        if rel:
            print("out of date (run `make exercises`): " + ", ".join(rel), file=sys.stderr)
            return 1
        print("exercises/ and instructor/ are up to date")
        return 0
    print("wrote " + ", ".join(rel) if rel else "exercises/ and instructor/ were already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
