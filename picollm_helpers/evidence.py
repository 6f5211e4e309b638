"""Decision rules: measured numbers in, a verdict with its reason and numbers out.

A lesson never decides a claim in its own cells. It measures, hands the numbers to one of the
rules below, and records what the rule returns:

    ev = evidence.compare({"pre-norm": pre_losses, "post-norm": post_losses}, expect=["pre-norm", "post-norm"])
    results.claim("Q7", "Pre-norm reaches a lower test loss than post-norm.", ev)

Every rule returns an `Evidence`: the verdict, a reason code, the key number and the threshold it
was held against, the margin between them, the seeds, one sentence a student can read, and, when
the run cannot decide, what would tell. A margin within 10% of its threshold is a knife edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

REPRODUCED, REFUTED, NOT_DISTINGUISHABLE, NOT_TESTED = (
    "reproduced", "refuted", "not distinguishable", "not tested")
VERDICTS = (REPRODUCED, REFUTED, NOT_DISTINGUISHABLE, NOT_TESTED)

# Why a run could not decide. Each "not distinguishable" carries one of these.
WHY_UNDECIDED = {
    "too-few-seeds": "too few seeds to estimate the spread",
    "inside-seed-spread": "the difference lies inside the spread over seeds",
    "still-changing": "the curve is still changing when the budget ends",
    "confounded": "another difference between the variants could explain the result",
    "measure-cannot-tell": "the measure cannot separate the two outcomes",
    "too-few-points": "too few points to fit a trend",
}

KNIFE_EDGE = 0.10   # a margin within 10% of the threshold's size


@dataclass(frozen=True)
class Evidence:
    """What a decision rule concluded, with the numbers it held against each other."""

    rule: str                  # the rule's name, e.g. "compare", "trend", "overfitting", "baseline"
    verdict: str               # one of VERDICTS
    reason: str                # a short code: why this verdict (for "not distinguishable", a WHY_UNDECIDED key)
    key: str                   # the name of the key number
    value: float | None        # the key number
    threshold: float | None    # what it was held against
    margin: float | None       # how far past the threshold, positive when the claim's side holds
    seeds: int | None          # how many seeds the verdict rests on
    sentence: str              # one sentence a student can read
    would_tell: str | None = None   # for "not distinguishable": a budget or a design that would decide
    details: dict = field(default_factory=dict)   # the rule's other numbers (means, intervals, per seed)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")
        if self.verdict == NOT_DISTINGUISHABLE and self.reason not in WHY_UNDECIDED:
            raise ValueError(f"a 'not distinguishable' verdict needs a reason code from "
                             f"{sorted(WHY_UNDECIDED)}, not {self.reason!r}")

    @property
    def knife_edge(self) -> bool:
        """True when the key number lies within 10% of its threshold (a verdict that could flip)."""
        if self.value is None or self.threshold is None or self.margin is None:
            return False
        scale = abs(self.threshold) if self.threshold != 0 else abs(self.value)
        return math.isfinite(self.margin) and abs(self.margin) <= KNIFE_EDGE * scale

    def to_dict(self) -> dict:
        return {"rule": self.rule, "verdict": self.verdict, "reason": self.reason, "key": self.key,
                "value": self.value, "threshold": self.threshold, "margin": self.margin,
                "seeds": self.seeds, "sentence": self.sentence, "would_tell": self.would_tell,
                "knife_edge": self.knife_edge, "details": self.details}

    def __str__(self) -> str:
        edge = " (knife edge)" if self.knife_edge else ""
        tell = f" What would tell: {self.would_tell}" if self.would_tell else ""
        return f"{self.verdict}{edge}: {self.sentence}{tell}"
