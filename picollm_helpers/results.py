"""Each lesson's claims, their verdicts and the numbers behind them: `results/NN_<lesson>.json`.

A lesson never states a result in prose that a cell did not compute. The cell that computes it
records it here, next to what the pico-llm report says, with a verdict (reproduced, refuted, not
distinguishable at this budget, not tested), the number of seeds and the decision rule it used:

    results = LessonResults("04_transformer")          # top of the lesson: starts its wall clock
    results.data("TinyStories", stories)                # a Corpus (its .source line) or a string
    results.claim("R4", "The KV cache gives the same tokens, faster.",
                  measured={"speedup": speedup, "max_abs_diff": diff},
                  verdict="reproduced", seeds=3, rule="speedup > 1 and diff < 1e-5")
    results.save()                                      # last cell: records the lesson's run time

Every call writes the file (atomically), so a lesson that stops halfway still leaves what it
measured. Re-running a cell replaces its claim (by id) instead of adding a second one.
`record_result(lesson, claim_id, ...)` does the same for one claim from anywhere.

`python -m picollm_helpers.results` (`make report`) renders every results file into one table,
`results/REPORT.md`. The folder is `<repo>/results`, or `$PICOLLM_RESULTS` (the notebook tests
point it at a temporary folder, so a smoke run never overwrites the committed laptop results).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

from .config import current_profile, repo_root
from .files import write_text

VERDICTS = ("reproduced", "refuted", "not distinguishable at this budget", "not tested")
LESSON_RE = re.compile(r"^\d{2}_[A-Za-z0-9_]+$")
REPORT_NAME = "REPORT.md"


def results_dir() -> Path:
    """Where results files go: $PICOLLM_RESULTS or <repo>/results (created on first write)."""
    return Path(os.environ.get("PICOLLM_RESULTS") or repo_root() / "results")


# ----------------------------------------------------------------------------------------------
# Validation and conversion to JSON

def _check_lesson(lesson) -> str:
    if not isinstance(lesson, str) or not LESSON_RE.match(lesson):
        raise ValueError(f"lesson {lesson!r} must look like NN_name, for example '04_transformer' "
                         f"(the notebook's file name without .ipynb).")
    return lesson


def _check_verdict(verdict) -> str:
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of the allowed verdicts: "
                         f"{', '.join(repr(v) for v in VERDICTS)}.")
    return verdict


def _check_seeds(seeds, verdict: str) -> int | None:
    if seeds is None and verdict == "not tested":
        return None
    if hasattr(seeds, "item") and not isinstance(seeds, int):  # a numpy or torch integer
        seeds = seeds.item()
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be a positive int: how many seeds the verdict rests "
                         f"on (only a 'not tested' claim may leave it out).")
    return seeds


def _check_text(name: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}={value!r} must be a non-empty string.")
    return value


def to_json(value, where: str = "value", notes: list[str] | None = None):
    """`value` as plain JSON: numpy/torch scalars become Python numbers, arrays and tensors lists,
    tuples lists; NaN and infinities become None (with a line added to `notes`, if given)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        if notes is not None:
            notes.append(f"{where} was {value}; stored as null")
        return None
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} must be a string (JSON object keys are strings).")
            out[key] = to_json(item, f"{where}.{key}", notes)
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(item, f"{where}[{i}]", notes) for i, item in enumerate(value)]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors (moved off the device)
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return to_json(value.tolist(), where, notes)
    raise TypeError(f"{where}={value!r} ({type(value).__name__}) cannot be stored in a results file; "
                    f"use numbers, strings, bools, lists or dicts of them.")


# ----------------------------------------------------------------------------------------------
# One lesson's results

_open: dict[str, "LessonResults"] = {}  # the lessons started in this process, so that record_result
                                        # and a lesson's own object never overwrite each other


def _make_claim(id, report_says, measured=None, verdict="not tested", seeds=None, rule=None,
                notes=()) -> dict:
    """One claim record, checked and converted to plain JSON."""
    _check_text("id", id)
    _check_text("report_says", report_says)
    _check_verdict(verdict)
    if measured is not None and not isinstance(measured, dict):
        raise TypeError(f"measured must be a dict of name -> value, not {type(measured).__name__}.")
    notes = list(notes)
    record = {"id": id, "report_says": report_says,
              "measured": to_json(measured or {}, "measured", notes),
              "verdict": verdict, "seeds": _check_seeds(seeds, verdict)}
    if rule is not None:
        record["rule"] = _check_text("rule", rule)
    if notes:
        record["notes"] = notes
    return record


class LessonResults:
    """One lesson's results file, built up as the lesson runs. See the module docstring."""

    def __init__(self, lesson: str):
        import torch

        self.lesson = _check_lesson(lesson)
        self.path = results_dir() / f"{lesson}.json"
        self.profile = current_profile()
        self.sources: dict[str, str] = {}
        self.claims: list[dict] = []
        self.metrics: dict = {}
        self.torch = torch.__version__
        self.threads = torch.get_num_threads()
        self.wall_time_s: float | None = None
        self.time_s: dict[str, float] = {}
        self._t0: float | None = time.perf_counter()  # the lesson's wall clock starts here
        from .timing import phase_totals

        self._phases0 = phase_totals()                 # and its train/evaluate/generate/plot clocks
        _open[lesson] = self

    # -- recording: each call writes the file ------------------------------------------------

    def data(self, name: str, source) -> None:
        """Record which data the lesson used: `source` is a Corpus or TokenDataset (its .source
        line) or a string."""
        _check_text("name", name)
        line = source if isinstance(source, str) else getattr(source, "source", None)
        self.sources[name] = _check_text(f"source of {name!r}", line)
        self.save()

    def claim(self, id: str, report_says: str, measured: dict | None = None, verdict: str = "not tested",
              seeds: int | None = None, rule: str | None = None) -> None:
        """Add claim `id`, or replace the one with that id, and write the file.

        `report_says`: what the pico-llm report (or the lesson) states. `measured`: the numbers
        this run computed (numpy/torch scalars and tensors are converted; NaN and inf are stored
        as null, with a note). `verdict`: one of VERDICTS. `seeds`: how many seeds the verdict
        rests on, required unless the verdict is 'not tested'. `rule`: the decision rule, in words.
        """
        self._put(_make_claim(id, report_says, measured, verdict, seeds, rule))
        self.save()

    def metric(self, name: str, value) -> None:
        """Record one headline number (or a list/dict of them; NaN is stored as null) and write the file."""
        _check_text("name", name)
        self.metrics[name] = to_json(value, f"metrics.{name}")
        self.save()

    def _put(self, record: dict) -> None:
        for i, old in enumerate(self.claims):
            if old["id"] == record["id"]:
                self.claims[i] = record
                return
        self.claims.append(record)

    # -- the file ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"lesson": self.lesson, "profile": self.profile, "data": dict(self.sources),
                "wall_time_s": self.wall_time_s, "time_s": dict(self.time_s), "torch": self.torch,
                "threads": self.threads,
                "claims": [dict(c) for c in self.claims], "metrics": dict(self.metrics)}

    def save(self) -> Path:
        """Write the file atomically, with the lesson's wall time up to now; return its path."""
        if self._t0 is not None:
            from .timing import phase_totals

            self.wall_time_s = round(time.perf_counter() - self._t0, 3)
            spent = {k: v - self._phases0[k] for k, v in phase_totals().items()}
            self.time_s = {**{k: round(v, 3) for k, v in spent.items()},
                           "other": round(max(0.0, self.wall_time_s - sum(spent.values())), 3)}
        return write_text(self.path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path) -> "LessonResults":
        """Read a results file back, each claim checked as `claim` checks a new one. Its clock is stopped."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable results file ({e}).") from None
        if not isinstance(raw, dict) or raw.get("lesson") != path.stem:
            raise ValueError(f"{path}: a results file holds a JSON object whose 'lesson' is its "
                             f"file name without .json ({path.stem!r}).")
        self = cls.__new__(cls)
        self.lesson, self.path = _check_lesson(raw["lesson"]), path
        self.profile = raw.get("profile")
        self.sources = dict(raw.get("data") or {})
        self.claims, self.metrics = [], dict(raw.get("metrics") or {})
        self.torch, self.threads = raw.get("torch"), raw.get("threads")
        self.wall_time_s, self._t0 = raw.get("wall_time_s"), None
        self.time_s = dict(raw.get("time_s") or {})
        try:
            for c in raw.get("claims") or []:
                self._put(_make_claim(c.get("id"), c.get("report_says"), c.get("measured"),
                                      c.get("verdict"), c.get("seeds"), c.get("rule"), c.get("notes") or ()))
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: {e}") from None
        return self

    def __repr__(self) -> str:
        # Relative to the repository where it lies there: a saved notebook names no machine's folders.
        path = self.path.relative_to(repo_root()) if self.path.is_relative_to(repo_root()) else self.path
        return f"LessonResults({self.lesson!r}: {len(self.claims)} claim(s), profile {self.profile}; {path})"

    def _repr_markdown_(self) -> str:
        return claims_table([self])


def record_result(lesson: str, claim_id: str, report_says: str, measured: dict | None = None,
                  verdict: str = "not tested", seeds: int | None = None, rule: str | None = None) -> Path:
    """Record one claim of `lesson` and write its file; return the path.

    It goes to the lesson's LessonResults if one was started in this process; else into the
    lesson's file, when that holds results of the current profile; else into a new file.
    """
    _check_lesson(lesson)
    results = _open.get(lesson)
    if results is None:
        path = results_dir() / f"{lesson}.json"
        results = LessonResults.load(path) if path.exists() else None
        if results is None or results.profile != current_profile():
            if results is not None:
                print(f"{path}: held {results.profile}-profile results; starting it afresh "
                      f"for the {current_profile()} profile.")
            results = LessonResults(lesson)
            results._t0 = None  # not started at the top of the lesson: its run time is unknown
            del _open[lesson]
    results.claim(claim_id, report_says, measured=measured, verdict=verdict, seeds=seeds, rule=rule)
    return results.path


# ----------------------------------------------------------------------------------------------
# The report

def _cell(text) -> str:
    """Text safe inside one Markdown table cell."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|")
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def _fmt(value) -> str:
    """A measured value, compactly: floats to 4 significant figures, ints exact."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _fmt_seconds(s) -> str:
    if s is None:
        return "not measured"
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(round(s), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _natural(text: str):
    """Sort key that puts R2 before R10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def claims_table(lessons: list[LessonResults]) -> str:
    """One Markdown table: a row per claim, lessons in name order, claims in id order."""
    rows = ["| lesson | claim | the report says | this run measured | verdict | seeds | profile | data |",
            "|---|---|---|---|---|---|---|---|"]
    for r in sorted(lessons, key=lambda r: r.lesson):
        data = "; ".join(line if line.startswith(name) else f"{name}: {line}"  # lines often start
                         for name, line in sorted(r.sources.items())) or "-"      # with their name
        for c in sorted(r.claims, key=lambda c: _natural(c["id"])):
            measured = ", ".join(f"{k}={_fmt(v)}" for k, v in c["measured"].items()) or "-"
            if c.get("notes"):
                measured += " (" + "; ".join(c["notes"]) + ")"
            says = c["report_says"] + (f" (rule: {c['rule']})" if c.get("rule") else "")
            cells = [r.lesson, c["id"], says, measured, c["verdict"],
                     "-" if c["seeds"] is None else c["seeds"], r.profile, data]
            rows.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return "\n".join(rows) + "\n"


def render_report(lessons: list[LessonResults]) -> str:
    """REPORT.md's text for these lessons' results (deterministic: sorted, no dates)."""
    out = ["# pico-llm: what the lessons measured", "",
           "Generated by `make report` (`python -m picollm_helpers.results`) from `results/NN_*.json`, "
           "which each lesson writes as it runs; do not edit by hand.", "",
           "Each row is one claim: what the pico-llm report (or the lesson) states, the numbers this "
           "run computed, and the verdict the lesson's own decision rule gave. **reproduced**: the "
           "run agrees with the statement. **refuted**: the run contradicts it. **not "
           "distinguishable at this budget**: the difference is smaller than the spread over "
           "seeds (or the run was too short to tell), so the run supports neither side. **not "
           "tested**: the lesson states the claim but did not measure it in this profile. "
           "Verdicts hold for the profile, data and seeds shown; a `smoke` run is too short for "
           "most of them to mean anything.", ""]
    if not lessons:
        out += ["No results yet: run the lessons (`make run`) and then `make report`.", ""]
        return "\n".join(out)
    out += ["## Claims", "", claims_table(lessons), "## Runs", "",
            "Where each lesson's time went: `train()` (its evaluations and samples excluded), `evaluate()`, "
            "`generate()`, rendering figures, and everything else (the lesson's own code).", "",
            minutes_table(lessons)]
    return "\n".join(out)


PHASE_COLUMNS = (("train", "training"), ("evaluate", "evaluating"), ("generate", "generating"),
                 ("plot", "plotting"), ("other", "other"))


def minutes_table(lessons: list[LessonResults]) -> str:
    """One Markdown table: a row per lesson with its wall time and where it went (results' time_s)."""
    rows = ["| lesson | profile | wall time | " + " | ".join(label for _, label in PHASE_COLUMNS)
            + " | torch | threads |", "|---|---|---|" + "---|" * len(PHASE_COLUMNS) + "---|---|"]
    for r in sorted(lessons, key=lambda r: r.lesson):
        t = r.time_s or {}
        cells = [r.lesson, r.profile, _fmt_seconds(r.wall_time_s),
                 *(_fmt_seconds(t.get(k)) if t.get(k) is not None else "-" for k, _ in PHASE_COLUMNS),
                 r.torch, r.threads]
        rows.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return "\n".join(rows) + "\n"


README_BEGIN, README_END = "<!-- minutes:begin", "<!-- minutes:end -->"


def readme_minutes(lessons: list[LessonResults]) -> str:
    """The README's block between its minutes markers: the table and the total wall time."""
    total = sum(r.wall_time_s or 0 for r in lessons)
    return (f"{README_BEGIN} (written by `make report` from results/NN_*.json after a sequential `make run`) -->\n"
            + minutes_table(lessons)
            + f"\nAll {len(lessons)} lessons in sequence: {round(total / 60)} minutes.\n{README_END}")


def update_readme(readme: Path, lessons: list[LessonResults]) -> str:
    """Rewrite the README's minutes block from laptop-profile results; returns what was done."""
    if not lessons or any(r.profile != "laptop" for r in lessons):
        return f"{readme.name}: its table shows the laptop profile; left as is (these results are not all laptop)"
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return f"{readme.name}: no minutes markers ({README_BEGIN} ... {README_END}); left as is"
    new = text[:start] + readme_minutes(lessons) + text[end + len(README_END):]
    if new == text:
        return f"{readme.name}: its minutes table is up to date"
    write_text(readme, new)
    return f"{readme.name}: minutes table rewritten"


def write_report(folder=None) -> Path:
    """Render every NN_*.json in `folder` (default: results_dir()) into its REPORT.md; return the path."""
    folder = Path(folder) if folder is not None else results_dir()
    lessons = [LessonResults.load(p) for p in sorted(folder.glob("[0-9][0-9]_*.json"))]
    return write_text(folder / REPORT_NAME, render_report(lessons))


def main() -> None:
    path = write_report()
    lessons = [LessonResults.load(p) for p in sorted(path.parent.glob("[0-9][0-9]_*.json"))]
    n = len(lessons)
    print(f"{path}: {n} lesson results file{'s' if n != 1 else ''}" + ("" if n else " (no results yet)"))
    if path.parent.resolve() == (repo_root() / "results").resolve() and (repo_root() / "README.md").is_file():
        print(update_readme(repo_root() / "README.md", lessons))  # the kit's own results: its README's table


if __name__ == "__main__":
    main()
