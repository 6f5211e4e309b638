"""Decision rules: measured numbers in, a verdict with its reason and numbers out.

A lesson never decides a claim in its own cells. It measures, hands the numbers to one of the
rules below, and records what the rule returns:

    ev = evidence.compare({"pre-norm": pre_losses, "post-norm": post_losses}, expect=["pre-norm", "post-norm"])
    results.claim("Q7", "Pre-norm reaches a lower test loss than post-norm.", ev)

Every rule returns an `Evidence`: the verdict, a reason code, the key number and the threshold it
was held against, the margin between them, the seeds, one sentence a student can read, and, when
the run cannot decide, what would tell. A margin within 10% of its threshold is a knife edge.

  compare       variants over seeds, in a claimed order (t-intervals of each adjacent pair's gap)
  at_least_as_good  one variant no worse than each other one by more than a tolerance (non-inferiority)
  trend         is a curve falling, flat or rising at the end (a line fit and its t-interval)
  overfitting   does the test loss rise from its best epoch, beyond the run's own noise
  baseline      does a score beat an untrained or null baseline by more than its spread and a floor
  threshold     one number against a bar with a meaning (max abs difference < 1e-5, speedup > 1)
  not_tested    the claim is stated but not measured in this profile

A decided verdict's reason is a short code of the rule's own ("in-order", "reversed", "rising",
"overfits", "below-floor", ...); "not distinguishable" always carries a WHY_UNDECIDED code.
Every rule checks its input (lengths, NaN, too few values) and raises one clear ValueError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

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
    "inside-run-noise": "the change lies inside the run's own noise from one evaluation to the next",
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


# ----------------------------------------------------------------------------------------------
# Checking and formatting the numbers a rule is given

def _g(x: float) -> str:
    """A number for a sentence: 3 significant digits."""
    return f"{x:.3g}"


def _values(name: str, values, min_len: int = 1) -> np.ndarray:
    """`values` as a 1-D float array of finite numbers, at least `min_len` of them, or one clear error."""
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r:.80}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {a.shape}")
    if len(a) < min_len:
        raise ValueError(f"{name} has {len(a)} value(s); this rule needs at least {min_len}")
    bad = np.flatnonzero(~np.isfinite(a))
    if len(bad):
        raise ValueError(f"{name} holds {a[bad[0]]} at index {bad[0]}: drop the diverged run or value, "
                         f"a decision rule takes finite numbers only")
    return a


def _curves(name: str, y, length: int) -> np.ndarray:
    """One curve or a list of curves (one per seed), each of `length` points, as a (seeds, points) array."""
    try:
        a = np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be one curve or a list of curves of equal length (one per seed)") from None
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] != length or a.shape[0] == 0:
        raise ValueError(f"{name} has shape {a.shape}: it must be one curve or a list of curves (one per seed), "
                         f"each of {length} points, one per x")
    for seed, row in enumerate(a):
        _values(f"{name}[{seed}]" if len(a) > 1 else name, row)
    return a


def _increasing(name: str, x: np.ndarray) -> None:
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"{name} must be strictly increasing (one x per evaluation, in order)")


def _positive(name: str, value) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive number")
    return float(value)


def _t(confidence: float, df: float) -> float:
    """The two-sided t multiplier: the interval is estimate +- _t * standard error."""
    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _check_confidence(confidence) -> float:
    if not isinstance(confidence, float) or not 0.5 <= confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be a float in [0.5, 1), e.g. 0.95")
    return confidence


# ----------------------------------------------------------------------------------------------
# The rules

def _gap(better: np.ndarray, worse: np.ndarray, sign: float, paired: bool, confidence: float) -> dict:
    """The mean gap between two variants, positive when `better` is better, with its own t-interval:
    paired (differences seed by seed, n-1 degrees of freedom) or Welch (Welch-Satterthwaite degrees of
    freedom). `spread` is the sd a further seed would add: of the differences, or sqrt(sd_a² + sd_b²)."""
    n = min(len(better), len(worse))
    if paired:
        diffs = sign * (worse - better)
        gap = diffs.mean()
        spread = diffs.std(ddof=1) if n > 1 else math.nan
        se, df = spread / math.sqrt(n), n - 1
    else:
        gap = sign * (worse.mean() - better.mean())
        va, vb = (float(a.var(ddof=1)) if len(a) > 1 else math.nan for a in (better, worse))
        spread = math.sqrt(va + vb)
        ea, eb = va / len(better), vb / len(worse)
        se = math.sqrt(ea + eb)
        df = (ea + eb) ** 2 / (ea ** 2 / (len(better) - 1) + eb ** 2 / (len(worse) - 1)) if se > 0 else n - 1
    half = math.inf if n < 2 else 0.0 if se == 0 else _t(confidence, df) * se
    return {"gap": float(gap), "half": float(half), "low": float(gap - half), "high": float(gap + half),
            "spread": float(spread), "n": n}


def _seeds_needed(distance: float, spread: float, confidence: float, cap: int = 1000) -> int | None:
    """The fewest seeds per variant whose interval half-width t * spread / sqrt(m) falls below `distance`
    (the observed spread taken as the truth), or None when no m up to `cap` would."""
    if not spread > 0 or distance <= 0:
        return None
    m = np.arange(2, cap + 1)
    ok = np.flatnonzero(stats.t.ppf(0.5 + confidence / 2, m - 1) * spread / np.sqrt(m) < distance)
    return int(m[ok[0]]) if len(ok) else None


def compare(values: dict, expect: list, *, lower_is_better: bool = True, paired: bool = True,
            confidence: float = 0.95, min_seeds: int = 3, min_effect: float = 0.0, confounded: str | None = None,
            what: str = "value") -> Evidence:
    """Are the variants in the claimed order? `values`: {variant: one number per seed} (the same seeds in
    the same order for every variant when `paired`); `expect`: the claimed order, best first (a subset
    of the variants is fine).

    Each adjacent pair of `expect` is judged by its own seeds: the t-interval of the mean gap (paired
    differences, or Welch's interval when not `paired`), never a spread borrowed from elsewhere.
      reproduced   every pair in the claimed order, its interval above 0 and its mean gap > min_effect;
      refuted      some pair in the opposite order with its interval below 0, or (min_effect > 0) its
                   whole interval below min_effect: a real but too small difference;
      not distinguishable  otherwise: "too-few-seeds" when a variant has fewer than `min_seeds` values
                   (whatever the numbers), else "inside-seed-spread"; would_tell estimates the seeds
                   that would decide, taking the observed gap and spread as the truth.
    `confounded`: what else differs between the variants (e.g. "the parameter count"); the verdict is
    then "not distinguishable" with reason "confounded", whichever way the numbers point, since the
    confound could explain either (details["unconfounded_verdict"] keeps what the numbers alone say).
    The key number is the deciding pair's mean gap: the refuting pair, else the weakest pair (the one
    with the smallest gap - half-width; with two variants, the only pair). Its threshold is the
    interval's half-width (or min_effect, if larger), so margin = gap - half-width is positive exactly
    when that pair holds; for a refuting pair the threshold is -half-width (min_effect - half-width).
    """
    if not isinstance(values, dict) or not values:
        raise ValueError("values must be a dict {variant: [one number per seed]}")
    if not isinstance(expect, (list, tuple)) or len(expect) < 2 or len(set(expect)) != len(expect):
        raise ValueError(f"expect={expect!r} must list two or more distinct variants, best first")
    unknown = [name for name in expect if name not in values]
    if unknown:
        raise ValueError(f"expect names {unknown} that values lacks; the variants are {sorted(values)}")
    _check_confidence(confidence)
    if not isinstance(min_seeds, int) or min_seeds < 2:
        raise ValueError(f"min_seeds={min_seeds!r} must be an int >= 2 (one seed shows no spread)")
    if not isinstance(min_effect, (int, float)) or not math.isfinite(min_effect) or min_effect < 0:
        raise ValueError(f"min_effect={min_effect!r} must be a number >= 0 (in the values' units)")
    arrays = {name: _values(f"values[{name!r}]", values[name]) for name in expect}
    if paired and len({len(a) for a in arrays.values()}) > 1:
        raise ValueError(f"paired=True needs one value per seed, same seeds, for every variant; the counts are "
                         f"{ {k: len(a) for k, a in arrays.items()} }: pass paired=False for independent runs")
    sign = 1.0 if lower_is_better else -1.0
    pairs = [{"better": a, "worse": b, **_gap(arrays[a], arrays[b], sign, paired, confidence)}
             for a, b in zip(expect, expect[1:])]
    for p in pairs:
        p["holds"] = p["low"] > 0 and p["gap"] > min_effect
        p["reversed"] = p["high"] < 0
        p["too_small"] = min_effect > 0 and p["high"] < min_effect and not p["reversed"]
    n = min(len(a) for a in arrays.values())
    refuting = [p for p in pairs if p["reversed"]] or [p for p in pairs if p["too_small"]]
    open_ = [p for p in pairs if not p["holds"]]
    key = (min(refuting, key=lambda p: p["gap"]) if refuting else   # the weakest pair decides
           min(open_ or pairs, key=lambda p: p["gap"] - max(p["half"], min_effect)))
    if n < min_seeds:
        verdict, reason = NOT_DISTINGUISHABLE, "too-few-seeds"
    elif refuting:
        verdict, reason = REFUTED, "reversed" if key["reversed"] else "below-min-effect"
    elif all(p["holds"] for p in pairs):
        verdict, reason = REPRODUCED, "in-order"
    else:
        verdict, reason = NOT_DISTINGUISHABLE, "inside-seed-spread"
    unconfounded = verdict
    if confounded:
        verdict, reason = NOT_DISTINGUISHABLE, "confounded"

    gap, half = key["gap"], key["half"]
    if key["reversed"]:
        threshold = -half
    elif key["too_small"]:
        threshold = min_effect - half
    else:
        threshold = max(half, min_effect)
    finite = math.isfinite(half)
    claimed, other = ("lower", "higher") if lower_is_better else ("higher", "lower")
    low, high = (key["low"], key["high"]) if gap >= 0 else (-key["high"], -key["low"])
    interval = _interval_text(low, high, confidence, finite)
    ending = {"in-order": ", as claimed", "reversed": ", the opposite of the claimed order",
              "below-min-effect": f", smaller than the {_g(min_effect)} that counts",
              "inside-seed-spread": (", an interval that includes 0" if key["low"] <= 0
                                     else f", not clear of the {_g(min_effect)} that counts"),
              "too-few-seeds": f", too few seeds to trust the spread (at least {min_seeds})",
              "confounded": f", but the variants also differ in {confounded}"}[reason]
    sentence = (f"{key['better']}'s {what} is {claimed if gap >= 0 else other} than {key['worse']}'s by {_g(abs(gap))} "
                f"({interval}) over {n} seed{'s' * (n != 1)}{ending}")
    would_tell = None
    if verdict == NOT_DISTINGUISHABLE:
        if confounded:
            would_tell = f"variants that differ only in what the claim names, not also in {confounded}"
        elif not math.isfinite(key["spread"]):
            would_tell = f"at least {min_seeds} seeds per variant, to measure the spread"
        else:
            distance = gap if gap > min_effect else (min_effect - gap if min_effect > 0 else -gap)
            m = _seeds_needed(distance, key["spread"], confidence)
            would_tell = (f"about {max(m, min_seeds)} seeds per variant (now {n}) would decide a gap of {_g(gap)} "
                          f"against the seed spread {_g(key['spread'])}" if m else
                          f"no affordable number of seeds: a gap of {_g(gap)} against the seed spread "
                          f"{_g(key['spread'])} needs over 1000; treat the variants as equal at this budget")
    details = {"means": {k: float(a.mean()) for k, a in arrays.items()},
               "sds": {k: float(a.std(ddof=1)) if len(a) > 1 else None for k, a in arrays.items()},
               "pairs": [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in p.items()}
                         for p in pairs],
               "paired": paired, "confidence": confidence, "unconfounded_verdict": unconfounded}
    return Evidence("compare", verdict, reason, f"mean gap {key['better']} vs {key['worse']}", gap,
                    threshold if finite else None, gap - threshold if finite else None, n, sentence,
                    would_tell, details)


def _interval_text(low, high, confidence, finite) -> str:
    """A gap's interval as the sentences say it: "95% interval low to high", or, from one seed, that there is none."""
    return f"{round(confidence * 100)}% interval {_g(low)} to {_g(high)}" if finite else "no interval from 1 seed"


def at_least_as_good(values: dict, claimed: str, *, tolerance: float, higher_is_better: bool = True,
                     paired: bool = True, confidence: float = 0.95, min_seeds: int = 3,
                     what: str = "value") -> Evidence:
    """Is `claimed` at least as good as every other variant, up to `tolerance` (a non-inferiority test)?
    `values`: {variant: one number per seed}; `tolerance`: how much worse still counts as "as good", in
    the values' units (no default: it is the claim's own yardstick).

    For each other variant, the t-interval of the gap claimed - other (positive when `claimed` is better;
    paired differences, or Welch's interval when not `paired`, as in `compare`):
      reproduced   every interval's low end above -tolerance: no variant is better by the tolerance;
      refuted      some variant better by more than the tolerance, its whole interval below -tolerance;
      not distinguishable otherwise: "too-few-seeds" below `min_seeds`, else "inside-seed-spread".
    The key number is the gap to the strongest other variant (the refuting one, else the one with the
    lowest interval end); threshold = -tolerance; margin = low + tolerance (for a refuting variant,
    -tolerance - high), positive exactly when that variant's verdict holds.
    """
    if not isinstance(values, dict) or claimed not in values or len(values) < 2:
        raise ValueError(f"values must be a dict {{variant: [one number per seed]}} with {claimed!r} and at "
                         f"least one other variant; got {sorted(values) if isinstance(values, dict) else values!r}")
    tolerance = _positive("tolerance", tolerance)
    _check_confidence(confidence)
    if not isinstance(min_seeds, int) or min_seeds < 2:
        raise ValueError(f"min_seeds={min_seeds!r} must be an int >= 2 (one seed shows no spread)")
    arrays = {name: _values(f"values[{name!r}]", v) for name, v in values.items()}
    if paired and len({len(a) for a in arrays.values()}) > 1:
        raise ValueError(f"paired=True needs one value per seed, same seeds, for every variant; the counts are "
                         f"{ {k: len(a) for k, a in arrays.items()} }: pass paired=False for independent runs")
    sign = 1.0 if higher_is_better else -1.0
    sign_gap = -sign   # _gap's sign is for "lower is better"
    pairs = {other: _gap(arrays[claimed], arrays[other], sign_gap, paired, confidence)
             for other in arrays if other != claimed}
    n = min(len(a) for a in arrays.values())
    refuting = {o: p for o, p in pairs.items() if p["high"] < -tolerance}
    if refuting:
        other = min(refuting, key=lambda o: refuting[o]["gap"])
    else:
        other = min(pairs, key=lambda o: pairs[o]["low"])
    key = pairs[other]
    if n < min_seeds:
        verdict, reason = NOT_DISTINGUISHABLE, "too-few-seeds"
    elif refuting:
        verdict, reason = REFUTED, "worse-beyond-tolerance"
    elif all(p["low"] > -tolerance for p in pairs.values()):
        verdict, reason = REPRODUCED, "within-tolerance"
    else:
        verdict, reason = NOT_DISTINGUISHABLE, "inside-seed-spread"
    finite = math.isfinite(key["half"])
    margin = (-tolerance - key["high"]) if refuting else (key["low"] + tolerance)
    interval = _interval_text(key['low'], key['high'], confidence, finite)
    ending = {"within-tolerance": f", above -{_g(tolerance)}: at least as good",
              "worse-beyond-tolerance": f", below -{_g(tolerance)}: {other} is better by more than the tolerance",
              "inside-seed-spread": f", an interval that reaches below -{_g(tolerance)}",
              "too-few-seeds": f", too few seeds to trust the spread (at least {min_seeds})"}[reason]
    sentence = (f"{claimed}'s {what} minus {other}'s (positive when {claimed} is better) is {_g(key['gap'])} "
                f"({interval}) over {n} seed{'s' * (n != 1)}{ending}")
    would_tell = None
    if verdict == NOT_DISTINGUISHABLE:
        if not math.isfinite(key["spread"]):
            would_tell = f"at least {min_seeds} seeds per variant, to measure the spread"
        else:
            m = _seeds_needed(key["gap"] + tolerance, key["spread"], confidence)
            would_tell = (f"about {max(m, min_seeds)} seeds per variant (now {n}) would place the interval of a "
                          f"gap of {_g(key['gap'])} above -{_g(tolerance)}" if m else
                          f"a larger tolerance or a longer run: a gap of {_g(key['gap'])} sits at -{_g(tolerance)}")
    details = {"means": {k: float(a.mean()) for k, a in arrays.items()},
               "pairs": {o: {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in p.items()}
                         for o, p in pairs.items()},
               "tolerance": tolerance, "paired": paired, "confidence": confidence}
    return Evidence("at_least_as_good", verdict, reason, f"gap {claimed} minus {other}", key["gap"], -tolerance,
                    margin if finite else None, n, sentence, would_tell, details)


TRENDS = ("falling", "flat", "rising")


def trend(x, y, *, expect: str, tolerance: float, tail: float = 0.5, min_points: int = 6,
          confidence: float = 0.95, what: str = "the curve", full_budget: bool = False) -> Evidence:
    """Is a curve still falling, flat or rising at the end of training? `x`: where it was evaluated
    (steps or epochs, increasing); `y`: one curve, or a list of curves (one per seed) at those x.

    The last `tail` fraction of the points (at least `min_points` of them) is fitted with
    scipy.stats.linregress; the fitted change over that span (slope x span) and its t-interval
    (n-2 degrees of freedom) are held against `tolerance`, the change over the span that still counts
    as flat, in y's units (no default: it is the claim's own yardstick):
      rising   the whole interval above +tolerance;   falling  the whole interval below -tolerance;
      flat     the whole interval inside +-tolerance;
      undecided otherwise: "still-changing" when the fitted change itself is beyond the tolerance (train
               longer), "inside-run-noise" when it is within the tolerance but the interval is not (the
               curve's noise is too large for this many points: evaluate more often or run more seeds).
    Fewer than `min_points` points in all: "too-few-points" (4 points leave 2 degrees of freedom: an
    interval too wide to call anything a trend).
    reproduced when the class is `expect`, refuted when it is another of the three classes, with one
    exception: a curve found *falling* when it is claimed to have settled (flat or rising) is a loss
    that the budget stopped before it settled, so the verdict is "still-changing" (train longer), unless
    `full_budget=True` says the run had the budget the claim speaks of (then it is refuted).
    Several seeds: their mean curve is fitted (the same slope as fitting every point with an offset per
    seed; the seeds' offsets cancel and their noise averages), so the degrees of freedom count points.
    value = the fitted change over the span; threshold = +tolerance (rising, flat) or -tolerance (falling);
    margin = how far the interval's edge is inside the claimed region: low - tolerance (rising),
    -tolerance - high (falling), tolerance - max(|low|, |high|) (flat); all in y's units, and a knife
    edge is a margin within 10% of the tolerance.
    """
    if expect not in TRENDS:
        raise ValueError(f"expect={expect!r} must be one of {TRENDS}")
    tolerance = _positive("tolerance", tolerance)
    if not isinstance(tail, (int, float)) or not 0 < tail <= 1:
        raise ValueError(f"tail={tail!r} must be the fraction of the points to fit, in (0, 1]")
    if not isinstance(min_points, int) or min_points < 3:
        raise ValueError(f"min_points={min_points!r} must be an int >= 3 (a line with an error bar needs 3 points)")
    _check_confidence(confidence)
    x = _values("x", x, 1)
    _increasing("x", x)
    curves = _curves("y", y, len(x))
    seeds = len(curves)
    if len(x) < min_points:
        return Evidence("trend", NOT_DISTINGUISHABLE, "too-few-points", "change over the fitted span", None, tolerance,
                        None, seeds, f"{what} has {len(x)} points; a trend needs at least {min_points}",
                        f"at least {min_points} evaluations in the last part of training", {"points": len(x)})
    m = min(len(x), max(math.ceil(tail * len(x)), min_points))
    xs, ys = x[-m:], curves[:, -m:].mean(axis=0)
    fit = stats.linregress(xs, ys)
    span = float(xs[-1] - xs[0])
    change, half = fit.slope * span, _t(confidence, m - 2) * fit.stderr * span
    low, high = change - half, change + half
    if low > tolerance:
        found = "rising"
    elif high < -tolerance:
        found = "falling"
    elif -tolerance <= low and high <= tolerance:
        found = "flat"
    else:
        found = None
    if found == expect:
        verdict, reason = REPRODUCED, found
    elif found == "falling" and not full_budget:
        verdict, reason = NOT_DISTINGUISHABLE, "still-changing"   # stopped before it settled
    elif found:
        verdict, reason = REFUTED, found
    else:
        moving = abs(change) > tolerance and (low > 0 or high < 0)
        verdict, reason = NOT_DISTINGUISHABLE, "still-changing" if moving else "inside-run-noise"
    threshold = -tolerance if expect == "falling" else tolerance
    margin = {"rising": low - tolerance, "falling": -tolerance - high,
              "flat": tolerance - max(abs(low), abs(high))}[expect]
    where = f"over the last {m} of {len(x)} points" + (f" of the mean of {seeds} seeds" if seeds > 1 else "")
    sentence = (f"{what} changes by {_g(change)} {where} ({round(confidence * 100)}% interval {_g(low)} to "
                f"{_g(high)}) against a tolerance of {_g(tolerance)}: " + (found or "undecided"))
    would_tell = None
    if reason == "still-changing":
        would_tell = (f"train longer, until a line through the last {m} evaluations changes by less than "
                      f"{_g(tolerance)}")
    elif reason == "inside-run-noise":
        room = abs(tolerance - abs(change))   # the half-width that would put the interval on one side
        ratio = (half / room) ** 2 if room > half / 30 else None   # the interval narrows as 1/sqrt(points)
        would_tell = (f"about {math.ceil(m * ratio)} evaluations over the same span (now {m}), or {math.ceil(ratio)}x "
                      f"the seeds, to narrow the interval +-{_g(half)} below +-{_g(room)}" if ratio else
                      f"a longer run: the change {_g(change)} sits at the tolerance {_g(tolerance)}")
    details = {"slope": float(fit.slope), "stderr": float(fit.stderr), "span": span, "points": m,
               "low": float(low), "high": float(high), "class": found, "tolerance": tolerance,
               "confidence": confidence}
    return Evidence("trend", verdict, reason, "change over the fitted span", float(change), threshold,
                    float(margin), seeds, sentence, would_tell, details)


def _noise(curve: np.ndarray) -> float:
    """A curve's noise from one evaluation to the next: the robust sd (1.4826 x median absolute deviation)
    of its second differences, / sqrt(6) (white noise of sd s has second differences of sd sqrt(6) s).
    A smooth curve's second differences are near 0, and the median ignores the few large ones at its
    early drop and at the bend of its minimum, so what is left is the noise."""
    d2 = np.diff(curve, 2)
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))


def overfitting(epochs, train_loss, test_loss, *, expect: bool = True, min_rise: float | None = None,
                k: float = 3.0, full_budget: bool = False) -> Evidence:
    """Does the model overfit within this budget? `epochs` (increasing; fewer than 5 give "too-few-points");
    `train_loss` and `test_loss`: one curve per seed (a single curve is one seed), a value per epoch.

    Per seed: the epoch of the lowest test loss, the rise of the test loss from there to the last epoch,
    and the widening of the gap (test - train) over the same epochs, each held against the seed's own
    noise threshold: k x the test curve's noise from epoch to epoch (see _noise; k = 3), or `min_rise`
    if that is larger. A seed
      overfits       when its best test epoch comes before the last and both rise and widening exceed it;
      still falling  when its test loss is lowest at the last epoch;
      is unclear     otherwise (a plateau, or a rise or widening inside the noise).
    expect=True (the claim: it overfits): reproduced when every seed overfits; when every seed is still
    falling, refuted only with `full_budget=True` (the run had the budget the claim speaks of), else not
    distinguishable, "still-changing" (the budget ended before the test loss turned: train longer);
    otherwise not distinguishable: "still-changing" if some seed is still falling, else "inside-run-noise".
    expect=False mirrors it (reproduced when every
    seed is still falling, refuted when every seed overfits). One seed decides alone; the sentence says so.
    value = the deciding seed's smaller of rise and widening (the weakest seed for expect=True, the
    strongest for expect=False); threshold = its noise threshold; margin = value - threshold (negated
    for expect=False), so a knife edge is a rise within 10% of the noise threshold.
    """
    if not isinstance(expect, bool):
        raise ValueError(f"expect={expect!r} must be True (the claim: it overfits) or False (it does not)")
    k = _positive("k", k)
    if min_rise is not None:
        min_rise = _positive("min_rise", min_rise)
    epochs = _values("epochs", epochs, 1)
    _increasing("epochs", epochs)
    train, test = _curves("train_loss", train_loss, len(epochs)), _curves("test_loss", test_loss, len(epochs))
    if len(train) != len(test):
        raise ValueError(f"train_loss has {len(train)} seed(s) and test_loss {len(test)}: give one pair per seed")
    if len(epochs) < 5:   # a short (smoke) run: no best epoch and noise to speak of
        return Evidence("overfitting", NOT_DISTINGUISHABLE, "too-few-points",
                        "rise of the test loss after its best epoch (and gap widening)", None, None, None, len(test),
                        f"the run has {len(epochs)} evaluations; telling a rise from the noise needs at least 5",
                        "at least 5 epochs, each ending with a test loss", {"points": len(epochs)})
    last = len(epochs) - 1
    per_seed = []
    for tr, te in zip(train, test):
        best = int(np.argmin(te))
        noise = _noise(te)
        threshold = max(k * noise, min_rise or 0.0)
        rise, widening = float(te[-1] - te[best]), float((te[-1] - tr[-1]) - (te[best] - tr[best]))
        state = ("still-falling" if best == last else
                 "overfits" if rise > threshold and widening > threshold else "unclear")
        per_seed.append({"best_epoch": float(epochs[best]), "rise": rise, "gap_at_best": float(te[best] - tr[best]),
                         "gap_at_last": float(te[-1] - tr[-1]), "widening": widening, "noise": noise,
                         "threshold": threshold, "state": state})
    states = [s["state"] for s in per_seed]
    seeds = len(per_seed)
    if all(s == "overfits" for s in states):
        verdict, reason = (REPRODUCED if expect else REFUTED), "overfits"
    elif all(s == "still-falling" for s in states) and (full_budget or not expect):
        verdict, reason = (REFUTED if expect else REPRODUCED), "still-falling"
    else:
        verdict = NOT_DISTINGUISHABLE
        reason = "still-changing" if "still-falling" in states else "inside-run-noise"
    excess = [min(s["rise"], s["widening"]) - s["threshold"] for s in per_seed]
    i = int(np.argmin(excess)) if expect else int(np.argmax(excess))
    s = per_seed[i]
    value = min(s["rise"], s["widening"])
    margin = excess[i] if expect else -excess[i]
    counts = f"{states.count('overfits')} of {seeds} seeds overfit" if seeds > 1 else "on 1 seed (a single run)"
    which = f"seed {i}: " if seeds > 1 else ""
    if s["state"] == "still-falling":
        seed = f"the test loss is still falling, lowest at the last epoch ({_g(epochs[-1])})"
    else:
        seed = (f"the test loss is lowest at epoch {_g(s['best_epoch'])} of {_g(epochs[-1])}, then rises by "
                f"{_g(s['rise'])} while the train/test gap goes from {_g(s['gap_at_best'])} to {_g(s['gap_at_last'])}")
    sentence = f"{counts}; {which}{seed}, against a noise threshold of {_g(s['threshold'])}"
    would_tell = None
    if reason == "still-changing":
        would_tell = (f"train longer: the test loss is still falling at the last epoch in "
                      f"{states.count('still-falling')} of {seeds} seed(s)")
    elif reason == "inside-run-noise":
        would_tell = (f"more epochs, until the test loss rises from its best by more than {_g(s['threshold'])} "
                      f"({_g(k)}x its noise) with the gap widening as much, or stays within it"
                      + (", and more seeds" if seeds == 1 else ""))
    return Evidence("overfitting", verdict, reason, "rise of the test loss after its best epoch (and gap widening)",
                    value, s["threshold"], margin, seeds, sentence, would_tell,
                    {"per_seed": per_seed, "k": k, "min_rise": min_rise})


def baseline(score, null_scores, *, abs_floor: float, rel_factor: float | None = None, k: float = 3.0,
             higher_is_better: bool = True, what: str = "the score") -> Evidence:
    """Does a score beat an untrained or null baseline (untrained twins, shuffled inputs, ...)?
    `score`: one number, or several (one per seed); `null_scores`: the baseline's scores (2 or more).

    The score must clear three bars, all in the "better" direction:
      spread  beyond max(null) + k x sd(null): outside anything the baseline did (k = 3);
      floor   at least `abs_floor` past mean(null): required, because a null with a near-zero spread
              would otherwise let 0.012 "beat" 0.011;
      factor  if `rel_factor` is given, at least rel_factor x mean(null) (mean(null) / rel_factor when
              lower is better); mean(null) must then be > 0.
    Several scores: the worst of them is held against the bars (the claim holds for every seed).
    reproduced when it clears all three; refuted when it misses the floor or the factor (too small a
    difference to matter, whatever the spread); not distinguishable ("inside-seed-spread") when it clears
    those but not the baseline's own spread.
    value = the worst score; threshold = the highest bar; margin = value - threshold (threshold - value
    when lower is better), so a knife edge is a score within 10% of its strictest bar.
    """
    scores = _values("score", [score] if np.ndim(score) == 0 else score)
    null = _values("null_scores", null_scores, 2)
    abs_floor = _positive("abs_floor", abs_floor)
    k = _positive("k", k)
    sign = 1.0 if higher_is_better else -1.0     # work in "higher is better" units, report in the score's own
    s, nl = sign * scores, sign * null
    worst = float(s.min())
    mean, sd = float(nl.mean()), float(nl.std(ddof=1))
    bars = {"spread": float(nl.max()) + k * sd, "floor": mean + abs_floor}
    if rel_factor is not None:
        rel_factor = _positive("rel_factor", rel_factor)
        if null.mean() <= 0:
            raise ValueError(f"rel_factor needs a positive null mean, got {null.mean():.3g}: use abs_floor alone")
        bars["factor"] = float(sign * (rel_factor * null.mean() if higher_is_better else null.mean() / rel_factor))
    missed = [name for name, bar in bars.items() if not worst > bar]
    if not missed:
        verdict, reason = REPRODUCED, "beats-baseline"
    elif "floor" in missed or "factor" in missed:
        verdict, reason = REFUTED, "below-" + ("floor" if "floor" in missed else "factor")
    else:
        verdict, reason = NOT_DISTINGUISHABLE, "inside-seed-spread"
    deciding = next(iter(missed), max(bars, key=bars.get))     # the bar it missed, else the strictest one
    strictest = float(max(bars.values()))
    named = {"spread": f"max(null) + {_g(k)} sd", "floor": f"null mean + {_g(abs_floor)}",
             "factor": f"{_g(rel_factor or 0)}x the null mean"}
    several = f"the worst of {len(scores)} scores, " if len(scores) > 1 else ""
    sentence = (f"{what} ({several}{_g(sign * worst)}) is {_g(abs(worst - mean))} "
                f"{'better' if worst >= mean else 'worse'} than the null mean {_g(sign * mean)} over {len(null)} "
                f"null runs, against the bar {_g(sign * bars[deciding])} ({named[deciding]})")
    would_tell = None
    if verdict == NOT_DISTINGUISHABLE:
        would_tell = (f"a score beyond {_g(sign * bars['spread'])}, or more null runs (now {len(null)}) to pin "
                      f"down the baseline's spread {_g(sd)}")
    details = {"scores": [float(v) for v in scores], "null_mean": float(null.mean()), "null_sd": sd,
               "null_best": float(sign * nl.max()), "bars": {n: float(sign * b) for n, b in bars.items()},
               "missed": missed, "k": k}
    return Evidence("baseline", verdict, reason, f"{what} against the null baseline", sign * worst, sign * strictest,
                    worst - strictest, len(scores), sentence, would_tell, details)


def threshold(value, threshold: float, *, direction: str, key: str, seeds: int = 1,
              what: str = "the value") -> Evidence:
    """A single measured number against a bar with a meaning of its own (KV cache max abs difference
    < 1e-5, speedup > 1): reproduced when `value` is strictly on the `direction` side of `threshold`
    (">" or "<"), refuted otherwise. margin = value - threshold for ">", threshold - value for "<", so
    a value within 10% of the bar is flagged as a knife edge (79.7 against > 80 is; 60 is not)."""
    if direction not in (">", "<"):
        raise ValueError(f"direction={direction!r} must be '>' or '<'")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key={key!r} must name the number, e.g. 'max abs difference'")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be a positive int: how many seeds the number rests on")
    value = float(_values("value", [value])[0])
    bar = float(_values("threshold", [threshold])[0])
    margin = value - bar if direction == ">" else bar - value
    verdict = REPRODUCED if margin > 0 else REFUTED
    sentence = (f"{what} is {_g(value)}, {'' if margin > 0 else 'not '}{'above' if direction == '>' else 'below'} "
                f"the bar {_g(bar)} (by {_g(abs(margin))})")
    return Evidence("threshold", verdict, "passes" if margin > 0 else "fails", key, value, bar, margin, seeds,
                    sentence, None, {"direction": direction})


def not_tested(why: str, would_tell: str) -> Evidence:
    """The claim is stated but not measured in this profile: `why` (one sentence) and what would test it."""
    for name, text in (("why", why), ("would_tell", would_tell)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name}={text!r} must be a non-empty sentence")
    return Evidence("not_tested", NOT_TESTED, "not-measured", "not measured", None, None, None, None, why.strip(),
                    would_tell.strip())


def all_of(parts: dict) -> Evidence:
    """A claim made of several measurable parts ("drops sharply, plateaus, close to zero"): `parts` maps
    each part's name to the Evidence a rule gave it. Refuted when any part is refuted; reproduced when every
    part is; otherwise not distinguishable, for the reason of the first undecided part. The key number,
    threshold and margin are the deciding part's: the refuting or undecided one, or, when all hold, the one
    closest to its threshold (so a knife edge in any part shows in the whole)."""
    if not isinstance(parts, dict) or not parts or not all(isinstance(e, Evidence) for e in parts.values()):
        raise ValueError("parts must be a non-empty dict of part name -> Evidence (what a rule returned)")
    verdicts = {name: e.verdict for name, e in parts.items()}
    refuted = [n for n, v in verdicts.items() if v == REFUTED]
    undecided = [n for n, v in verdicts.items() if v in (NOT_DISTINGUISHABLE, NOT_TESTED)]
    if refuted:
        verdict, deciding = REFUTED, refuted[0]
    elif undecided:
        verdict, deciding = NOT_DISTINGUISHABLE, undecided[0]
    else:
        def closeness(e):   # the margin relative to the threshold's size; parts without numbers go last
            if e.margin is None or e.threshold is None:
                return math.inf
            return e.margin / (abs(e.threshold) or abs(e.value) or 1.0)
        verdict, deciding = REPRODUCED, min(parts, key=lambda n: closeness(parts[n]))
    d = parts[deciding]
    reason = d.reason if d.verdict != NOT_TESTED else "measure-cannot-tell"
    sentence = "; ".join(f"{name}: {e.verdict} ({e.sentence})" for name, e in parts.items())
    seeds = min((e.seeds for e in parts.values() if e.seeds is not None), default=None)
    return Evidence("all of", verdict, f"{deciding}: {reason}" if verdict != NOT_DISTINGUISHABLE else reason,
                    f"{deciding}: {d.key}", d.value, d.threshold, d.margin, seeds, sentence,
                    d.would_tell if verdict == NOT_DISTINGUISHABLE else None,
                    {"deciding_part": deciding, "parts": {name: e.to_dict() for name, e in parts.items()}})
