"""Is my run right? Each lesson's headline number against the band that the kit's own runs give.

A student who changed nothing should land inside the band; one who lands outside learns what
usually causes it, so a wrong run is told apart from an unlucky one in the lesson itself:

    from picollm_helpers.expect import expect
    expect("04_transformer.test_loss", final_test_loss, data=stories)   # a Corpus says which data
    # 04_transformer.test_loss = 1.87: inside the band 1.833 to 1.907 (laptop profile, synthetic stories;
    # from seeds 0-2 of the laptop profile).

`data` is "synthetic" (the kit's offline story generator), "tinystories" (the real stories) or
"3seqs" (the course's integer sequences, data/3seqs.txt), or a Corpus/TokenDataset whose .source
line says which. The profile is $PICOLLM_PROFILE's.

The bands live in one readable file, `expected_bands.json` beside this module:

    {"bands": {"04_transformer.test_loss": {
        "what": "the final test loss (nats/token)",
        "synthetic": {"laptop": {"low": 1.833, "high": 1.907, "mean": 1.87, "sd": 0.012, "n": 3,
                                 "from": "seeds 0-2 of lesson 04, laptop profile, torch 2.13 CPU",
                                 "cause_if_low": "...", "cause_if_high": "..."}}}}}

A band is computed from real runs, never typed in: `band_from_runs(values)` is mean ± max(3 sd,
floor) over several runs (seeds), and `set_band(...)` computes it and writes the entry. A smoke
band may be absent (smoke runs are seconds long; their numbers mean little): then expect() says
"no band for the smoke profile". A name or data without a band gives a message, never an error
that stops the lesson.
"""

from __future__ import annotations

import difflib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from .config import current_profile
from .files import write_text

BANDS_FILE = Path(__file__).with_name("expected_bands.json")
DATA_KINDS = {"synthetic": "synthetic stories", "tinystories": "real TinyStories", "3seqs": "3seqs"}
REL_FLOOR = 0.02    # a band is at least ±2% of the mean wide: three seeds can agree by chance


# ----------------------------------------------------------------------------------------------
# Bands: computed from runs, stored in one file

def band_from_runs(values, floor: float | None = None, rel_floor: float = REL_FLOOR) -> dict:
    """The band that several runs' values (one per seed) give: mean ± max(3 sd, floor).

    sd is the sample standard deviation (n - 1). Three seeds can agree closely by chance, so the
    half-width is never below `floor` (default: rel_floor × |mean|, 2%). Needs at least 2 finite
    values. Returns {low, high, mean, sd, n, half_width}, rounded to 4 significant figures.
    """
    vals = [float(v) for v in values]
    if len(vals) < 2 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"band_from_runs needs at least 2 finite values (one per run/seed), got {vals!r}; "
                         f"run the lesson with more seeds.")
    mean, sd = statistics.fmean(vals), statistics.stdev(vals)
    floor = rel_floor * abs(mean) if floor is None else float(floor)
    if floor < 0:
        raise ValueError(f"floor={floor!r} must be >= 0 (the narrowest half-width a band may have).")
    half = max(3 * sd, floor)
    r = lambda x: float(f"{x:.4g}")
    return {"low": r(mean - half), "high": r(mean + half), "mean": r(mean), "sd": r(sd), "n": len(vals),
            "half_width": r(half)}


def load_bands(path=None) -> dict:
    """name -> {"what": ..., data -> {profile -> band}} from the bands file (empty if it has none)."""
    path = Path(path) if path is not None else BANDS_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable bands file ({e}); restore it from git.") from None
    bands = raw.get("bands") if isinstance(raw, dict) else None
    if not isinstance(bands, dict):
        raise ValueError(f"{path}: a bands file is a JSON object with a 'bands' object; restore it from git.")
    return bands


def set_band(name: str, data: str, profile: str, values, *, source: str, what: str | None = None,
             cause_if_low: str, cause_if_high: str, floor: float | None = None, path=None) -> dict:
    """Compute the band of `values` (band_from_runs) and write it as name/data/profile in the bands
    file; return the entry. `source`: which runs the values come from (seeds, profile, machine)."""
    data = _check_data(data)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name={name!r} must be a non-empty string, e.g. '04_transformer.test_loss'.")
    for arg, text in (("source", source), ("cause_if_low", cause_if_low), ("cause_if_high", cause_if_high)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{arg}={text!r} must be a sentence (a band says where it comes from and "
                             f"what usually pushes a run out of it).")
    path = Path(path) if path is not None else BANDS_FILE
    raw = {"about": ABOUT, "bands": load_bands(path)}
    entry = {**band_from_runs(values, floor=floor), "from": source, "cause_if_low": cause_if_low,
             "cause_if_high": cause_if_high}
    item = raw["bands"].setdefault(name, {})
    if what is not None:
        item["what"] = what
    item.setdefault(data, {})[profile] = entry
    write_text(path, json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
    return entry


ABOUT = ("Each lesson's headline number: the band that the kit's own runs give, per data "
         "(synthetic or tinystories) and profile. Written by picollm_helpers.expect.set_band "
         "(mean ± max(3 sd, floor) over seeds); read by expect().")


# ----------------------------------------------------------------------------------------------
# Checking a value

def _check_data(data) -> str:
    if data not in DATA_KINDS:
        raise ValueError(f"data={data!r} is not one of {', '.join(repr(k) for k in DATA_KINDS)} "
                         f"(the kit's synthetic stories, the real TinyStories, or the course's 3seqs).")
    return data


def data_kind(data) -> str | None:
    """'synthetic', 'tinystories' or None (other data) for a string or a Corpus/TokenDataset."""
    if isinstance(data, str):
        return _check_data(data)
    source = getattr(data, "source", None)
    if getattr(data, "synthetic", False) or (isinstance(source, str) and "synthetic" in source):
        return "synthetic"
    if isinstance(source, str) and source.lower().startswith("tinystories"):
        return "tinystories"
    if isinstance(source, str) and source.startswith("3seqs"):
        return "3seqs"
    if source is None:
        raise TypeError(f"data={data!r}: pass 'synthetic', 'tinystories', or a Corpus/TokenDataset (with .source).")
    return None


@dataclass(frozen=True)
class Expectation:
    """What expect() found: status is 'inside', 'low', 'high', 'not finite', 'no band' or 'unknown name'."""

    name: str
    value: float
    data: str | None
    profile: str
    status: str
    low: float | None = None
    high: float | None = None
    cause: str | None = None      # for 'low' or 'high': what usually causes it
    message: str = ""

    @property
    def ok(self) -> bool | None:
        """True inside the band, False outside, None when there is no band to hold it against."""
        return None if self.status in ("no band", "unknown name") else self.status == "inside"

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"Expectation({self.name}={self.value:.4g}: {self.status})"


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def expect(name: str, value, data="synthetic", *, profile: str | None = None, bands: dict | None = None,
           quiet: bool = False) -> Expectation:
    """Is `value` (this run's headline number `name`) where the kit's runs put it? Prints one line
    (unless quiet) and returns an Expectation. Outside the band, the line says what usually causes it.

    `data`: 'synthetic', 'tinystories', or a Corpus/TokenDataset (its .source says which).
    `profile`: default $PICOLLM_PROFILE. `bands`: default the package's expected_bands.json.
    """
    value = float(value.item() if hasattr(value, "item") else value)
    kind = data_kind(data)
    profile = profile or current_profile()
    bands = load_bands() if bands is None else bands
    where = f"{profile} profile, {DATA_KINDS.get(kind, 'this data')}"
    head = f"{name} = {_fmt(value)}"

    def done(status, message, **kw):
        e = Expectation(name, value, kind, profile, status, message=message, **kw)
        if not quiet:
            print(message)
        return e

    if name not in bands:
        near = difflib.get_close_matches(name, list(bands), n=3)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else (
            f" Known: {', '.join(sorted(bands))}." if bands else " The bands file has none yet.")
        return done("unknown name", f"{head}: no expected band is recorded for {name!r}.{hint}")
    if kind is None:
        return done("no band", f"{head}: bands cover the synthetic stories and TinyStories, not this data "
                               f"({getattr(data, 'source', data)}).")
    per_data = bands[name].get(kind) or {}
    band = per_data.get(profile)
    if band is None:
        others = ", ".join(sorted(per_data)) or "none"
        return done("no band", f"{head}: no band for the {profile} profile on {DATA_KINDS[kind]} "
                               f"(bands for: {others}).")
    low, high = float(band["low"]), float(band["high"])
    if not math.isfinite(value):
        return done("not finite", f"{head}: not a number the band {_fmt(low)} to {_fmt(high)} can hold; the run "
                                  f"diverged (NaN or inf). Usual cause: a learning rate or precision changed from "
                                  f"the profile's.", low=low, high=high)
    span = f"{_fmt(low)} to {_fmt(high)} ({where}; from {band.get('from', 'unstated runs')})"
    if value < low:
        return done("low", f"{head}: BELOW the band {span}. Usual cause: {band['cause_if_low']}",
                    low=low, high=high, cause=band["cause_if_low"])
    if value > high:
        return done("high", f"{head}: ABOVE the band {span}. Usual cause: {band['cause_if_high']}",
                    low=low, high=high, cause=band["cause_if_high"])
    return done("inside", f"{head}: inside the band {span}.", low=low, high=high)
