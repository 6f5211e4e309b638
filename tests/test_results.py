import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from picollm_helpers import results as R
from picollm_helpers.data import Corpus
from picollm_helpers.results import LessonResults, record_result, render_report, write_report


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOLLM_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PICOLLM_PROFILE", "smoke")
    monkeypatch.setattr(R, "_open", {})  # no lesson left open by another test
    return tmp_path / "results"


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_env_override_directs_files_to_the_given_folder(results_in_tmp):
    r = LessonResults("04_transformer")
    path = r.save()
    assert path == results_in_tmp / "04_transformer.json"
    assert path.is_file()
    assert R.results_dir() == results_in_tmp


def test_round_trip_keeps_the_schema_and_replaces_a_claim_by_id(results_in_tmp):
    r = LessonResults("04_transformer")
    r.data("TinyStories", Corpus(["a", "b"], "TinyStories: 2 stories from a test"))
    r.data("3seqs", "3seqs: 3 lines from data/3seqs.txt")
    r.claim("R1", "Loss falls.", measured={"loss": 1.5}, verdict="reproduced", seeds=3, rule="loss < 2")
    r.claim("R2", "Heads specialise.", verdict="not tested")
    r.claim("R1", "Loss falls.", measured={"loss": 2.5}, verdict="refuted", seeds=4)
    r.metric("params", 1234)
    raw = read(r.save())
    assert list(raw) == ["lesson", "profile", "data", "wall_time_s", "time_s", "torch", "threads", "cpu",
                         "claims", "metrics"]
    assert raw["lesson"] == "04_transformer" and raw["profile"] == "smoke"
    assert raw["data"] == {"TinyStories": "TinyStories: 2 stories from a test",
                           "3seqs": "3seqs: 3 lines from data/3seqs.txt"}
    assert raw["torch"] == torch.__version__ and raw["threads"] == torch.get_num_threads()
    assert isinstance(raw["wall_time_s"], float) and raw["wall_time_s"] >= 0
    assert [c["id"] for c in raw["claims"]] == ["R1", "R2"]  # replaced in place, not duplicated
    assert raw["claims"][0] == {"id": "R1", "kind": "lesson", "report_says": "Loss falls.", "verdict": "refuted",
                                "seeds": 4, "measured": {"loss": 2.5}}
    assert raw["claims"][1]["seeds"] is None
    assert raw["metrics"] == {"params": 1234}

    back = LessonResults.load(r.path)
    assert back.to_dict() == raw
    assert record_result("04_transformer", "R2", "Heads specialise.", {"score": 0.9},
                         verdict="reproduced", seeds=2) == r.path  # goes to the open lesson
    assert [c["verdict"] for c in read(r.path)["claims"]] == ["refuted", "reproduced"]


def test_record_result_updates_the_file_of_a_lesson_not_open_in_this_process(results_in_tmp):
    record_result("05_overfitting", "R1", "Overfits.", {"gap": 0.5}, verdict="reproduced", seeds=3)
    record_result("05_overfitting", "R2", "Underfits.", verdict="not tested")
    record_result("05_overfitting", "R1", "Overfits.", {"gap": 0.1}, verdict="refuted", seeds=3)
    raw = read(results_in_tmp / "05_overfitting.json")
    assert [(c["id"], c["verdict"]) for c in raw["claims"]] == [("R1", "refuted"), ("R2", "not tested")]
    assert raw["wall_time_s"] is None  # no lesson clock was started


def test_a_bad_verdict_names_the_value_and_the_allowed_ones():
    r = LessonResults("04_transformer")
    with pytest.raises(ValueError) as e:
        r.claim("R1", "Loss falls.", measured={"loss": 1.0}, verdict="confirmed", seeds=3)
    msg = str(e.value)
    assert "'confirmed'" in msg
    for verdict in R.VERDICTS:
        assert repr(verdict) in msg
    assert r.claims == []


@pytest.mark.parametrize("seeds", [0, -1, 1.5, True, "3"])
def test_seeds_must_be_a_positive_int(seeds):
    with pytest.raises(ValueError, match="seeds"):
        LessonResults("04_transformer").claim("R1", "x", verdict="reproduced", seeds=seeds)


def test_a_tested_verdict_needs_seeds():
    with pytest.raises(ValueError, match="seeds"):
        LessonResults("04_transformer").claim("R1", "x", verdict="reproduced")


@pytest.mark.parametrize("lesson", ["transformer", "4_transformer", "04-transformer", "04_", ""])
def test_lesson_names_must_look_like_NN_name(lesson):
    with pytest.raises(ValueError, match="NN_name"):
        LessonResults(lesson)


def test_numpy_and_torch_values_become_plain_json_and_nan_is_noted():
    r = LessonResults("04_transformer")
    r.claim("R1", "x", measured={"np_f": np.float32(0.25), "np_i": np.int64(7), "np_b": np.bool_(True),
                                 "t": torch.tensor(1.5), "arr": np.array([1.0, 2.0]),
                                 "tens": torch.tensor([[1, 2]]), "tup": (1, 2.5),
                                 "nan": float("nan"), "inf": torch.tensor(float("inf"))},
            verdict="reproduced", seeds=np.int64(3))
    raw = read(r.path)["claims"][0]
    m = raw["measured"]
    assert m == {"np_f": 0.25, "np_i": 7, "np_b": True, "t": 1.5, "arr": [1.0, 2.0], "tens": [[1, 2]],
                 "tup": [1, 2.5], "nan": None, "inf": None}
    assert type(m["np_f"]) is float and type(m["np_i"]) is int and type(m["np_b"]) is bool
    assert raw["seeds"] == 3
    assert any("measured.nan" in n for n in raw["notes"]) and any("measured.inf" in n for n in raw["notes"])


def test_unstorable_values_are_refused_by_name():
    with pytest.raises(TypeError, match="measured.model"):
        LessonResults("04_transformer").claim("R1", "x", measured={"model": object()}, verdict="not tested")


def test_report_has_a_short_row_per_claim_in_id_order_and_escapes_pipes(results_in_tmp):
    a = LessonResults("04_transformer")
    a.data("TinyStories", "TinyStories: 20 stories")
    a.data("own", "3 lines from mine.txt")
    a.claim("R10", "Ten.", measured={"x": 3.14159265}, verdict="refuted", seeds=3)
    a.claim("R2", "Loss | perplexity\nboth fall.", measured={"ppl": 12345.678, "n": 50257},
            verdict="reproduced", seeds=5, rule="ppl < 2e4")
    b = LessonResults("01_sanity_checks")
    b.claim("R1", "One.", measured={"nan": float("nan")}, verdict="not distinguishable at this budget", seeds=3)
    text = write_report().read_text(encoding="utf-8")

    rows = [line for line in text.splitlines() if line.startswith("| 0")]
    claim_rows = [row for row in rows if row.count("|") - row.count("\\|") == 8]
    assert [row.split(" | ")[1] for row in claim_rows] == ["R1", "R2", "R10"]  # lessons by name, R2 before R10
    assert claim_rows[0].startswith("| 01_sanity_checks[^01_sanity_checks] | R1 | One. | "
                                    "not distinguishable (unstated) | - | 3 |  |")
    assert claim_rows[1] == ("| 04_transformer[^04_transformer] | R2 | Loss \\| perplexity<br>both fall. | "
                             "reproduced | - | 5 |  |")
    assert claim_rows[2] == "| 04_transformer | R10 | Ten. | refuted | - | 3 |  |"
    assert "- Measured: ppl=1.235e+04; n=50257" in text and "- Rule: ppl < 2e4" in text  # in the details
    assert "- Measured: nan=null" in text and "measured.nan was nan; stored as null" in text
    assert write_report().read_text(encoding="utf-8") == text  # deterministic


def test_report_with_no_results_says_so(results_in_tmp):
    text = write_report().read_text(encoding="utf-8")
    assert "No results yet" in text and "| lesson |" not in text
    assert render_report([]) == text


def test_report_names_a_broken_results_file(results_in_tmp):
    results_in_tmp.mkdir()
    (results_in_tmp / "04_transformer.json").write_text(json.dumps(
        {"lesson": "04_transformer", "claims": [{"id": "R1", "report_says": "x", "verdict": "maybe"}]}))
    with pytest.raises(ValueError, match=r"04_transformer\.json.*'maybe'"):
        write_report()


def test_python_dash_m_writes_the_report(results_in_tmp, monkeypatch):
    record_result("04_transformer", "R1", "x", {"y": 1}, verdict="reproduced", seeds=1)
    out = subprocess.run([sys.executable, "-m", "picollm_helpers.results"], capture_output=True,
                         text=True, check=True)
    assert "1 lesson results file" in out.stdout
    assert "| 04_transformer[^04_transformer] | R1 | x | reproduced | - | 1 |  |" in (
        results_in_tmp / "REPORT.md").read_text(encoding="utf-8")
    assert "report_card.png: the report card" in out.stdout and (results_in_tmp / "report_card.png").is_file()


def test_a_lesson_records_where_its_time_went_nested_phases_counted_once(results_in_tmp, monkeypatch):
    import time

    from picollm_helpers import timing

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])  # one clock for timing and results
    r = LessonResults("04_transformer")                         # the lesson starts at t = 0
    now[0] = 10.0
    with timing.phase("train"):                                 # 10 .. 20, of which 11 .. 14 evaluating
        now[0] = 11.0
        with timing.phase("evaluate"):
            now[0] = 14.0
        now[0] = 20.0
    now[0] = 30.0
    with timing.phase("plot"):                                  # 30 .. 31
        now[0] = 31.0
    now[0] = 33.0
    with timing.phase("generate"):                              # 33 .. 50
        now[0] = 50.0
    now[0] = 60.0
    raw = json.loads(r.save().read_text())
    assert raw["wall_time_s"] == 60.0
    assert raw["time_s"] == {"train": 7.0, "evaluate": 3.0, "generate": 17.0, "plot": 1.0, "other": 32.0}


def test_train_evaluate_generate_and_figures_run_in_their_phases():
    from picollm_helpers import plots, sampling, timing, training

    for fn, name in [(training.train, "train"), (training.evaluate, "evaluate"), (sampling.generate, "generate"),
                     (plots.png_bytes, "plot")]:
        before = timing.phase_totals()[name]
        try:
            fn(None, None) if name != "generate" else fn(None, None, None, 1)
        except Exception:
            pass  # the arguments are wrong on purpose: the phase still closes and counts the time
        assert timing.phase_totals()[name] > before, f"{fn.__name__} does not run inside phase {name!r}"
    assert timing._phase_stack == []


def test_an_unknown_phase_is_refused_by_name():
    from picollm_helpers import timing

    with pytest.raises(ValueError, match="'training' is not one of train, evaluate, generate, plot"):
        timing.phase("training")


def test_the_report_shows_where_each_lessons_time_went(results_in_tmp):
    r = LessonResults("03_top_p_sampling")
    r.save()
    raw = json.loads(r.path.read_text())
    raw["time_s"] = {"train": 100.0, "evaluate": 5.0, "generate": 20.0, "plot": 2.0, "other": 3.0}
    raw["wall_time_s"] = 130.0
    r.path.write_text(json.dumps(raw))
    text = render_report([LessonResults.load(r.path)])
    row = next(line for line in text.splitlines() if line.startswith("| 03_top_p_sampling |") and "2 min" in line)
    assert "| 2 min 10 s | 1 min 40 s | 5.0 s | 20.0 s | 2.0 s | 3.0 s |" in row


def test_the_readme_minutes_block_is_rewritten_from_laptop_results_only(tmp_path):
    def lesson(name, wall, profile="laptop"):
        r = LessonResults(name)
        r.profile, r.wall_time_s = profile, wall
        r.time_s = {"train": wall - 10, "evaluate": 4.0, "generate": 1.0, "plot": 1.0, "other": 4.0}
        return r
    readme = tmp_path / "README.md"
    readme.write_text(f"# Kit\n\nintro\n\n{R.README_BEGIN} old -->\n| stale |\n{R.README_END}\n\n## Next\n")
    lessons = [lesson("02_kgram_mlp", 90.0), lesson("01_sanity_checks", 30.0)]
    assert R.update_readme(readme, lessons) == "README.md: minutes table rewritten"
    text = readme.read_text()
    assert text.startswith("# Kit\n\nintro\n\n") and text.endswith(f"{R.README_END}\n\n## Next\n")
    assert "| stale |" not in text and "All 2 lessons in sequence: 2 minutes." in text
    assert text.index("| 01_sanity_checks | laptop | 30.0 s | 20.0 s |") < text.index("| 02_kgram_mlp |")
    assert R.update_readme(readme, lessons) == "README.md: its minutes table is up to date"
    smoke = [lesson("01_sanity_checks", 3.0, profile="smoke")]
    assert "left as is" in R.update_readme(readme, smoke) and readme.read_text() == text
    readme.write_text("no markers\n")
    assert "no minutes markers" in R.update_readme(readme, lessons) and readme.read_text() == "no markers\n"


# ----------------------------------------------------------------------------------------------
# Claims decided by the rules (an Evidence), kinds and summaries, the old calls

def planted(verdict="not distinguishable", reason="inside-seed-spread", value=0.02, threshold=0.029,
            margin=-0.009, seeds=3, **kw):
    from picollm_helpers.evidence import Evidence

    return Evidence(rule="compare", verdict=verdict, reason=reason, key="gap", value=value, threshold=threshold,
                    margin=margin, seeds=seeds, sentence=kw.pop("sentence", "The gap lies inside the seed spread."),
                    would_tell=kw.pop("would_tell", "6 seeds would separate a gap of 0.02."),
                    details=kw.pop("details", {"mean": {"pre": np.float64(3.1), "post": 3.12}, "per_seed": [1, 2, 3]}))


def test_an_evidence_claim_records_the_rules_result_with_its_numbers(results_in_tmp):
    r = LessonResults("08_pre_post_norm")
    ev = planted()
    r.claim("Q7", "Across all epochs, both training and test losses for the post-norm variant are lower than for "
                  "the pre-norm one.", ev, kind="report", summary="Post-norm reaches lower losses than pre-norm.",
            measured={"epochs": 3})
    c = read(r.path)["claims"][0]
    assert c == {"id": "Q7", "kind": "report", "summary": "Post-norm reaches lower losses than pre-norm.",
                 "report_says": c["report_says"], "verdict": "not distinguishable", "reason": "inside-seed-spread",
                 "seeds": 3, "rule": "compare", "key": "gap", "value": 0.02, "threshold": 0.029, "margin": -0.009,
                 "knife_edge": False, "sentence": "The gap lies inside the seed spread.",
                 "would_tell": "6 seeds would separate a gap of 0.02.",
                 "measured": {"mean": {"pre": 3.1, "post": 3.12}, "per_seed": [1, 2, 3], "epochs": 3}}
    assert {k: c[k] for k in ev.to_dict() if k != "details"} == {k: v for k, v in ev.to_dict().items()
                                                                  if k != "details"}
    back = LessonResults.load(r.path)
    assert back.to_dict() == read(r.path)  # loads unchanged, the knife edge recomputed the same

    edge = planted(verdict="reproduced", reason="gap-beyond-spread", value=0.041, threshold=0.04, margin=0.001)
    assert edge.knife_edge
    record_result("08_pre_post_norm", "control-warmup", "A deep post-norm model needs warmup.", edge)
    c2 = read(r.path)["claims"][1]
    assert c2["kind"] == "control" and c2["knife_edge"] is True and c2["summary"] == c2["report_says"]
    assert c2["verdict"] == "reproduced" and c2["reason"] == "gap-beyond-spread"


def test_an_evidence_claim_takes_its_verdict_from_the_evidence_only():
    r = LessonResults("08_pre_post_norm")
    with pytest.raises(TypeError, match="drop verdict=, seeds="):
        r.claim("Q7", "Short claim.", planted(), verdict="reproduced", seeds=3)
    with pytest.raises(ValueError, match=r"measured repeats the rule's own numbers \['per_seed'\]"):
        r.claim("Q7", "Short claim.", planted(), measured={"per_seed": [4]})
    with pytest.raises(TypeError, match="Evidence .* or a dict of measured numbers, not str"):
        r.claim("Q7", "Short claim.", "reproduced")
    assert r.claims == []


def test_a_summary_is_at_most_15_words():
    r = LessonResults("04_transformer")
    long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    with pytest.raises(ValueError, match="report_says has 16 words; pass summary="):
        r.claim("R1", long, planted())                          # a rule's claim needs a short form
    with pytest.raises(ValueError, match="has 16 words; say the claim in at most 15 words"):
        r.claim("R1", long, planted(), summary=long)
    with pytest.raises(ValueError, match="has 16 words"):
        r.claim("R1", long, verdict="not tested", summary=long)  # checked on the old path too
    with pytest.raises(ValueError, match="kind='paper' is not one of 'report', 'lesson', 'control'"):
        r.claim("R1", "Short.", planted(), kind="paper")
    assert r.claims == []
    r.claim("R1", long, planted(), summary=" ".join(long.split()[:15]))
    assert r.claims[0]["summary"].split()[-1] == "fifteen"


def test_old_calls_still_work_with_kind_inferred_and_the_old_undecided_verdict_mapped(results_in_tmp):
    r = LessonResults("07_interpretability")
    r.claim("control-induction", "Induction heads form.", measured={"score": 0.9}, verdict="reproduced", seeds=3,
            rule="score > 0.5")
    r.claim("R-Q5", "Heads specialise.", measured={"x": 1}, verdict="not distinguishable at this budget", seeds=1)
    r.claim("Q5-h1", "Head 1 tracks entities.", verdict="not tested")
    r.claim("story-induction", "Stories show induction.", {"score": 0.2}, verdict="refuted", seeds=1)
    r.claim("probe", "Probes read position.", verdict="not distinguishable", reason="too-few-seeds", seeds=1)
    claims = {c["id"]: c for c in read(r.path)["claims"]}
    assert {i: c["kind"] for i, c in claims.items()} == {
        "control-induction": "control", "R-Q5": "report", "Q5-h1": "report", "story-induction": "lesson",
        "probe": "lesson"}
    assert (claims["R-Q5"]["verdict"], claims["R-Q5"]["reason"]) == ("not distinguishable", "unstated")
    assert claims["story-induction"]["measured"] == {"score": 0.2}  # a dict as the third argument
    assert "reason" not in claims["control-induction"] and claims["control-induction"]["rule"] == "score > 0.5"
    with pytest.raises(ValueError, match="a 'not distinguishable' verdict needs reason= one of"):
        r.claim("probe", "Probes read position.", verdict="not distinguishable", seeds=1)
    text = render_report([r])
    assert "| R-Q5 | Heads specialise. | not distinguishable (unstated) |" in text
    assert "`unstated`: unstated (recorded before the decision rules)" in text
    assert "`too-few-seeds`: too few seeds to estimate the spread" in text


def test_a_results_file_written_before_the_rules_loads(results_in_tmp):
    results_in_tmp.mkdir()
    old = {"lesson": "05_overfitting", "profile": "laptop", "data": {"TinyStories": "TinyStories: 3 stories"},
           "wall_time_s": 12.0, "time_s": {}, "torch": "2.13.0+cpu", "threads": 2,
           "claims": [{"id": "Q2-overfit", "report_says": "The test loss " + "rises " * 20 + "at the end.",
                       "measured": {"gap": 0.1}, "verdict": "not distinguishable at this budget", "seeds": 1,
                       "rule": "gap > spread"},
                      {"id": "control-memorise", "report_says": "It memorises.", "measured": {},
                       "verdict": "reproduced", "seeds": 3}],
           "metrics": {}}
    (results_in_tmp / "05_overfitting.json").write_text(json.dumps(old))
    r = LessonResults.load(results_in_tmp / "05_overfitting.json")
    assert r.cpu is None
    assert [(c["kind"], c["verdict"], c.get("reason")) for c in r.claims] == [
        ("report", "not distinguishable", "unstated"), ("control", "reproduced", None)]
    text = render_report([r])
    row = next(line for line in text.splitlines() if "| Q2-overfit |" in line)
    assert "| The test loss" + " rises" * 11 + " … |" in row  # its first 14 words
    assert len(row) < 200
    assert "CPU not recorded" in text and "| 2.13.0+cpu | 2 | not recorded |" in text


# ----------------------------------------------------------------------------------------------
# The report: summary first, three sections, details, footnotes, the report card

def _three_lessons():
    a = LessonResults("04_transformer")
    a.data("stories", "TinyStories: 2000 stories from the kit's story generator")
    a.claim("R-stories", "The test loss flattens.", planted(), kind="report")
    a.claim("ranking", "The transformer beats the LSTM.", verdict="reproduced", seeds=1, measured={"gap": 0.3})
    a.claim("control-overfit", "A tiny set is memorised.",
            planted(verdict="reproduced", reason="gap-beyond-spread", value=0.041, threshold=0.04, margin=0.001))
    b = LessonResults("08_pre_post_norm")
    b.data("stories", "TinyStories: 4000 stories from the kit's story generator")
    b.claim("Q7", "Post-norm is lower.", planted(verdict="refuted", reason="gap-beyond-spread", value=-0.2,
                                                 threshold=0.03, margin=-0.23), kind="report")
    b.claim("Q7-h1", "Head 1 tracks entities.", verdict="not tested")
    return [a, b]


def test_report_summary_first_counts_sections_details_and_one_footnote_per_lesson(results_in_tmp):
    lessons = _three_lessons()
    text = render_report(lessons, card=True)
    order = [text.index(s) for s in ("![Report card", "**5 claims: 2 reproduced, 1 refuted, 1 not distinguishable, "
                                     "1 not tested; 1 on a knife edge**", "## Summary",
                                     "### The pico-llm report's claims", "### The lessons' own claims",
                                     "### Positive controls", "## Details", "## Runs", "[^04_transformer]: ")]
    assert order == sorted(order)
    assert "| The pico-llm report's claims | 0 | 1 | 1 | 1 | 0 | 3 |" in text
    assert "| The lessons' own claims | 1 | 0 | 0 | 0 | 0 | 1 |" in text
    assert "| Positive controls | 1 | 0 | 0 | 0 | 1 | 1 |" in text and "| **All** | 2 | 1 | 1 | 1 | 1 | 5 |" in text

    def section(title):
        part = text.split(f"### {title}")[1].split("###")[0]
        return [line.split(" | ")[1] for line in part.splitlines() if line.startswith("| 0")]
    assert section("The pico-llm report's claims") == ["R-stories", "Q7", "Q7-h1"]
    assert section("The lessons' own claims") == ["ranking"]
    assert section("Positive controls") == ["control-overfit"]
    assert ("| 04_transformer[^04_transformer] | R-stories | The test loss flattens. | "
            "not distinguishable (inside-seed-spread) | gap 0.02 vs 0.029 | 3 |  |") in text
    assert "| control-overfit | A tiny set is memorised. | reproduced | gap 0.041 vs 0.04 | 3 | ⚠ |" in text
    assert "| Q7 | Post-norm is lower. | refuted | gap -0.2 vs 0.03 | 3 |  |" in text
    # details: the sentence, what would tell, the key number with its margin and rule
    assert "**R-stories** (report): **not distinguishable (inside-seed-spread)**, 3 seeds." in text
    assert "- Found: The gap lies inside the seed spread." in text
    assert "- What would tell: 6 seeds would separate a gap of 0.02." in text
    assert "- Key number: gap 0.02 vs 0.029, margin -0.009 (rule `compare`)" in text
    assert "- Why undecided: the difference lies inside the spread over seeds" in text
    # the data line once per lesson, in its footnote; rows stay short
    for line in ("TinyStories: 2000 stories from the kit's story generator",
                 "TinyStories: 4000 stories from the kit's story generator"):
        assert text.count(line) == 1
    footnotes = [line for line in text.splitlines() if line.startswith("[^")]
    assert [f.split("]:")[0] for f in footnotes] == ["[^04_transformer", "[^08_pre_post_norm"]
    assert "ran in the smoke profile (torch" in footnotes[0]
    assert max(len(line) for line in text.splitlines() if line.startswith("| 0")) < 160


def test_a_long_measured_value_is_summarised_not_dumped(results_in_tmp):
    r = LessonResults("08_pre_post_norm")
    grid = [{"lr": 0.003, "seed": s, "final train loss": 3.0 + s / 1000, "trains": True} for s in range(36)]
    r.claim("xiong-warmup", "Post-norm needs warmup.", measured={"grid": grid, "curve": list(np.linspace(3, 1, 200)),
                                                                   "by_name": {f"k{i}": i for i in range(12)}},
            verdict="reproduced", seeds=3)
    text = render_report([r])
    line = next(line for line in text.splitlines() if line.startswith("- Measured:"))
    assert "grid=36 records, first: {lr=0.003, seed=0, final train loss=3, trains=true}" in line
    assert "curve=200 values: [3, 2.99, 2.98, …]" in line
    assert "by_name={k0=0, k1=1, k2=2, k3=3, … 12 entries}" in line
    assert "3.035" not in text and "k11" not in text and len(line) < 300


def test_each_file_records_its_cpu_and_the_minutes_tables_show_it(results_in_tmp, monkeypatch, tmp_path):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    r = LessonResults("01_sanity_checks")
    cpu = read(r.save())["cpu"]
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["limits"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert isinstance(cpu["model"], str) and cpu["model"].strip()
    assert LessonResults.load(r.path).cpu == cpu
    r.cpu = {"model": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", "capability": "AVX512",
             "limits": {"ATEN_CPU_CAPABILITY": "avx2"}}
    cell = "Intel Xeon Platinum 8480+ (AVX512; ATEN_CPU_CAPABILITY=avx2)"
    assert f"| {cell} |" in R.minutes_table([r]) and "| threads | CPU |" in R.minutes_table([r])
    r.profile, r.wall_time_s = "laptop", 60.0
    readme = tmp_path / "README.md"
    readme.write_text(f"{R.README_BEGIN} -->\n{R.README_END}\n")
    R.update_readme(readme, [r])
    assert f"| {cell} |" in readme.read_text()


def png_size(path):
    """(width, height) from a PNG's IHDR chunk."""
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_report_card_is_drawn_taller_for_more_claims(results_in_tmp):
    lessons = _three_lessons()
    path = write_report()
    card = results_in_tmp / "report_card.png"
    assert card.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and card.stat().st_size > 10_000
    assert "![Report card: each claim and its verdict](report_card.png)" in path.read_text(encoding="utf-8")
    w5, h5 = png_size(card)
    for i in range(10):
        lessons[1].claim(f"Q{10 + i}", "Another claim.", verdict="reproduced", seeds=1)
    write_report()
    w15, h15 = png_size(card)
    assert w15 == w5 and h15 > h5 + 10 * 20  # a row per claim, the width fixed (README width)
    fig = R.report_card(lessons)
    title = " ".join(t.get_text() for t in fig.texts)
    assert "15 claims: 12 reproduced · 1 refuted · 1 not distinguishable · 1 not tested · 1 knife edge" in title


def test_no_claims_no_card(results_in_tmp):
    LessonResults("01_sanity_checks").save()
    text = write_report().read_text(encoding="utf-8")
    assert not (results_in_tmp / "report_card.png").exists() and "report_card.png" not in text
