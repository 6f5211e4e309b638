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
    assert list(raw) == ["lesson", "profile", "data", "wall_time_s", "time_s", "torch", "threads", "claims",
                         "metrics"]
    assert raw["lesson"] == "04_transformer" and raw["profile"] == "smoke"
    assert raw["data"] == {"TinyStories": "TinyStories: 2 stories from a test",
                           "3seqs": "3seqs: 3 lines from data/3seqs.txt"}
    assert raw["torch"] == torch.__version__ and raw["threads"] == torch.get_num_threads()
    assert isinstance(raw["wall_time_s"], float) and raw["wall_time_s"] >= 0
    assert [c["id"] for c in raw["claims"]] == ["R1", "R2"]  # replaced in place, not duplicated
    assert raw["claims"][0] == {"id": "R1", "report_says": "Loss falls.", "measured": {"loss": 2.5},
                                "verdict": "refuted", "seeds": 4}
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


def test_report_has_a_row_per_claim_with_its_verdict_and_escapes_pipes(results_in_tmp):
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
    claim_rows = [row for row in rows if row.count("|") - row.count("\\|") == 9]
    assert [row.split(" | ")[:2] for row in claim_rows] == [
        ["| 01_sanity_checks", "R1"], ["| 04_transformer", "R2"], ["| 04_transformer", "R10"]]
    r2 = claim_rows[1]
    assert "Loss \\| perplexity<br>both fall. (rule: ppl < 2e4)" in r2
    assert "ppl=1.235e+04, n=50257" in r2
    assert " | reproduced | 5 | smoke | TinyStories: 20 stories; own: 3 lines from mine.txt |" in r2
    assert "x=3.142" in claim_rows[2] and "| refuted | 3 |" in claim_rows[2]
    assert "| not distinguishable at this budget | 3 |" in claim_rows[0] and "nan=null" in claim_rows[0]
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
    assert "| 04_transformer | R1 | x | y=1 | reproduced | 1 | smoke |" in (
        results_in_tmp / "REPORT.md").read_text(encoding="utf-8")


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
