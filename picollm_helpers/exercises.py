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
"""

from __future__ import annotations

import argparse
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


def build(root: Path | None = None, check: bool = False) -> list[Path]:
    """Write exercises/NN_*.ipynb for every notebooks/NN_*.ipynb; with check=True write nothing and
    return the student notebooks that are missing or differ from a fresh build."""
    root = Path(root or repo_root())
    out_dir = root / "exercises"
    changed = []
    for src in sorted((root / "notebooks").glob("[0-9]*.ipynb")):
        nb = json.loads(src.read_text(encoding="utf-8"))
        text = _dump(build_notebook(nb, src.name))
        dest = out_dir / src.name
        if dest.exists() and dest.read_text(encoding="utf-8") == text:
            continue
        changed.append(dest)
        if not check:
            out_dir.mkdir(exist_ok=True)
            write_text(dest, text)
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m picollm_helpers.exercises",
                                 description="Build the student notebooks exercises/NN_*.ipynb from notebooks/.")
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
        print("exercises/ is up to date")
        return 0
    print("wrote " + ", ".join(rel) if rel else "exercises/ was already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
