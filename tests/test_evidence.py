"""The decision rules, on planted data: every verdict each rule can give is reached by a case built
to give it, and bad input raises one clear error."""
import json
import math

import numpy as np
import pytest

from picollm_helpers import evidence as E

RNG_SEED = 1234


def _rng(offset=0):
    return np.random.default_rng(RNG_SEED + offset)


def _plain(ev: E.Evidence) -> E.Evidence:
    """Every rule's result is plain JSON (numbers are Python floats, not numpy scalars) and each
    'not distinguishable' says what would tell."""
    json.dumps(ev.to_dict(), allow_nan=False)
    for name in ("value", "threshold", "margin"):
        v = getattr(ev, name)
        assert v is None or type(v) is float, (name, type(v))
    if ev.verdict == E.NOT_DISTINGUISHABLE:
        assert ev.reason in E.WHY_UNDECIDED and ev.would_tell
    if ev.margin is not None and ev.rule in ("compare", "baseline", "threshold"):   # margin = value - threshold
        assert math.isclose(abs(ev.margin), abs(ev.value - ev.threshold), rel_tol=1e-9, abs_tol=1e-12)
    return ev


def test_the_lessons_import_it_from_the_package():
    from picollm_helpers import evidence

    assert evidence.compare is E.compare


# ----------------------------------------------------------------------------------------------
# compare

def _variants(gap, sd, n=3, offset=0):
    """Two variants on the same seeds: a seed effect shared by both, plus each run's own noise `sd`."""
    r = _rng(offset)
    seed_effect = r.normal(0, 0.05, n)
    a = 2.0 + seed_effect + r.normal(0, sd, n)
    return a, a + gap + r.normal(0, sd, n)


def test_compare_separated_variants_are_reproduced_with_their_own_interval():
    a, b = _variants(gap=0.05, sd=0.005)
    ev = _plain(E.compare({"rope": a, "learned": b}, ["rope", "learned"], what="test loss"))
    assert (ev.verdict, ev.reason, ev.seeds) == (E.REPRODUCED, "in-order", 3)
    diffs = b - a
    assert ev.value == pytest.approx(diffs.mean())
    from scipy import stats
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)   # the paired interval, by the book
    assert ev.threshold == pytest.approx(half) and ev.margin == pytest.approx(diffs.mean() - half)
    assert "rope's test loss is lower than learned's by" in ev.sentence and "95% interval" in ev.sentence


def test_compare_reversed_order_is_refuted():
    a, b = _variants(gap=0.05, sd=0.005)
    ev = _plain(E.compare({"rope": a, "learned": b}, ["learned", "rope"]))
    assert (ev.verdict, ev.reason) == (E.REFUTED, "reversed")
    assert ev.value < 0 and ev.margin < 0 and "opposite" in ev.sentence


def test_compare_higher_is_better_flips_the_direction():
    a, b = _variants(gap=0.05, sd=0.005)
    assert E.compare({"a": a, "b": b}, ["b", "a"], lower_is_better=False).verdict == E.REPRODUCED
    assert E.compare({"a": a, "b": b}, ["a", "b"], lower_is_better=False).verdict == E.REFUTED


def test_compare_overlapping_variants_are_inside_the_seed_spread_with_a_seed_estimate():
    a, b = _variants(gap=0.01, sd=0.02, n=4, offset=1)
    ev = _plain(E.compare({"a": a, "b": b}, ["a", "b"]))
    assert (ev.verdict, ev.reason) == (E.NOT_DISTINGUISHABLE, "inside-seed-spread")
    pair = ev.details["pairs"][0]
    assert pair["low"] < 0 < pair["high"]
    m = int(ev.would_tell.split("about ")[1].split(" seeds")[0])
    from scipy import stats
    t = lambda n: stats.t.ppf(0.975, n - 1) * pair["spread"] / math.sqrt(n)
    assert m > 4 and t(m) < abs(pair["gap"]) <= t(m - 1)   # the fewest seeds that would separate this gap


def test_compare_two_seeds_are_too_few_even_when_clearly_apart():
    a, b = _variants(gap=0.3, sd=0.001, n=2)
    ev = _plain(E.compare({"a": a, "b": b}, ["a", "b"]))
    assert (ev.verdict, ev.reason, ev.seeds) == (E.NOT_DISTINGUISHABLE, "too-few-seeds", 2)
    one = _plain(E.compare({"a": a[:1], "b": b[:1]}, ["a", "b"]))
    assert one.reason == "too-few-seeds" and one.threshold is None and "at least 3 seeds" in one.would_tell


def test_compare_confounded_is_never_better_than_not_distinguishable():
    a, b = _variants(gap=0.05, sd=0.005)
    for order in (["a", "b"], ["b", "a"]):
        ev = _plain(E.compare({"a": a, "b": b}, order, confounded="the parameter count"))
        assert (ev.verdict, ev.reason) == (E.NOT_DISTINGUISHABLE, "confounded")
        assert "parameter count" in ev.sentence and "parameter count" in ev.would_tell
    assert ev.details["unconfounded_verdict"] == E.REFUTED


def test_compare_min_effect_keeps_a_real_but_tiny_gap_from_counting():
    a, b = _variants(gap=0.01, sd=0.001, n=5)     # a ratio of 1.01 "grows", clearly but not by much
    assert E.compare({"a": a, "b": b}, ["a", "b"]).verdict == E.REPRODUCED
    ev = _plain(E.compare({"a": a, "b": b}, ["a", "b"], min_effect=0.05))
    assert (ev.verdict, ev.reason) == (E.REFUTED, "below-min-effect") and ev.details["pairs"][0]["low"] > 0
    near = _plain(E.compare({"a": a, "b": b}, ["a", "b"], min_effect=0.0105))   # the interval straddles it
    assert (near.verdict, near.reason) == (E.NOT_DISTINGUISHABLE, "inside-seed-spread")


def test_compare_judges_each_pair_by_its_own_spread():
    r = _rng(2)
    a = 1.0 + r.normal(0, 0.001, 5)
    b = a + 0.02 + r.normal(0, 0.001, 5)       # a clearly before b
    c = b + 0.02 + r.normal(0, 0.05, 5)        # b before c is lost in c's own noise
    ev = _plain(E.compare({"a": a, "b": b, "c": c}, ["a", "b", "c"]))
    assert ev.verdict == E.NOT_DISTINGUISHABLE and ev.reason == "inside-seed-spread"
    first, second = ev.details["pairs"]
    assert first["holds"] and not second["holds"] and second["half"] > 10 * first["half"]
    assert ev.key == "mean gap b vs c" and ev.threshold == pytest.approx(second["half"])   # the open pair decides
    assert E.compare({"a": a, "b": b, "c": c}, ["a", "b"]).verdict == E.REPRODUCED   # a subset of the variants


def test_compare_unpaired_uses_welch():
    r = _rng(3)
    a, b = 2.0 + r.normal(0, 0.01, 4), 2.1 + r.normal(0, 0.03, 6)
    ev = _plain(E.compare({"a": a, "b": b}, ["a", "b"], paired=False))
    from scipy import stats
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert ev.verdict == E.REPRODUCED
    assert (ev.details["pairs"][0]["low"], ev.details["pairs"][0]["high"]) == pytest.approx((ci.low, ci.high))


@pytest.mark.parametrize("values, expect, kwargs, match", [
    ({"a": [1, 2, 3]}, ["a", "b"], {}, "lacks"),
    ({"a": [1, 2, 3], "b": [1, 2]}, ["a", "b"], {}, "paired=False"),
    ({"a": [1, 2, float("nan")], "b": [1, 2, 3]}, ["a", "b"], {}, "nan at index 2"),
    ({"a": [1, 2, 3], "b": [1, 2, 3]}, ["a"], {}, "two or more"),
    ({"a": [1, 2, 3], "b": [1, 2, 3]}, ["a", "b"], {"min_effect": -1}, "min_effect"),
    ({"a": [1, 2, 3], "b": [1, 2, 3]}, ["a", "b"], {"confidence": 95}, "confidence"),
    ({"a": [1, 2, 3], "b": [1, 2, 3]}, ["a", "b"], {"min_seeds": 1}, "min_seeds"),
    ({"a": [], "b": []}, ["a", "b"], {}, "at least 1"),
    ([1, 2], ["a", "b"], {}, "dict"),
])
def test_compare_rejects_bad_input(values, expect, kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.compare(values, expect, **kwargs)


# ----------------------------------------------------------------------------------------------
# trend

X = np.arange(40.0)


def _curve(slope, noise, offset=0):
    return 2.0 + slope * X + _rng(offset).normal(0, noise, len(X))


@pytest.mark.parametrize("slope, found", [(0.01, "rising"), (0.0, "flat"), (-0.01, "falling")])
def test_trend_classifies_planted_curves(slope, found):
    y = _curve(slope, 0.003)
    ev = _plain(E.trend(X, y, expect=found, tolerance=0.02))
    assert (ev.verdict, ev.reason, ev.details["class"]) == (E.REPRODUCED, found, found)
    assert ev.details["points"] == 20 and ev.value == pytest.approx(slope * 19, abs=0.02) and ev.margin > 0
    for other in (t for t in E.TRENDS if t != found):
        refuted = _plain(E.trend(X, y, expect=other, tolerance=0.02, full_budget=True))
        assert (refuted.verdict, refuted.reason) == (E.REFUTED, found) and refuted.margin < 0
        short = _plain(E.trend(X, y, expect=other, tolerance=0.02))
        if found == "falling":   # claimed settled, found still falling: the budget ended first
            assert (short.verdict, short.reason) == (E.NOT_DISTINGUISHABLE, "still-changing")
        else:
            assert (short.verdict, short.reason) == (E.REFUTED, found)


def test_trend_still_falling_past_the_tolerance_but_not_clearly_is_still_changing():
    y = _curve(-0.0014, 0.006, offset=5)     # -0.027 over the span, its interval not clear of -0.02
    ev = _plain(E.trend(X, y, expect="flat", tolerance=0.02))
    assert (ev.verdict, ev.reason) == (E.NOT_DISTINGUISHABLE, "still-changing")
    assert ev.details["high"] < 0 and ev.details["low"] < -0.02 < ev.details["high"]
    assert "train longer" in ev.would_tell


def test_trend_noise_too_large_for_the_points_is_inside_run_noise():
    ev = _plain(E.trend(X, _curve(0.0, 0.05, offset=6), expect="flat", tolerance=0.02))
    assert (ev.verdict, ev.reason) == (E.NOT_DISTINGUISHABLE, "inside-run-noise")
    assert "evaluations over the same span" in ev.would_tell


def test_trend_on_four_points_is_too_few_points():
    ev = _plain(E.trend([0, 1, 2, 3], [2.0, 1.98, 1.99, 1.96], expect="falling", tolerance=0.01))
    assert (ev.verdict, ev.reason, ev.value) == (E.NOT_DISTINGUISHABLE, "too-few-points", None)


def test_trend_over_seeds_fits_their_mean_curve_so_offsets_cancel():
    seeds = [_curve(0.0, 0.003, offset=i) + level for i, level in enumerate((0.0, 0.3, -0.2))]
    ev = _plain(E.trend(X, seeds, expect="flat", tolerance=0.02))
    assert (ev.verdict, ev.seeds) == (E.REPRODUCED, 3)
    assert ev.details["slope"] == pytest.approx(np.polyfit(X[-20:], np.mean(seeds, axis=0)[-20:], 1)[0])


def test_trend_tolerance_has_no_default():
    with pytest.raises(TypeError, match="tolerance"):
        E.trend(X, _curve(0.0, 0.01), expect="flat")


@pytest.mark.parametrize("x, y, kwargs, match", [
    (X[::-1], _curve(0, 0.01), {}, "strictly increasing"),
    (X, _curve(0, 0.01)[:-1], {}, "shape"),
    (X, [_curve(0, 0.01), _curve(0, 0.01)[:-1]], {}, "equal length"),
    (X, np.where(X == 7, np.inf, 1.0), {}, "inf at index 7"),
    (X, _curve(0, 0.01), {"tolerance": 0}, "tolerance"),
    (X, _curve(0, 0.01), {"expect": "up"}, "expect"),
    (X, _curve(0, 0.01), {"tail": 1.5}, "tail"),
])
def test_trend_rejects_bad_input(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.trend(x, y, **{"expect": "flat", "tolerance": 0.02, **kwargs})


# ----------------------------------------------------------------------------------------------
# overfitting

EPOCHS = np.arange(1, 31.0)


def _audit_case():
    """The audit's run: lowest test loss at epoch 18 of 30, then a monotone +0.188, the train/test gap
    widening from 1.43 to 2.26."""
    after = np.clip(EPOCHS - 18, 0, None) / 12
    test = np.where(EPOCHS <= 18, 4.0 + 0.01 * (18 - EPOCHS) ** 2, 4.0 + 0.188 * after ** 1.2)
    gap = np.where(EPOCHS <= 18, 0.2 + 1.23 * (EPOCHS - 1) / 17, 1.43 + 0.83 * after)
    return test - gap, test


def _still_falling(offset=0):
    test = 3.0 + 2.0 * np.exp(-EPOCHS / 8) + _rng(offset).normal(0, 0.002, len(EPOCHS))
    return test - 0.1 - 0.01 * EPOCHS, test


def _plateau(offset=0):
    test = 3.0 + 2.0 * np.exp(-EPOCHS / 3) + _rng(offset).normal(0, 0.01, len(EPOCHS))
    return test - 0.2, test


def test_overfitting_the_audit_case_is_reproduced():
    train, test = _audit_case()
    ev = _plain(E.overfitting(EPOCHS, train, test))
    assert (ev.verdict, ev.reason, ev.seeds) == (E.REPRODUCED, "overfits", 1)
    seed = ev.details["per_seed"][0]
    assert seed["best_epoch"] == 18 and seed["rise"] == pytest.approx(0.188)
    assert (seed["gap_at_best"], seed["gap_at_last"]) == pytest.approx((1.43, 2.26))
    assert "on 1 seed" in ev.sentence
    assert _plain(E.overfitting(EPOCHS, train, test, expect=False)).verdict == E.REFUTED


def test_overfitting_over_noisy_seeds_holds_each_against_its_own_noise():
    train, test = _audit_case()
    tests = [test + _rng(i).normal(0, 0.004, len(EPOCHS)) for i in range(3)]
    ev = _plain(E.overfitting(EPOCHS, [train] * 3, tests))
    assert (ev.verdict, ev.seeds) == (E.REPRODUCED, 3)
    noise = [s["noise"] for s in ev.details["per_seed"]]
    assert all(0.002 < n < 0.008 for n in noise)      # the planted sd 0.004, estimated from the curve itself
    assert all(s["threshold"] == pytest.approx(3 * s["noise"]) for s in ev.details["per_seed"])
    assert ev.threshold in [s["threshold"] for s in ev.details["per_seed"]]


def test_overfitting_still_falling_refutes_the_claim_only_at_its_budget_and_supports_its_negation():
    train, test = _still_falling()
    ev = _plain(E.overfitting(EPOCHS, train, test, full_budget=True))
    assert (ev.verdict, ev.reason) == (E.REFUTED, "still-falling") and "still falling" in ev.sentence
    short = _plain(E.overfitting(EPOCHS, train, test))   # a shorter run than the claim's: it may turn later
    assert (short.verdict, short.reason) == (E.NOT_DISTINGUISHABLE, "still-changing")
    assert "train longer" in short.would_tell
    assert _plain(E.overfitting(EPOCHS, train, test, expect=False)).verdict == E.REPRODUCED


def test_overfitting_plateau_inside_the_noise_is_not_distinguishable():
    train, test = _plateau()
    assert np.argmin(test) < len(test) - 1
    for expect in (True, False):
        ev = _plain(E.overfitting(EPOCHS, train, test, expect=expect))
        assert (ev.verdict, ev.reason) == (E.NOT_DISTINGUISHABLE, "inside-run-noise")
    assert ev.details["per_seed"][0]["state"] == "unclear"


def test_overfitting_a_rise_below_min_rise_does_not_count():
    train, test = _audit_case()
    ev = _plain(E.overfitting(EPOCHS, train, test, min_rise=0.25))
    assert ev.verdict == E.NOT_DISTINGUISHABLE and ev.threshold == 0.25


def test_overfitting_seeds_that_disagree_are_still_changing():
    (tr1, te1), (tr2, te2) = _audit_case(), _still_falling()
    ev = _plain(E.overfitting(EPOCHS, [tr1, tr2], [te1, te2]))
    assert (ev.verdict, ev.reason) == (E.NOT_DISTINGUISHABLE, "still-changing") and "1 of 2" in ev.sentence


def test_overfitting_on_four_epochs_is_too_few_points():
    ev = _plain(E.overfitting(EPOCHS[:4], [1, 2, 3, 4], [1, 2, 3, 4]))
    assert (ev.verdict, ev.reason) == (E.NOT_DISTINGUISHABLE, "too-few-points") and "at least 5" in ev.would_tell


@pytest.mark.parametrize("epochs, train, test, kwargs, match", [
    (EPOCHS, [_audit_case()[0]] * 2, [_audit_case()[1]], {}, "one pair per seed"),
    (EPOCHS, _audit_case()[0], np.where(EPOCHS == 3, np.nan, 1.0), {}, "nan at index 2"),
    (EPOCHS, *_audit_case(), {"expect": "yes"}, "expect"),
    (EPOCHS, *_audit_case(), {"min_rise": -0.1}, "min_rise"),
])
def test_overfitting_rejects_bad_input(epochs, train, test, kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.overfitting(epochs, train, test, **kwargs)


# ----------------------------------------------------------------------------------------------
# baseline

def test_baseline_a_near_zero_null_spread_cannot_make_0_012_beat_0_011():
    ev = _plain(E.baseline(0.012, [0.011, 0.011, 0.0111], abs_floor=0.05))
    assert ev.verdict == E.REFUTED and ev.reason == "below-floor"
    assert ev.details["bars"]["spread"] < 0.012          # it does clear max(null) + 3 sd: the floor stops it
    assert ev.threshold == pytest.approx(0.0110333 + 0.05) and ev.margin < 0


def test_baseline_a_clear_score_is_reproduced_and_the_worst_score_decides():
    null = [0.011, 0.02, 0.015]
    assert _plain(E.baseline([0.4, 0.5], null, abs_floor=0.05, rel_factor=2)).verdict == E.REPRODUCED
    ev = _plain(E.baseline([0.4, 0.03], null, abs_floor=0.05))
    assert ev.verdict == E.REFUTED and ev.value == 0.03


def test_baseline_inside_a_wide_null_spread_is_not_distinguishable():
    ev = _plain(E.baseline(0.5, [0.01, 0.3, 0.02], abs_floor=0.05))
    assert (ev.verdict, ev.reason) == (E.NOT_DISTINGUISHABLE, "inside-seed-spread")


def test_baseline_rel_factor_and_lower_is_better():
    ev = _plain(E.baseline(0.15, [0.09, 0.1, 0.11], abs_floor=0.03, rel_factor=2))
    assert (ev.verdict, ev.reason) == (E.REFUTED, "below-factor")
    low = _plain(E.baseline(2.1, [3.5, 3.6, 3.55], abs_floor=0.2, higher_is_better=False, rel_factor=1.2))
    assert low.verdict == E.REPRODUCED and low.threshold == pytest.approx(3.55 / 1.2) and low.margin > 0
    assert E.baseline(3.4, [3.5, 3.6, 3.55], abs_floor=0.2, higher_is_better=False).verdict == E.REFUTED


@pytest.mark.parametrize("score, null, kwargs, match", [
    (0.5, [0.01], {"abs_floor": 0.05}, "at least 2"),
    (0.5, [0.01, 0.02], {"abs_floor": 0}, "abs_floor"),
    (float("nan"), [0.01, 0.02], {"abs_floor": 0.05}, "score holds nan"),
    (0.5, [-0.01, -0.02], {"abs_floor": 0.05, "rel_factor": 2}, "positive null mean"),
])
def test_baseline_rejects_bad_input(score, null, kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.baseline(score, null, **kwargs)
    with pytest.raises(TypeError, match="abs_floor"):
        E.baseline(0.5, [0.01, 0.02])


# ----------------------------------------------------------------------------------------------
# threshold, not_tested

def test_threshold_flags_a_knife_edge_only_near_the_bar():
    edge = _plain(E.threshold(79.7, 80, direction=">", key="accuracy %"))
    assert (edge.verdict, edge.margin, edge.knife_edge) == (E.REFUTED, pytest.approx(-0.3), True)
    assert "(knife edge)" in str(edge)
    far = _plain(E.threshold(60, 80, direction=">", key="accuracy %"))
    assert (far.verdict, far.knife_edge) == (E.REFUTED, False)
    kv = _plain(E.threshold(3e-7, 1e-5, direction="<", key="max abs difference", what="the KV cache's difference"))
    assert (kv.verdict, kv.knife_edge) == (E.REPRODUCED, False) and kv.margin == pytest.approx(1e-5 - 3e-7)
    assert E.threshold(80, 80, direction=">", key="accuracy %").verdict == E.REFUTED   # the bar itself fails


@pytest.mark.parametrize("kwargs, match", [
    ({"direction": ">="}, "direction"), ({"key": ""}, "key"), ({"seeds": 0}, "seeds"), ({"value": "fast"}, "value"),
])
def test_threshold_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.threshold(**{"value": 1.5, "threshold": 1.0, "direction": ">", "key": "speedup", **kwargs})


def test_not_tested_carries_why_and_what_would_tell():
    ev = _plain(E.not_tested("The GPU profile is needed for 1B tokens.", "Run the gpu profile."))
    assert (ev.verdict, ev.seeds, ev.value, ev.knife_edge) == (E.NOT_TESTED, None, None, False)
    assert ev.would_tell == "Run the gpu profile."
    with pytest.raises(ValueError, match="why"):
        E.not_tested("  ", "Run it.")


def test_all_of_refutes_on_any_part_decides_on_the_first_undecided_and_shows_a_knife_edge():
    sharp = E.threshold(0.95, 0.8, direction=">", key="share of the drop")
    edge = E.threshold(0.797, 0.8, direction=">", key="share of the drop")
    near = E.threshold(0.05, 0.1, direction="<", key="final loss / ln V")
    noisy = E.trend(X, _curve(0.0, 0.2), expect="flat", tolerance=0.02)
    assert noisy.verdict == E.NOT_DISTINGUISHABLE
    both = _plain(E.all_of({"sharp": sharp, "near zero": near}))
    assert both.verdict == E.REPRODUCED and not both.knife_edge and "sharp: reproduced" in both.sentence
    on_edge = _plain(E.all_of({"near zero": near, "sharp": E.threshold(0.81, 0.8, direction=">", key="s")}))
    assert on_edge.verdict == E.REPRODUCED and on_edge.knife_edge and on_edge.details["deciding_part"] == "sharp"
    refuted = _plain(E.all_of({"plateau": noisy, "sharp": edge, "near zero": near}))
    assert (refuted.verdict, refuted.details["deciding_part"]) == (E.REFUTED, "sharp") and refuted.knife_edge
    undecided = _plain(E.all_of({"sharp": sharp, "plateau": noisy}))
    assert (undecided.verdict, undecided.reason) == (E.NOT_DISTINGUISHABLE, noisy.reason)
    assert undecided.would_tell == noisy.would_tell
    with pytest.raises(ValueError, match="non-empty dict"):
        E.all_of({})


def test_at_least_as_good_within_the_tolerance_is_reproduced_and_clearly_worse_is_refuted():
    equal = {"none": [1.0, 0.996, 1.0], "rope": [1.0, 1.0, 0.998], "learned": [0.998, 1.0, 1.0]}
    ev = E.at_least_as_good(equal, "none", tolerance=0.02)
    assert ev.verdict == E.REPRODUCED and ev.reason == "within-tolerance" and ev.threshold == -0.02
    assert ev.margin > 0 and "at least as good" in ev.sentence
    worse = {"none": [0.80, 0.82, 0.81], "rope": [0.99, 1.0, 0.98], "learned": [0.9, 0.91, 0.9]}
    ev = E.at_least_as_good(worse, "none", tolerance=0.02)
    assert ev.verdict == E.REFUTED and ev.reason == "worse-beyond-tolerance"
    assert ev.key == "gap none minus rope" and math.isclose(ev.value, -0.18) and ev.margin > 0
    better = {"none": [0.9, 0.91, 0.92], "rope": [0.5, 0.55, 0.52]}
    assert E.at_least_as_good(better, "none", tolerance=0.02).verdict == E.REPRODUCED


def test_at_least_as_good_undecided_by_noise_or_too_few_seeds():
    noisy = {"none": [0.7, 1.0, 0.85], "rope": [0.95, 0.9, 1.0]}
    ev = E.at_least_as_good(noisy, "none", tolerance=0.02)
    assert ev.verdict == E.NOT_DISTINGUISHABLE and ev.reason == "inside-seed-spread" and ev.would_tell
    two = {"none": [1.0, 1.0], "rope": [1.0, 1.0]}
    assert E.at_least_as_good(two, "none", tolerance=0.02).reason == "too-few-seeds"


def test_at_least_as_good_lower_is_better_flips_the_direction():
    losses = {"none": [2.0, 2.01, 2.02], "rope": [1.5, 1.52, 1.51]}   # rope's loss is lower: none is worse
    assert E.at_least_as_good(losses, "none", tolerance=0.05, higher_is_better=False).verdict == E.REFUTED
    assert E.at_least_as_good(losses, "rope", tolerance=0.05, higher_is_better=False).verdict == E.REPRODUCED


@pytest.mark.parametrize("values, claimed, kwargs, match", [
    ({"none": [1, 1, 1]}, "none", {"tolerance": 0.1}, "at least one other"),
    ({"none": [1, 1, 1], "rope": [1, 1, 1]}, "learned", {"tolerance": 0.1}, "'learned'"),
    ({"none": [1, 1, 1], "rope": [1, 1, 1]}, "none", {"tolerance": 0}, "tolerance"),
    ({"none": [1, 1, 1], "rope": [1, 1]}, "none", {"tolerance": 0.1}, "paired=True"),
])
def test_at_least_as_good_rejects_bad_input(values, claimed, kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.at_least_as_good(values, claimed, **kwargs)
