import json

import numpy as np
import pytest
import torch

from picollm_helpers import expect as X
from picollm_helpers.data import Corpus
from picollm_helpers.expect import band_from_runs, expect, load_bands, set_band


@pytest.fixture
def bands_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOLLM_PROFILE", "laptop")
    path = tmp_path / "bands.json"
    set_band("04_transformer.test_loss", "synthetic", "laptop", [1.80, 1.85, 1.90], source="seeds 0-2, laptop",
             what="the final test loss (nats/token)",
             cause_if_low="more epochs than the profile, or a smaller test split",
             cause_if_high="another seed: bands cover seeds 0-2; or fewer epochs than the profile", path=path)
    return path


def test_band_from_runs_is_mean_plus_minus_three_sd_or_the_floor():
    b = band_from_runs([1.0, 2.0, 3.0])                 # mean 2, sd 1: 3 sd wins
    assert (b["low"], b["high"], b["mean"], b["sd"], b["n"], b["half_width"]) == (-1.0, 5.0, 2.0, 1.0, 3, 3.0)
    b = band_from_runs([2.0, 2.0001, 2.0002])            # sd tiny: the 2% floor wins
    assert b["half_width"] == pytest.approx(0.04, rel=1e-3) and b["low"] == pytest.approx(1.96, rel=1e-4)
    assert band_from_runs([2.0, 2.0], floor=0.5)["high"] == 2.5
    assert band_from_runs(np.array([1.0, 1.0]), rel_floor=0.1)["low"] == 0.9
    for bad in ([1.0], [1.0, float("nan")], []):
        with pytest.raises(ValueError, match="at least 2 finite values"):
            band_from_runs(bad)


def test_set_band_writes_a_computed_entry(bands_file):
    raw = json.loads(bands_file.read_text())
    entry = raw["bands"]["04_transformer.test_loss"]["synthetic"]["laptop"]
    assert entry["low"] == pytest.approx(1.85 - 0.15) and entry["high"] == pytest.approx(1.85 + 0.15)
    assert entry["n"] == 3 and entry["from"] == "seeds 0-2, laptop"
    assert raw["bands"]["04_transformer.test_loss"]["what"] == "the final test loss (nats/token)"
    set_band("04_transformer.test_loss", "tinystories", "laptop", [2.5, 2.6], source="two seeds", cause_if_low="x",
             cause_if_high="y", path=bands_file)
    assert set(load_bands(bands_file)["04_transformer.test_loss"]) == {"what", "synthetic", "tinystories"}
    with pytest.raises(ValueError, match="data='wiki' is not one of 'synthetic', 'tinystories'"):
        set_band("n", "wiki", "laptop", [1, 2], source="s", cause_if_low="x", cause_if_high="y", path=bands_file)
    with pytest.raises(ValueError, match="cause_if_high=''"):
        set_band("n", "synthetic", "laptop", [1, 2], source="s", cause_if_low="x", cause_if_high="", path=bands_file)


def test_inside_the_band(bands_file, capsys):
    e = expect("04_transformer.test_loss", torch.tensor(1.87), bands=load_bands(bands_file))
    assert e.status == "inside" and e.ok is True and e.cause is None
    out = capsys.readouterr().out
    assert out.startswith("04_transformer.test_loss = 1.87: inside the band 1.7 to 2 (laptop profile, synthetic "
                          "stories; from seeds 0-2, laptop).")


def test_outside_the_band_says_the_usual_cause(bands_file, capsys):
    bands = load_bands(bands_file)
    high = expect("04_transformer.test_loss", 2.3, bands=bands)
    assert (high.status, high.ok, high.high) == ("high", False, 2.0)
    assert "ABOVE the band 1.7 to 2" in capsys.readouterr().out
    assert high.cause == "another seed: bands cover seeds 0-2; or fewer epochs than the profile"
    low = expect("04_transformer.test_loss", 1.2, bands=bands, quiet=True)
    assert low.status == "low" and "BELOW" in str(low) and low.cause.startswith("more epochs")
    assert capsys.readouterr().out == ""  # quiet
    nan = expect("04_transformer.test_loss", float("nan"), bands=bands, quiet=True)
    assert nan.status == "not finite" and nan.ok is False and "diverged" in str(nan)


def test_no_band_for_the_profile_or_the_data(bands_file, monkeypatch):
    bands = load_bands(bands_file)
    monkeypatch.setenv("PICOLLM_PROFILE", "smoke")
    e = expect("04_transformer.test_loss", 5.0, bands=bands, quiet=True)
    assert e.status == "no band" and e.ok is None
    assert "no band for the smoke profile on synthetic stories (bands for: laptop)" in str(e)
    real = Corpus(["a story"], "TinyStories: 1 stories from the Hugging Face hub")
    e = expect("04_transformer.test_loss", 2.0, data=real, profile="laptop", bands=bands, quiet=True)
    assert e.status == "no band" and e.data == "tinystories" and "real TinyStories (bands for: none)" in str(e)
    wiki = Corpus(["text"], "Wiki: 600 lines of Python's own documentation")
    e = expect("04_transformer.test_loss", 2.0, data=wiki, profile="laptop", bands=bands, quiet=True)
    assert e.status == "no band" and e.data is None and "not this data" in str(e)


def test_a_synthetic_corpus_picks_the_synthetic_band(bands_file):
    stories = Corpus(["a story"], "TinyStories: 2000 stories from the kit's story generator (synthetic offline "
                                  "corpus; offline)", synthetic=True)
    assert expect("04_transformer.test_loss", 1.85, data=stories, bands=load_bands(bands_file), quiet=True).ok


def test_an_unknown_name_gets_a_message_not_an_error(bands_file, capsys):
    e = expect("04_transformer.test_los", 1.0, bands=load_bands(bands_file))
    assert e.status == "unknown name" and e.ok is None
    assert "no expected band is recorded for '04_transformer.test_los'. Did you mean '04_transformer.test_loss'?" \
        in capsys.readouterr().out
    assert "The bands file has none yet." in str(expect("x", 1.0, bands={}, quiet=True))
    with pytest.raises(ValueError, match="data='wiki'"):
        expect("x", 1.0, data="wiki", bands={})  # a typo in the call itself is an error


def test_the_packaged_bands_file_loads_and_holds_only_computed_entries():
    bands = load_bands()
    assert X.BANDS_FILE.name == "expected_bands.json"
    for name, per_data in bands.items():
        for data, per_profile in per_data.items():
            if data == "what":
                continue
            assert data in X.DATA_KINDS, name
            for profile, b in per_profile.items():
                assert {"low", "high", "mean", "sd", "n", "from", "cause_if_low", "cause_if_high"} <= set(b)
                assert b["n"] >= 2 and b["low"] < b["mean"] < b["high"], (name, data, profile)


def test_3seqs_has_bands_of_its_own(bands_file):
    """3seqs numbers (lessons 01, 02, 04) are held against a 3seqs band, never a story band."""
    set_band("02_kgram_mlp.test_loss", "3seqs", "laptop", [0.20, 0.21, 0.22], source="seeds 0-2",
             cause_if_low="a longer run", cause_if_high="a shorter run", path=bands_file)
    bands = load_bands(bands_file)
    assert expect("02_kgram_mlp.test_loss", 0.21, data="3seqs", profile="laptop", bands=bands, quiet=True).ok
    seqs_corpus = Corpus(["0 1 2"], "3seqs: 10000 integer sequences from data/3seqs.txt")
    e = expect("02_kgram_mlp.test_loss", 0.5, data=seqs_corpus, profile="laptop", bands=bands, quiet=True)
    assert (e.data, e.status) == ("3seqs", "high")
    assert expect("02_kgram_mlp.test_loss", 0.21, data="synthetic", profile="laptop", bands=bands,
                  quiet=True).status == "no band"
