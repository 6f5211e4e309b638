"""The benchmark's arithmetic (FLOP counts, MFU) and measuring tools; no timing assertions."""

import json

import pytest
import torch

from picollm_helpers import bench, timing
from picollm_helpers.bench import steps as bench_steps
from picollm_helpers.config import RunConfig
from picollm_helpers.models import KGramMLPSeqModel, LSTMSeqModel, TransformerModel, param_count_formula


def test_flop_params_excludes_lookup_tables_and_counts_lm_head():
    E, L, H, T, V = 32, 2, 4, 16, 101
    model = TransformerModel(V, E, H, L, T, pos_emb="learned")
    # per block: qkv 3E^2, proj E^2, MLP 8E^2, two norms 2E; final norm E; lm_head E V
    assert timing.flop_params(model) == L * (12 * E * E + 2 * E) + E + E * V
    cfg = RunConfig(tinystories_weight=1.0, embed_size=E, n_blocks=L, n_heads=H, block_size=T, pos_emb="learned")
    assert timing.flop_params(model) == param_count_formula("transformer", cfg, V) - V * E - T * E
    tied = TransformerModel(V, E, H, L, T, pos_emb="learned", tie_weights=True)
    assert timing.flop_params(tied) == timing.flop_params(model)  # the shared matrix still multiplies


def test_flop_params_of_lstm_and_kgram():
    V, E = 97, 16
    lstm = LSTMSeqModel(V, E)
    assert timing.flop_params(lstm) == sum(p.numel() for p in lstm.parameters()) - V * E
    kgram = KGramMLPSeqModel(V, k=3, embed_size=E)
    assert timing.flop_params(kgram) == (3 * E * E + E) + (E * E + E) + (E * V + V)
    onehot = KGramMLPSeqModel(V, k=3, embed_size=E, input_mode="onehot")  # its input layer is a matmul
    assert timing.flop_params(onehot) == sum(p.numel() for p in onehot.parameters())


def test_train_flops_per_token_is_6n_plus_attention():
    E, L, H, T, V = 256, 4, 8, 256, 50257
    model = TransformerModel(V, E, H, L, T, pos_emb="learned")
    n = L * (12 * E * E + 2 * E) + E + E * V
    assert timing.train_flops_per_token(model, T) == 6 * n + 12 * L * H * (E // H) * T
    assert timing.attention_flops_per_token(L, H, E // H, T) == 12 * L * E * T
    # The step: about 99.2 MFLOP per token, 203 GFLOP per step of 8 x 256 tokens.
    assert timing.train_flops_per_token(model, T) * 8 * T == pytest.approx(203.2e9, rel=1e-3)
    lstm = LSTMSeqModel(V, 128)
    assert timing.train_flops_per_token(lstm, 32) == 6 * timing.flop_params(lstm)  # no attention term


def test_mfu_and_row_arithmetic():
    assert timing.mfu(1e12, 2.0, 1e12) == 0.5
    assert timing.matmul_flops(2048) == 2 * 2048 ** 3
    row = bench_steps.Row("x", seconds=0.5, tokens=2048, flops=100e9, peak=400e9, memory=3 * 2 ** 20)
    assert row.tokens_per_s == 4096 and row.flops_per_s == 200e9 and row.mfu == 0.5
    assert bench_steps.format_mib(row.memory) == "3" and bench_steps.format_mib(None) == "n/a"


def test_timeit_rounds_alternates_and_takes_medians():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times, mem = timing.timeit_rounds(fns, warmup=1, repeat=3)
    assert calls == ["a", "b"] * 4 and set(times) == {"a", "b"} and mem == {}
    assert all(t >= 0 for t in times.values())


def test_peak_memory_sees_a_large_allocation():
    keep = []
    grown = timing.peak_memory(lambda: keep.append(torch.ones(16 * 2 ** 20)))  # 64 MiB, touched
    if grown is None:
        pytest.skip("no /proc peak-RSS counter here")
    assert grown >= 48 * 2 ** 20
    keep.clear()
    assert timing.peak_memory(lambda: None) < 16 * 2 ** 20


def test_peak_fns_do_the_work_they_count():
    fn, flops = timing.peak_matmul_fn(torch.float32, "cpu", n=64)
    assert flops == 2 * 64 ** 3 and fn().shape == (64, 64)
    read, nbytes = timing.read_bandwidth_fn("cpu", nbytes=4 * 1024)
    assert nbytes == 4096 and read().item() == 1024


def test_kit_step_fn_takes_an_optimizer_step():
    torch.manual_seed(0)
    model = TransformerModel(50, 16, 2, 1, 8)
    x, y = torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))
    before = [p.detach().clone() for p in model.parameters()]
    step = bench_steps.kit_step_fn(model, x, y, chunk=4)
    first = step().item()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for _ in range(20):
        last = step().item()
    assert last < first  # the same batch again and again: the loss falls


def test_full_case_is_skipped_on_a_cpu_and_runs_at_a_small_shape(capsys):
    assert bench.bench_full({"_device": torch.device("cpu")}) == {}
    assert "skipped, it needs a CUDA GPU" in capsys.readouterr().out
    shape = dict(E=16, L=1, H=2, T=8, B=2, V=50)
    out = bench.bench_full({"_device": torch.device("cpu"), "peak_fp32": 1.0}, compile=False, repeat=1,
                           shape=shape, chunk=4)
    labels = [r.label for r in out["full_rows"]]
    assert labels == ["fp32, full logits", "bf16 autocast, full logits", "bf16 autocast, fused loss chunk=4"]
    assert out["full_loss_diff"] < 1e-3  # the fused loss and the full logits agree under bf16 autocast
    assert out["full_best_bf16"].label.startswith("bf16") and all(r.mfu > 0 for r in out["full_rows"])


def test_train_case_runs_the_real_train_and_compares_it_with_the_step_row(capsys):
    shape = dict(E=16, L=1, H=2, T=8, B=4)
    out = bench.bench_train({"_device": torch.device("cpu")}, compile=False, steps=3, epochs=2, shape=shape)
    printed = capsys.readouterr().out
    assert [label for label, *_ in out["train_rows"]] == ["one story per example (the laptop profile)",
                                                          "packed windows"]
    for label, rate, warmup, filled in out["train_rows"]:
        assert rate > 0 and 0 < filled <= 1 and label in printed and isinstance(warmup, float)
    assert out["train_reference"].tokens == 4 * 8 and out["train_ratio"] >= out["train_profile_ratio"] > 0
    assert "synthetic stories" in printed and "vs row" in printed


def test_steady_rate_leaves_the_first_epoch_out():
    from picollm_helpers.bench.training import _steady
    from picollm_helpers.history import History
    h = History(epoch_times=[(1, 5.0, 1000), (2, 1.0, 1000), (3, 1.0, 1000)])
    rate, warmup = _steady(h)
    assert rate == 1000 and warmup == 4.0  # the first epoch took 4 s longer than its tokens needed


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "eager"])
def test_quick_decode_times_the_fast_eager_and_readable_steps_on_the_same_tokens(native, monkeypatch, capsys):
    from picollm_helpers.bench import quick
    from picollm_helpers.models import decode_native
    if not native:
        monkeypatch.setenv(decode_native.ENV, "0")
    out = quick.bench_decode_quick({}, new_tokens=6, repeat=1, shape=dict(V=301, E=32, L=2, H=4))
    printed = capsys.readouterr().out
    assert out["decode_identical"] and "the same 6 tokens" in printed
    assert out["decode_met"] == (out["decode_ratio"] <= quick.DECODE_TARGET) and out["decode_weight_read_s"] > 0
    assert ("MET" if out["decode_met"] else "MISSED") in printed and "eager fast step" in printed
    assert out["decode_native"].startswith("compiled" if native else "off") and out["decode_native"] in printed


def test_quick_predicts_each_lessons_minutes_from_its_record_and_the_step_ratio(tmp_path):
    from picollm_helpers.bench import quick
    for name, profile, wall, plot in [("04_transformer", "laptop", 200.0, 1.0),
                                      ("05_overfitting", "laptop", 100.0, 0.0),
                                      ("06_positional_embeddings", "smoke", 9.0, 0.0)]:
        (tmp_path / f"{name}.json").write_text(json.dumps({"profile": profile, "wall_time_s": wall,
                                                            "time_s": {"train": wall - plot, "plot": plot}}))
    (tmp_path / "07_interpretability.json").write_text("{not json")
    records = quick.lesson_records(tmp_path)
    assert records == {"04_transformer": (200.0, 1.0), "05_overfitting": (100.0, 0.0)}  # laptop only, readable only
    pred = quick.predict_minutes(500.0, records, reference_rate=1000.0)  # this machine steps at half the rate
    assert pred == {"04_transformer": 199.0 * 2 + 1.0, "05_overfitting": 200.0}
    assert quick.predict_minutes(1000.0, records, reference_rate=1000.0)["04_transformer"] == 200.0
    assert quick.format_duration(59.4) == "59 s" and quick.format_duration(125) == "2 min 05 s"
    assert quick.format_duration(2039.6) == "34 min 00 s"   # not "33 min 60 s"


def test_quick_result_is_what_make_doctor_shows(tmp_path, monkeypatch):
    from picollm_helpers import doctor
    from picollm_helpers.bench import quick
    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path))
    missing = doctor.check_speed()
    assert missing.status is None and "bench quick" in missing.fix
    quick.save_quick({"machine": "m", "load_average": 0.5, "laptop_step_tokens_per_s": 12345.0, "laptop_step_mfu": 0.2,
                      "decode_ratio": 1.1, "decode_met": True, "decode_identical": True, "decode_steal": 0.12,
                      "predicted_s": {"04_transformer": 300.0, "05_overfitting": 45.0}})
    got = doctor.check_speed()
    assert got.status is True
    for part in ("12,345 tok/s", "MET 1.10x", "04 5 min", "05 45 s", "all 6 min", "load 0.5, steal 12%"):
        assert part in got.detail
    (tmp_path / quick.RESULT_FILE).write_text("{}")
    assert doctor.check_speed().status is None  # an incomplete file is reported, not raised


def test_quick_names_the_cpu_capability_and_its_limits(monkeypatch):
    from picollm_helpers.bench import quick
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    cap = quick.cpu_capability()
    assert cap.startswith(torch.backends.cpu.get_cpu_capability()) and "ATEN_CPU_CAPABILITY=avx2" in cap
    assert quick.cpu_name()


def test_steal_share_reads_the_hypervisors_ticks_from_proc_stat(tmp_path):
    from picollm_helpers.timing import cpu_ticks, steal_share
    stat = tmp_path / "stat"
    #              user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n")
    before = cpu_ticks(stat)
    assert before == (35, 1000)  # guest time is already inside user time: not counted twice
    stat.write_text("cpu  160 0 70 900 10 0 5 135 9 0\n")
    assert steal_share(before, cpu_ticks(stat)) == 100 / 280
    assert steal_share(before, before) is None and steal_share(None, before) is None
    assert cpu_ticks(tmp_path / "missing") is None
    stat.write_text("intr 1 2 3\n")
    assert cpu_ticks(stat) is None


def test_quick_is_a_case_of_its_own():
    assert "quick" in bench.CASES and bench.CASES["quick"] is bench.bench_quick
