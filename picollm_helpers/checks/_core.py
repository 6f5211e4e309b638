"""The machinery behind every exercise check: cases, comparison, one readable verdict.

A `Check` runs a student's implementation and the kit's reference on the same cases (small
hand-made ones first, then random ones from a fixed seed) and compares what they return. Calling
the check prints one verdict and hands back the implementation the lesson goes on with: the
student's when it passed, the kit's reference otherwise (an exercise not done yet never stops a
lesson). `Check.run(fn)` returns the `Verdict` without printing, for tests.

Graded mode is explicit: `check_x(fn, strict=True)`, or PICOLLM_GRADED=1 in the kernel's
environment, makes a failing check raise `CheckFailed` (an AssertionError, so an autograder counts
the cell as failed). The error carries the fallback, so a graded cell can still hand the lesson the
kit's implementation (the nbgrader course's test cells do). PICOLLM_VERDICTS=<file> appends every
verdict to that file as one JSON line (`python -m picollm_helpers.grade` reads them).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

STATUSES = ("passed", "failed", "raised", "not implemented")
GRADED_ENV = "PICOLLM_GRADED"  # 1: every check runs strict (a failure raises)
VERDICTS_ENV = "PICOLLM_VERDICTS"  # a file: every verdict is appended to it as one JSON line


def graded_mode() -> bool:
    """True when PICOLLM_GRADED asks every check to be strict (1, true, yes)."""
    return os.environ.get(GRADED_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass
class Case:
    """One input. build() makes fresh arguments for every call (so an implementation that writes
    into its inputs cannot change what the next one sees): a tuple of positional arguments, or
    (args, kwargs)."""

    label: str
    build: Callable[[], Any]

    def arguments(self):
        made = self.build()
        if isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], dict) and isinstance(made[0], tuple):
            return made
        return (made if isinstance(made, tuple) else (made,)), {}


@dataclass
class Verdict:
    name: str
    status: str  # one of STATUSES
    n_cases: int  # cases run (all of them when passed)
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __str__(self) -> str:
        return self.message


class Mismatch(Exception):
    """Raised by a comparison: what differs, in words."""


class CheckFailed(AssertionError):
    """A strict check's failure: its message is the verdict's; `fallback` is what the lesson would go on
    with (the kit's reference), so a graded cell can keep the rest of the notebook running."""

    def __init__(self, verdict: Verdict, fallback):
        super().__init__(verdict.message)
        self.verdict, self.fallback = verdict, fallback


def describe(x, limit: int = 12) -> str:
    """A short description of a value: a tensor's shape and dtype (and its values when small)."""
    if isinstance(x, torch.Tensor):
        shape = tuple(x.shape)
        text = f"tensor of shape {shape}, {str(x.dtype).replace('torch.', '')}"
        if x.numel() <= limit:
            text += f": {x.detach().cpu().tolist()}"
        return text
    if isinstance(x, torch.nn.Module):
        n = sum(p.numel() for p in x.parameters())
        return f"{type(x).__name__} ({n} parameters)"
    if isinstance(x, list):
        return "a list [" + ", ".join(describe(v, limit) for v in x) + "]"
    if isinstance(x, tuple):
        return "(" + ", ".join(describe(v, limit) for v in x) + ")"
    if isinstance(x, float):
        return f"{x:.6g}"
    return repr(x)


def _position(flat_index: int, shape) -> tuple:
    """A flat (row-major) index as a position in shape, e.g. 7 in (2, 5) -> (1, 2)."""
    pos = []
    for size in reversed(tuple(shape)):
        pos.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(pos))


def _entry(x: float) -> str:
    # 10 significant digits: enough to see a float32 rounding next to the float64 value
    return f"{x:.10g}" if math.isfinite(x) else str(x)


def compare_values(expected, got, atol: float, rtol: float, where: str = "the result") -> None:
    """Raise Mismatch, in words, when got differs from expected beyond the tolerance.

    Tensors must have the same shape and dtype; -inf and +inf must sit at the same places; the
    finite entries must agree within atol + rtol * |expected|. The message says how many entries
    differ, the first position (row-major) where they do with both values there, and the largest
    difference. Tuples and lists compare item by item.
    """
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise Mismatch(f"{where} should be a {str(expected.dtype).replace('torch.', '')} tensor of shape "
                           f"{tuple(expected.shape)}, got {describe(got)}")
        if got.shape != expected.shape:
            raise Mismatch(f"{where} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
        if got.dtype != expected.dtype:
            raise Mismatch(f"{where} has dtype {str(got.dtype).replace('torch.', '')}, "
                           f"expected {str(expected.dtype).replace('torch.', '')}")
        e, g = expected.detach().double().cpu().flatten(), got.detach().double().cpu().flatten()
        if expected.dtype.is_floating_point:
            inf_e, inf_g, nan_e, nan_g = torch.isinf(e), torch.isinf(g), torch.isnan(e), torch.isnan(g)
            fin = ~inf_e & ~inf_g & ~nan_e & ~nan_g
            diff = torch.where(fin, (e - g).abs(), torch.zeros_like(e))
            bad = (inf_e != inf_g) | (inf_e & inf_g & (e != g)) | (nan_g & ~nan_e) | (diff > atol + rtol * e.abs())
            tolerance = f" beyond the tolerance {atol:g} + {rtol:g} x |expected|" if atol or rtol else ""
        else:
            bad, diff, tolerance = e != g, (e - g).abs(), ""
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            text = (f"{where}: {int(bad.sum())} of {e.numel()} entries differ{tolerance}; the first at position "
                    f"{_position(i, expected.shape)}: expected {_entry(float(e[i]))}, got {_entry(float(g[i]))}")
            n_inf = int((torch.isinf(e) != torch.isinf(g)).sum()) if expected.dtype.is_floating_point else 0
            if n_inf:
                text += (f"; {n_inf} entries are infinite in one and not in the other (expected "
                         f"{int(torch.isinf(e).sum())} infinite entries, got {int(torch.isinf(g).sum())})")
            if expected.dtype.is_floating_point and bool(torch.isnan(g).any()):
                text += f"; yours has {int(torch.isnan(g).sum())} NaN entries"
            if float(diff.max()) > 0:
                text += f"; largest finite difference {float(diff.max()):.3g}"
            raise Mismatch(text)
        return
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            raise Mismatch(f"{where} should be a sequence of {len(expected)} items, got {describe(got)}")
        for i, (e, g) in enumerate(zip(expected, got)):
            compare_values(e, g, atol, rtol, f"{where}[{i}]")
        return
    if isinstance(expected, float) or isinstance(got, float):
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            raise Mismatch(f"{where} should be a number, got {describe(got)}")
        if not math.isclose(float(got), float(expected), rel_tol=rtol, abs_tol=atol):
            raise Mismatch(f"{where} is {got:.6g}, expected {expected:.6g}: a difference of "
                           f"{abs(float(got) - float(expected)):.3g} (tolerance {atol:g} + {rtol:g} x |expected|)")
        return
    if got != expected:
        raise Mismatch(f"{where} is {describe(got)}, expected {describe(expected)}")


def _student_frame(exc: BaseException) -> str:
    """'line N' of the innermost frame outside the kit, where the student's code raised."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "picollm_helpers" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at line {f.lineno}: {f.line.strip()})" if f.line else f" (at line {f.lineno})"


@dataclass
class Check:
    """One exercise's check.

    name: the exercise (as in its `# EXERCISE name` marker); reference: the kit's implementation;
    cases: a function returning the list of Cases; observe(impl, *args, **kwargs): what is compared
    (default: impl(*args, **kwargs)); used: what the lesson goes on with after a failure, in words.
    kit_names: the kit's public names whose code is this exercise's answer: a lesson must not
    import them or show their source before the check (tests/test_exercises.py holds it to that).

    A failure says which case, the input, the expected and the received value and where they first
    differ, never the recipe again: the recipe is the exercise's hint, in the notebook.
    """

    name: str
    reference: Callable
    cases: Callable[[], list]
    observe: Callable | None = None
    atol: float = 1e-5
    rtol: float = 1e-4
    used: str = "the kit's reference implementation"
    kit_names: tuple = ()
    _cases: list = field(default=None, repr=False)

    def _observe(self, impl, args, kwargs):
        if self.observe is not None:
            return self.observe(impl, *args, **kwargs)
        return impl(*args, **kwargs)

    def run(self, fn) -> Verdict:
        if self._cases is None:
            self._cases = self.cases()
        for n, case in enumerate(self._cases):
            args, kwargs = case.arguments()
            shown = ", ".join([describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()])
            expected = self._observe(self.reference, *copy.deepcopy((args, kwargs)))
            try:
                got = self._observe(fn, args, kwargs)
            except Mismatch as m:
                return Verdict(self.name, "failed", n + 1, f"{self.name}: failed case {n + 1} of "
                               f"{len(self._cases)}: {case.label}\n  {m}")
            except NotImplementedError:
                return Verdict(self.name, "not implemented", n,
                               f"{self.name}: not implemented yet (the stub still raises NotImplementedError)")
            except Exception as e:  # the student's own error, reported as such
                return Verdict(self.name, "raised", n + 1,
                               f"{self.name}: your function raised {type(e).__name__}: {e}{_student_frame(e)}\n"
                               f"  case: {case.label}\n  input: {shown}")
            try:
                compare_values(expected, got, self.atol, self.rtol)
            except Mismatch as m:
                return Verdict(self.name, "failed", n + 1,
                               f"{self.name}: failed case {n + 1} of {len(self._cases)}: {case.label}\n"
                               f"  input: {shown}\n  expected: {describe(expected)}\n  received: {describe(got)}\n"
                               f"  {m}")
        return Verdict(self.name, "passed", len(self._cases),
                       f"{self.name}: the kit's checks passed ({len(self._cases)} cases)")

    def __call__(self, fn, quiet: bool = False, strict: bool | None = None):
        """Check fn, print the verdict, and return what the lesson should use next: fn when it passed,
        the kit's reference otherwise. strict=True (default: PICOLLM_GRADED set) raises CheckFailed
        instead of going on with the reference, for graded cells."""
        start = time.perf_counter()
        v = self.run(fn)
        _record(v, time.perf_counter() - start)
        if v.passed:
            if not quiet:
                print(f"\u2713 {v.message}")
            return fn
        if strict if strict is not None else graded_mode():
            raise CheckFailed(v, self.reference)
        if not quiet:
            print(f"\u2717 {v.message}\n  The lesson continues with {self.used}.")
        return self.reference


def _record(v: Verdict, seconds: float) -> None:
    """Append the verdict to $PICOLLM_VERDICTS (one JSON line), when it names a file."""
    path = os.environ.get(VERDICTS_ENV, "").strip()
    if path:
        line = {"name": v.name, "status": v.status, "n_cases": v.n_cases, "message": v.message,
                "seconds": round(seconds, 3)}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
