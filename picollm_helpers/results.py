"""Each lesson's claims, their verdicts and the numbers behind them: `results/NN_<lesson>.json`.

A lesson never states a result in prose that a cell did not compute. The cell that computes it
hands the numbers to a decision rule (`picollm_helpers.evidence`) and records what the rule
returned, next to what the pico-llm report says:

    results = LessonResults("04_transformer")          # top of the lesson: starts its wall clock
    results.data("TinyStories", stories)                # a Corpus (its .source line) or a string
    ev = evidence.compare({"cached": cached, "plain": plain}, expect=["cached", "plain"])
    results.claim("R4", "The KV cache gives the same tokens, faster.", ev, kind="report")
    results.save()                                      # last cell: records the lesson's run time

The record keeps the rule's whole result: verdict, reason code, key number, threshold, margin,
seeds, sentence, what would tell, knife edge and the rule's name. `kind` sorts the claim into the
report card's three sections ("report": the pico-llm report's claims, "lesson": the lesson's own,
"control": positive controls); `summary` is the claim in at most 15 words, for the report card's
one-line rows (it defaults to `report_says` when that is short enough).

Lessons written before the decision rules call `claim(id, report_says, measured=..., verdict=...,
seeds=..., rule=...)` with the verdict decided in the lesson; that still works, and their files
still load, until each lesson is converted. Their old verdict "not distinguishable at this
budget" becomes "not distinguishable" with the reason "unstated" (recorded before the decision
rules), and their kind is inferred from the id: "control..." a positive control, "R-..." or
"Q..." a report claim, anything else the lesson's own.

Every call writes the file (atomically), so a lesson that stops halfway still leaves what it
measured. Re-running a cell replaces its claim (by id) instead of adding a second one. A file also
records the machine it ran on (`cpu_info()`), so run times can be read against it.
`record_result(lesson, claim_id, ...)` does the same for one claim from anywhere.

`python -m picollm_helpers.results` (`make report`) renders every results file into
`results/REPORT.md` (verdict counts, a one-line row per claim in three sections, then each
claim's details and the lessons' run times) and draws `results/report_card.png`. The folder is
`<repo>/results`, or `$PICOLLM_RESULTS` (the notebook tests point it at a temporary folder, so a
smoke run never overwrites the committed laptop results).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import time
from pathlib import Path

from .config import current_profile, repo_root
from .evidence import NOT_DISTINGUISHABLE, NOT_TESTED, VERDICTS, WHY_UNDECIDED, Evidence
from .files import write_bytes, write_text

OLD_UNDECIDED = "not distinguishable at this budget"   # the verdict string before the decision rules
UNSTATED = "unstated"                                  # its reason code: the lesson gave none
REASONS = {**WHY_UNDECIDED, UNSTATED: "unstated (recorded before the decision rules)"}
KINDS = {"report": "The pico-llm report's claims", "lesson": "The lessons' own claims",
         "control": "Positive controls"}
SUMMARY_WORDS = 15
CPU_LIMITS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
LESSON_RE = re.compile(r"^\d{2}_[A-Za-z0-9_]+$")
REPORT_NAME = "REPORT.md"
CARD_NAME = "report_card.png"


def results_dir() -> Path:
    """Where results files go: $PICOLLM_RESULTS or <repo>/results (created on first write)."""
    return Path(os.environ.get("PICOLLM_RESULTS") or repo_root() / "results")


# ----------------------------------------------------------------------------------------------
# The machine: run times mean little without it

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=2).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_info() -> dict:
    """The CPU this process runs on: its model name, the vector instructions PyTorch's CPU kernels
    use (`torch.backends.cpu.get_cpu_capability()`, e.g. AVX512, AVX2, NO AVX), and the limits set
    on them in the environment (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA).

    The same lesson takes minutes longer on a CPU without AVX-512 (or with it switched off), so
    a results file's run times are only read together with this.
    """
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch < 2.1
        capability = None
    return {"model": _cpu_model(), "capability": capability,
            "limits": {k: os.environ[k] for k in CPU_LIMITS if os.environ.get(k)}}


def _cpu_cell(cpu) -> str:
    """'AMD EPYC (AVX512)', 'Intel Xeon Platinum 8480+ (AVX512; ATEN_CPU_CAPABILITY=avx2)'."""
    if not cpu:
        return "not recorded"
    model = re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|@ *[\d.]+ *GHz|\d+-Core Processor", "", cpu.get("model") or "?")
    model = re.sub(r"\s+", " ", model).strip() or "?"
    extra = [cpu["capability"]] if cpu.get("capability") else []
    extra += [f"{k}={v}" for k, v in sorted((cpu.get("limits") or {}).items())]
    return model + (f" ({'; '.join(extra)})" if extra else "")


# ----------------------------------------------------------------------------------------------
# Validation and conversion to JSON

def _check_lesson(lesson) -> str:
    if not isinstance(lesson, str) or not LESSON_RE.match(lesson):
        raise ValueError(f"lesson {lesson!r} must look like NN_name, for example '04_transformer' "
                         f"(the notebook's file name without .ipynb).")
    return lesson


def _check_verdict(verdict) -> str:
    if verdict not in VERDICTS and verdict != OLD_UNDECIDED:
        raise ValueError(f"verdict {verdict!r} is not one of the allowed verdicts: "
                         f"{', '.join(repr(v) for v in VERDICTS)}.")
    return verdict


def _check_seeds(seeds, verdict: str, required: bool = True) -> int | None:
    if seeds is None and (verdict == NOT_TESTED or not required):
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


def _check_reason(verdict: str, reason, id) -> str | None:
    """A 'not distinguishable' verdict always says why: a WHY_UNDECIDED code (or 'unstated', for
    the claims recorded before the decision rules)."""
    if verdict == NOT_DISTINGUISHABLE:
        if reason not in REASONS:
            raise ValueError(f"claim {id!r}: a 'not distinguishable' verdict needs reason= one of "
                             f"{', '.join(repr(r) for r in REASONS)}, not {reason!r} (or record "
                             f"an Evidence from a rule in picollm_helpers.evidence, which carries it).")
        return reason
    return None if reason is None else _check_text("reason", reason)


def infer_kind(id: str) -> str:
    """The kind of a claim recorded without one: 'control...' -> control, 'R-...' or 'Q...' ->
    report, anything else -> lesson (the lessons' id conventions before `kind` existed)."""
    if id.startswith("control"):
        return "control"
    return "report" if id.startswith(("R-", "Q")) else "lesson"


def _check_kind(kind, id: str) -> str:
    if kind is None:
        return infer_kind(id)
    if kind not in KINDS:
        raise ValueError(f"claim {id!r}: kind={kind!r} is not one of {', '.join(repr(k) for k in KINDS)} "
                         f"(the pico-llm report's claim, the lesson's own, a positive control).")
    return kind


def _words(text: str) -> int:
    return len(text.split())


def _check_summary(summary, report_says: str, id: str, required: bool) -> str | None:
    """The claim in at most SUMMARY_WORDS words; report_says itself when it is that short."""
    if summary is None:
        if _words(report_says) <= SUMMARY_WORDS:
            return report_says
        if not required:
            return None  # a claim recorded the old way: the report shows its first words
        raise ValueError(f"claim {id!r}: report_says has {_words(report_says)} words; pass summary='...', "
                         f"the claim in at most {SUMMARY_WORDS} words, for the report card's one-line row.")
    _check_text("summary", summary)
    if _words(summary) > SUMMARY_WORDS or "\n" in summary:
        raise ValueError(f"claim {id!r}: summary={summary!r} has {_words(summary)} words; say the claim in "
                         f"at most {SUMMARY_WORDS} words on one line (the full statement goes in report_says).")
    return summary


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


def _is_evidence(value) -> bool:
    """An Evidence (duck-typed, so that one from a reloaded evidence module still counts)."""
    return isinstance(value, Evidence) or all(hasattr(value, a) for a in ("to_dict", "verdict", "sentence",
                                                                          "knife_edge", "threshold"))


# ----------------------------------------------------------------------------------------------
# One claim record

_open: dict[str, "LessonResults"] = {}  # the lessons started in this process, so that record_result
                                        # and a lesson's own object never overwrite each other


def _make_claim(id, report_says, measured=None, verdict="not tested", seeds=None, rule=None,
                notes=(), *, kind=None, summary=None, reason=None) -> dict:
    """One claim recorded the old way (the verdict decided in the lesson), checked, as plain JSON."""
    _check_text("id", id)
    _check_text("report_says", report_says)
    _check_verdict(verdict)
    if verdict == OLD_UNDECIDED:
        verdict, reason = NOT_DISTINGUISHABLE, reason or UNSTATED
    if measured is not None and not isinstance(measured, dict):
        raise TypeError(f"measured must be a dict of name -> value, not {type(measured).__name__}.")
    notes = list(notes)
    record = {"id": id, "kind": _check_kind(kind, id)}
    if summary is not None:  # else the report shows report_says, or its first words
        record["summary"] = _check_summary(summary, report_says, id, required=False)
    record.update({"report_says": report_says, "verdict": verdict})
    reason = _check_reason(verdict, reason, id)
    if reason is not None:
        record["reason"] = reason
    record["seeds"] = _check_seeds(seeds, verdict)
    record["measured"] = to_json(measured or {}, "measured", notes)
    if rule is not None:
        record["rule"] = _check_text("rule", rule)
    if notes:
        record["notes"] = notes
    return record


def _evidence_claim(id, report_says, ev, *, kind=None, summary=None, measured=None, notes=()) -> dict:
    """One claim decided by a rule: the rule's Evidence (ev.to_dict()) as a record, checked, as plain
    JSON. The rule's other numbers (its `details`) and any `measured` extras go under 'measured'."""
    _check_text("id", id)
    _check_text("report_says", report_says)
    if measured is not None and not isinstance(measured, dict):
        raise TypeError(f"measured must be a dict of name -> value, not {type(measured).__name__}.")
    e = ev.to_dict()
    _check_verdict(e["verdict"])
    clash = sorted(set(e.get("details") or {}) & set(measured or {}))
    if clash:
        raise ValueError(f"claim {id!r}: measured repeats the rule's own numbers {clash}; leave them out "
                         f"(the Evidence records them).")
    notes = list(notes)
    reason = _check_reason(e["verdict"], e["reason"], id)
    record = {"id": id, "kind": _check_kind(kind, id), "summary": _check_summary(summary, report_says, id, True),
              "report_says": report_says, "verdict": e["verdict"],
              "reason": _check_text("reason", reason),   # every rule says why, whatever its verdict
              "seeds": _check_seeds(e["seeds"], e["verdict"], required=False),
              "rule": _check_text("rule", e["rule"]), "key": _check_text("key", e["key"])}
    for name in ("value", "threshold", "margin"):
        record[name] = to_json(e[name], name, notes)
    record.update({"knife_edge": bool(e["knife_edge"]), "sentence": _check_text("sentence", e["sentence"]),
                   "would_tell": e["would_tell"] and _check_text("would_tell", e["would_tell"]),
                   "measured": to_json({**(e.get("details") or {}), **(measured or {})}, "measured", notes)})
    if notes:
        record["notes"] = notes
    return record


def _load_claim(c: dict) -> dict:
    """A stored record checked again; an Evidence record is rebuilt, so its knife edge is recomputed."""
    if not isinstance(c, dict):
        raise TypeError(f"a claim must be a JSON object, not {type(c).__name__}")
    extras = ("kind", "summary", "notes")
    if "sentence" in c:
        ev = Evidence(rule=c.get("rule"), verdict=c.get("verdict"), reason=c.get("reason"), key=c.get("key"),
                      value=c.get("value"), threshold=c.get("threshold"), margin=c.get("margin"),
                      seeds=c.get("seeds"), sentence=c.get("sentence"), would_tell=c.get("would_tell"),
                      details=c.get("measured") or {})
        return _evidence_claim(c.get("id"), c.get("report_says"), ev, notes=c.get("notes") or (),
                               **{k: c.get(k) for k in extras[:2]})
    return _make_claim(c.get("id"), c.get("report_says"), c.get("measured"), c.get("verdict"), c.get("seeds"),
                       c.get("rule"), c.get("notes") or (), kind=c.get("kind"), summary=c.get("summary"),
                       reason=c.get("reason"))


# ----------------------------------------------------------------------------------------------
# One lesson's results

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
        self.cpu: dict | None = cpu_info()
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

    def claim(self, id: str, report_says: str, evidence=None, *, kind: str | None = None,
              summary: str | None = None, measured: dict | None = None, verdict: str | None = None,
              seeds: int | None = None, rule: str | None = None, reason: str | None = None) -> None:
        """Add claim `id`, or replace the one with that id, and write the file.

        `report_says`: what the pico-llm report (or the lesson) states. `evidence`: what a decision
        rule returned (an `evidence.Evidence`); its verdict, reason, key number, threshold, margin,
        seeds, sentence and what would tell are recorded, its other numbers under 'measured'
        (`measured=` adds more). `kind`: "report", "lesson" or "control" (default: inferred from the
        id, see `infer_kind`). `summary`: the claim in at most 15 words (default: report_says, if
        it is that short).

        The way before the decision rules, still accepted: `measured` (a dict, also as the third
        argument; numpy/torch values converted, NaN and inf stored as null with a note), `verdict`
        (one of VERDICTS, or "not distinguishable at this budget"), `seeds` (required unless the
        verdict is 'not tested'), `rule` (the decision rule, in words), `reason` (required for
        'not distinguishable': a key of REASONS).
        """
        if _is_evidence(evidence):
            given = [n for n, v in (("verdict", verdict), ("seeds", seeds), ("rule", rule), ("reason", reason))
                     if v is not None]
            if given:
                raise TypeError(f"claim {id!r}: the Evidence carries the verdict, seeds, rule and reason; "
                                f"drop {', '.join(f'{n}=' for n in given)} (measured= may add numbers).")
            record = _evidence_claim(id, report_says, evidence, kind=kind, summary=summary, measured=measured)
        else:
            if evidence is not None:
                if not isinstance(evidence, dict):
                    raise TypeError(f"claim {id!r}: the third argument is an Evidence (what a rule in "
                                    f"picollm_helpers.evidence returns) or a dict of measured numbers, "
                                    f"not {type(evidence).__name__}.")
                if measured is not None:
                    raise TypeError(f"claim {id!r}: measured numbers given twice (third argument and measured=).")
                measured = evidence
            record = _make_claim(id, report_says, measured, NOT_TESTED if verdict is None else verdict, seeds,
                                 rule, kind=kind, summary=summary, reason=reason)
        self._put(record)
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
                "threads": self.threads, "cpu": self.cpu,
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
        """Read a results file back, each claim checked as `claim` checks a new one (a file written
        before the decision rules is read as the module docstring says). Its clock is stopped."""
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
        self.cpu = raw.get("cpu") if isinstance(raw.get("cpu"), dict) else None  # None: recorded before it was
        self.wall_time_s, self._t0 = raw.get("wall_time_s"), None
        self.time_s = dict(raw.get("time_s") or {})
        try:
            for c in raw.get("claims") or []:
                self._put(_load_claim(c))
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: {e}") from None
        return self

    def __repr__(self) -> str:
        # Relative to the repository where it lies there: a saved notebook names no machine's folders.
        path = self.path.relative_to(repo_root()) if self.path.is_relative_to(repo_root()) else self.path
        return f"LessonResults({self.lesson!r}: {len(self.claims)} claim(s), profile {self.profile}; {path})"

    def _repr_markdown_(self) -> str:
        return summary_table(self.claims, [self])


def record_result(lesson: str, claim_id: str, report_says: str, evidence=None, *, kind: str | None = None,
                  summary: str | None = None, measured: dict | None = None, verdict: str | None = None,
                  seeds: int | None = None, rule: str | None = None, reason: str | None = None) -> Path:
    """Record one claim of `lesson` (the arguments of `LessonResults.claim`) and write its file;
    return the path.

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
    results.claim(claim_id, report_says, evidence, kind=kind, summary=summary, measured=measured,
                  verdict=verdict, seeds=seeds, rule=rule, reason=reason)
    return results.path


# ----------------------------------------------------------------------------------------------
# The report: formatting

def _cell(text) -> str:
    """Text safe inside one Markdown table cell."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|")
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def _line(text) -> str:
    """Text on one Markdown line (a list item, a footnote)."""
    return re.sub(r"\s*(\r\n|\r|\n)\s*", " ", str(text))


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


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _brief(value, depth: int = 0) -> str:
    """A measured value in a line: long lists and dicts summarised ('36 records, first: {...}',
    '200 values: [1.2, 1.1, 1.05, …]'), nesting cut at three levels, floats to 4 figures."""
    if isinstance(value, str):
        return _clip(value, 60)
    if not isinstance(value, (list, dict)):
        return _fmt(value)
    if depth >= 3:
        return "[…]" if isinstance(value, list) else "{…}"
    if isinstance(value, dict):
        items = list(value.items())
        shown = items if len(items) <= 6 else items[:4]
        more = f", … {len(items)} entries" if len(shown) < len(items) else ""
        return "{" + ", ".join(f"{k}={_brief(v, depth + 1)}" for k, v in shown) + more + "}"
    n = len(value)
    if all(not isinstance(v, (list, dict)) for v in value):
        if n <= 8:
            return "[" + ", ".join(_brief(v, depth + 1) for v in value) + "]"
        return f"{n} values: [" + ", ".join(_brief(v, depth + 1) for v in value[:3]) + ", …]"
    if n <= 2:
        return "[" + ", ".join(_brief(v, depth + 1) for v in value) + "]"
    noun = "records" if all(isinstance(v, dict) for v in value) else "items"
    return f"{n} {noun}, first: {_brief(value[0], depth + 1)}"


def _measured_line(measured: dict, limit: int = 240) -> str:
    return "; ".join(f"{k}={_clip(_brief(v), limit)}" for k, v in measured.items()) or "-"


def _num(x) -> str:
    """A key number or threshold: 3 significant figures, ints exact."""
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, float):
        return str(x)
    return f"{x:.3g}"


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


def _summary(c: dict) -> str:
    """The claim in at most 15 words: its summary, else the first words of what it says."""
    if c.get("summary"):
        return c["summary"]
    words = c["report_says"].split()
    return c["report_says"] if len(words) <= SUMMARY_WORDS else " ".join(words[:SUMMARY_WORDS - 1]) + " …"


def _verdict(c: dict) -> str:
    return c["verdict"] + (f" ({c['reason']})" if c["verdict"] == NOT_DISTINGUISHABLE else "")


def _key_number(c: dict) -> str:
    """'gap 0.041 vs 0.029': the rule's key number against its threshold ('-' before the rules)."""
    if "key" not in c:
        return "-"
    return f"{c['key']} {_num(c.get('value'))} vs {_num(c.get('threshold'))}"


def _claims(lessons, kind=None) -> list[tuple]:
    """(lesson, claim) pairs in report order: lessons by name, claims by id (R2 before R10)."""
    return [(r, c) for r in sorted(lessons, key=lambda r: r.lesson)
            for c in sorted(r.claims, key=lambda c: _natural(c["id"])) if kind is None or c["kind"] == kind]


def _note(r) -> str:
    return f"[^{r.lesson}]"


def summary_table(claims, lessons=None, footnotes: bool = False) -> str:
    """One short Markdown row per claim: lesson, id, the claim in <= 15 words, verdict (with its
    reason), key number vs threshold, seeds, knife edge. `claims`: (lesson, claim) pairs, or one
    lesson's claim records with `lessons=[that lesson]`."""
    if lessons is not None and len(lessons) == 1 and claims and isinstance(claims[0], dict):
        claims = [(lessons[0], c) for c in sorted(claims, key=lambda c: _natural(c["id"]))]
    rows = ["| lesson | id | claim | verdict | key number vs threshold | seeds | edge |",
            "|---|---|---|---|---|---|---|"]
    noted = set()
    for r, c in claims:
        lesson = r.lesson + (_note(r) if footnotes and r.lesson not in noted else "")
        noted.add(r.lesson)
        cells = [lesson, c["id"], _summary(c), _verdict(c), _key_number(c),
                 "-" if c["seeds"] is None else c["seeds"], "⚠" if c.get("knife_edge") else ""]
        rows.append("| " + " | ".join(_cell(x) if i else x for i, x in enumerate(cells)) + " |")
    return "\n".join(rows) + "\n"


def claims_table(lessons) -> str:
    """Every claim of these lessons, one short row each (see summary_table)."""
    return summary_table(_claims(lessons))


def verdict_counts(lessons) -> dict:
    """{kind: {verdict: n, 'knife edge': n, 'all': n}} with an 'all' kind, every key present."""
    out = {}
    for kind in (*KINDS, "all"):
        cs = [c for _, c in _claims(lessons, None if kind == "all" else kind)]
        out[kind] = {**{v: sum(c["verdict"] == v for c in cs) for v in VERDICTS},
                     "knife edge": sum(bool(c.get("knife_edge")) for c in cs), "all": len(cs)}
    return out


def _counts_sentence(lessons) -> str:
    n = verdict_counts(lessons)["all"]
    edges = n["knife edge"]
    return (f"{n['all']} claims: " + ", ".join(f"{n[v]} {v}" for v in VERDICTS)
            + f"; {edges} on a knife edge")


def counts_table(lessons) -> str:
    counts = verdict_counts(lessons)
    rows = ["| claims | " + " | ".join(VERDICTS) + " | knife edge | all |", "|---" * (len(VERDICTS) + 3) + "|"]
    for kind, label in (*KINDS.items(), ("all", "All")):
        row = counts[kind]
        if kind != "all" and not row["all"]:
            continue
        cells = [label if kind != "all" else "**All**", *(row[v] for v in VERDICTS), row["knife edge"],
                 row["all"]]
        rows.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(rows) + "\n"


def claim_details(r, c) -> str:
    """One claim in a few short lines: what it says, what the run found, the numbers."""
    head = f"**{c['id']}** ({c['kind']}): **{_verdict(c)}**"
    if c["seeds"] is not None:
        head += f", {c['seeds']} seed{'s' if c['seeds'] != 1 else ''}"
    if c.get("knife_edge"):
        head += ", ⚠ knife edge"
    lines = [head + ".", f"- Says: {_line(c['report_says'])}"]
    if c.get("sentence"):
        lines.append(f"- Found: {_line(c['sentence'])}")
    if c.get("key"):
        margin = c.get("margin")
        lines.append(f"- Key number: {_key_number(c)}" + (f", margin {margin:+.3g}" if isinstance(margin, float)
                                                          else f", margin {margin}" if margin is not None else "")
                     + f" (rule `{c['rule']}`)")
    elif c.get("rule"):
        lines.append(f"- Rule: {_line(c['rule'])}")
    if c["verdict"] == NOT_DISTINGUISHABLE:
        lines.append(f"- Why undecided: {REASONS[c['reason']]}")
    if c.get("would_tell"):
        lines.append(f"- What would tell: {_line(c['would_tell'])}")
    if c["measured"]:
        lines.append(f"- Measured: {_line(_measured_line(c['measured']))}")
    if c.get("notes"):
        lines.append(f"- Notes: {_line('; '.join(c['notes']))}")
    return "\n".join(lines) + "\n"


def lesson_footnote(r) -> str:
    """Where a lesson's numbers come from: its profile, machine and data, once per lesson."""
    data = "; ".join(line if line.startswith(name) else f"{name}: {line}"  # lines often start
                     for name, line in sorted(r.sources.items())) or "not recorded"  # with their name
    return _line(f"{_note(r)}: {r.lesson} ran in the {r.profile} profile (torch {r.torch}, {r.threads} threads, "
                 f"CPU {_cpu_cell(r.cpu)}). Data: {data}")


INTRO = ("**reproduced**: the run agrees with the statement. **refuted**: the run contradicts it. "
         "**not distinguishable**: the run supports neither side; the reason code says why "
         "(`unstated`: decided in the lesson before the decision rules, which gave no reason). "
         "**not tested**: stated but not measured in this profile. ⚠ **knife edge**: the key number "
         "lies within 10% of its threshold, so another seed could flip the verdict. Verdicts hold for "
         "the profile, data and seeds in each lesson's footnote; a `smoke` run is too short for most "
         "of them to mean anything.")


def render_report(lessons: list[LessonResults], card: bool = False) -> str:
    """REPORT.md's text for these lessons' results (deterministic: sorted, no dates).

    Summary first (verdict counts by kind, then one short row per claim in three sections), then
    each lesson's claims in detail, then the run times; the data each lesson used is a footnote.
    `card`: show report_card.png (written beside REPORT.md) under the title.
    """
    out = ["# pico-llm: what the lessons measured", "",
           "Generated by `make report` (`python -m picollm_helpers.results`) from `results/NN_*.json`, "
           "which each lesson writes as it runs; do not edit by hand.", ""]
    if not lessons:
        out += ["No results yet: run the lessons (`make run`) and then `make report`.", ""]
        return "\n".join(out)
    profiles = sorted({str(r.profile) for r in lessons})
    if card:
        out += [f"![Report card: each claim and its verdict]({CARD_NAME})", ""]
    out += [f"**{_counts_sentence(lessons)}**, from {len(lessons)} lesson{'s' if len(lessons) != 1 else ''} "
            f"({', '.join(profiles)} profile{'s' if len(profiles) != 1 else ''}).", "",
            counts_table(lessons), INTRO, "", "## Summary", ""]
    for kind, title in KINDS.items():
        pairs = _claims(lessons, kind)
        if pairs:
            out += [f"### {title}", "", summary_table(pairs, footnotes=True)]
    used = sorted({c["reason"] for _, c in _claims(lessons) if c["verdict"] == NOT_DISTINGUISHABLE})
    if used:
        out += ["Reason codes: " + "; ".join(f"`{code}`: {REASONS[code]}" for code in used) + ".", ""]
    out += ["## Details", ""]
    for r in sorted(lessons, key=lambda r: r.lesson):
        out += [f"### {r.lesson}{_note(r)}", ""]
        for _, c in _claims([r]):
            out += [claim_details(r, c)]
        if not r.claims:
            out += ["No claims recorded.", ""]
    out += ["## Runs", "",
            "Where each lesson's time went: `train()` (its evaluations and samples excluded), `evaluate()`, "
            "`generate()`, rendering figures, and everything else (the lesson's own code).", "",
            minutes_table(lessons), ""]
    out += [lesson_footnote(r) for r in sorted(lessons, key=lambda r: r.lesson)]
    return "\n".join(out) + "\n"


PHASE_COLUMNS = (("train", "training"), ("evaluate", "evaluating"), ("generate", "generating"),
                 ("plot", "plotting"), ("other", "other"))


def minutes_table(lessons: list[LessonResults]) -> str:
    """One Markdown table: a row per lesson with its wall time, where it went (results' time_s) and
    the machine (torch, threads, CPU with the instructions its kernels use)."""
    rows = ["| lesson | profile | wall time | " + " | ".join(label for _, label in PHASE_COLUMNS)
            + " | torch | threads | CPU |", "|---|---|---|" + "---|" * len(PHASE_COLUMNS) + "---|---|---|"]
    for r in sorted(lessons, key=lambda r: r.lesson):
        t = r.time_s or {}
        cells = [r.lesson, r.profile, _fmt_seconds(r.wall_time_s),
                 *(_fmt_seconds(t.get(k)) if t.get(k) is not None else "-" for k, _ in PHASE_COLUMNS),
                 r.torch, r.threads, _cpu_cell(r.cpu)]
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


# ----------------------------------------------------------------------------------------------
# The report card: every claim against its verdict, in one picture

VERDICT_COLOURS = {"reproduced": "#009E73", "refuted": "#D55E00",          # Okabe-Ito: safe for
                   "not distinguishable": "#E69F00", "not tested": "#999999"}  # colour-blind readers
KIND_MARKERS = {"report": ("o", "the pico-llm report's claim"), "lesson": ("s", "the lesson's own claim"),
                "control": ("D", "positive control")}


def _fit(ax, renderer, x, y, text, max_px, **kw):
    """Draw `text` at (x, y), cut word by word (with '…') until it is at most max_px wide."""
    t = ax.text(x, y, text, **kw)
    words = text.split()
    while t.get_window_extent(renderer).width > max_px and len(words) > 1:
        words = words[:-1]
        t.set_text(" ".join(words).rstrip(",;:") + " …")
    return t


def report_card(lessons: list[LessonResults]):
    """A matplotlib Figure: one row per claim (grouped by lesson; report claims, the lesson's own,
    then controls), a marker in its verdict's column, coloured by verdict, shaped by kind; a ring
    marks a knife edge, a hollow marker a 'not distinguishable' recorded without a reason. The
    verdict counts are in the title. Labels are cut to fit, so nothing spills off the picture."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    order = {k: i for i, k in enumerate(KINDS)}
    groups = [(r, sorted(r.claims, key=lambda c: (order[c["kind"]], _natural(c["id"]))))
              for r in sorted(lessons, key=lambda r: r.lesson) if r.claims]
    n_rows = sum(1 + len(cs) for _, cs in groups)
    row_in, width_in, top_in, bottom_in = 0.26, 9.0, 1.15, 0.75
    height_in = top_in + max(n_rows, 1) * row_in + bottom_in
    fig = Figure(figsize=(width_in, height_in), dpi=110)
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    ax = fig.add_axes((0.0, bottom_in / height_in, 1.0, max(n_rows, 1) * row_in / height_in))
    ax.set_xlim(0, 1)
    ax.set_ylim(max(n_rows, 1) - 0.5, -0.5)  # row 0 at the top
    ax.axis("off")
    px_per_x = width_in * fig.dpi                 # axes span the figure's width: x in [0, 1]
    cols = {v: 0.655 + 0.1 * i for i, v in enumerate(VERDICTS)}
    palette = sns.color_palette("colorblind")     # only for the lesson bands' tint
    band = (*palette[7][:3], 0.12)
    fs = 9

    probe = [ax.text(0, 0, c["id"], fontsize=fs) for _, cs in groups for c in cs]
    id_px = max((t.get_window_extent(renderer).width for t in probe), default=0)
    for t in probe:
        t.remove()
    x_summary = 0.03 + (id_px + 24) / px_per_x   # one column of ids, one of summaries, for every lesson
    several = len({r.profile for r, _ in groups}) > 1
    y = 0
    for r, claims in groups:
        ax.axhspan(y - 0.5, y + 0.5, color=band, lw=0)
        ax.text(0.01, y, r.lesson + (f"  ({r.profile} profile)" if several else ""), fontsize=fs + 0.5,
                fontweight="bold", va="center")
        y += 1
        for c in claims:
            ax.axhline(y + 0.5, color="#e4e4e4", lw=0.6)
            for x in cols.values():
                ax.plot(x, y, ".", color="#d0d0d0", ms=3)
            marker = KIND_MARKERS[c["kind"]][0]
            colour = VERDICT_COLOURS[c["verdict"]]
            hollow = c["verdict"] == NOT_DISTINGUISHABLE and c.get("reason") == UNSTATED
            ax.plot(cols[c["verdict"]], y, marker, ms=7.5, mec=colour, mew=1.6,
                    mfc="white" if hollow else colour)
            if c.get("knife_edge"):
                ax.plot(cols[c["verdict"]], y, "o", ms=14, mfc="none", mec="black", mew=1.2)
            ax.text(0.03, y, c["id"], fontsize=fs, va="center")
            _fit(ax, renderer, x_summary, y, _summary(c), (cols[VERDICTS[0]] - 0.06 - x_summary) * px_per_x,
                 fontsize=fs, va="center", color="#333333")
            y += 1
    for v, x in cols.items():
        ax.text(x, -0.75, v.replace(" ", "\n", 1), ha="center", va="bottom", fontsize=fs, fontweight="bold",
                color=VERDICT_COLOURS[v])
    ax.set_ylim(max(n_rows, 1) - 0.5, -0.5)

    counts = verdict_counts(lessons)["all"]
    profiles = ", ".join(sorted({str(r.profile) for r in lessons})) or "no"
    fig.text(0.01, 1 - 0.18 / height_in, f"pico-llm course kit: each claim and its verdict ({profiles} profile)",
             fontsize=12, fontweight="bold", va="top")
    fig.text(0.01, 1 - 0.48 / height_in,
             f"{counts['all']} claims: " + " · ".join(f"{counts[v]} {v}" for v in VERDICTS)
             + f" · {counts['knife edge']} knife edge{'s' if counts['knife edge'] != 1 else ''}",
             fontsize=10, va="top")
    handles = [Line2D([], [], ls="", marker=m, ms=7, mfc="#666666", mec="#666666", label=label)
               for m, label in KIND_MARKERS.values()]
    if any(c.get("reason") == UNSTATED for _, cs in groups for c in cs):
        handles.append(Line2D([], [], ls="", marker="o", ms=7, mfc="white", mew=1.6,
                              mec=VERDICT_COLOURS[NOT_DISTINGUISHABLE], label="reason unstated (before the rules)"))
    handles.append(Line2D([], [], ls="", marker="o", ms=12, mfc="none", mec="black", mew=1.2,
                          label="knife edge (within 10% of threshold)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=fs, frameon=False,
               bbox_to_anchor=(0.5, 0.05 / height_in), columnspacing=1.2, handletextpad=0.3)
    return fig


def write_report_card(lessons: list[LessonResults], folder) -> Path:
    """Draw report_card(lessons) into folder/report_card.png (atomically); return its path."""
    import io

    fig = report_card(lessons)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15, facecolor="white")
    return write_bytes(Path(folder) / CARD_NAME, buf.getvalue())


def write_report(folder=None) -> Path:
    """Render every NN_*.json in `folder` (default: results_dir()) into its REPORT.md, and draw its
    report_card.png when there are claims; return REPORT.md's path."""
    folder = Path(folder) if folder is not None else results_dir()
    lessons = [LessonResults.load(p) for p in sorted(folder.glob("[0-9][0-9]_*.json"))]
    card = any(r.claims for r in lessons)
    if card:
        write_report_card(lessons, folder)
    return write_text(folder / REPORT_NAME, render_report(lessons, card=card))


def main() -> None:
    path = write_report()
    lessons = [LessonResults.load(p) for p in sorted(path.parent.glob("[0-9][0-9]_*.json"))]
    n = len(lessons)
    print(f"{path}: {n} lesson results file{'s' if n != 1 else ''}" + ("" if n else " (no results yet)"))
    if (path.parent / CARD_NAME).is_file() and n:
        print(f"{path.parent / CARD_NAME}: the report card")
    if path.parent.resolve() == (repo_root() / "results").resolve() and (repo_root() / "README.md").is_file():
        print(update_readme(repo_root() / "README.md", lessons))  # the kit's own results: its README's table


if __name__ == "__main__":
    main()
