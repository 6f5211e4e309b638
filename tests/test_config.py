import pytest
import torch

from picollm_helpers.config import PROFILE_CAPS, RunConfig, current_profile, resolve_device, resolve_precision


def test_defaults_validate_and_resolve_pos_emb():
    cfg = RunConfig(tinystories_weight=1.0)
    assert cfg.pos_emb == "none"
    assert RunConfig(tinystories_weight=1.0, use_position_emb=True).pos_emb == "learned"
    assert RunConfig(tinystories_weight=1.0, pos_emb="rope").pos_emb == "rope"


@pytest.mark.parametrize(
    "changes, word",
    [
        (dict(block_size=1), "block_size"),
        (dict(test_fraction=1.0), "test_fraction"),
        (dict(test_fraction=-0.1), "test_fraction"),
        (dict(tinystories_weight=-0.5), "tinystories_weight"),
        (dict(tinystories_weight=0.7, wiki_weight=0.7), "sum"),
        (dict(tinystories_weight=0.0), "nothing to train on"),
        (dict(embed_size=30, n_heads=8), "divisible"),
        (dict(pos_emb="alibi"), "pos_emb"),
        (dict(use_position_emb=True, pos_emb="rope"), "use_position_emb"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(kgram_input="bag"), "kgram_input"),
        (dict(top_p_values=(0.5, 1.5)), "top-p"),
        (dict(profile="huge"), "profile"),
    ],
)
def test_bad_values_raise_one_clear_error(changes, word):
    base = dict(tinystories_weight=1.0)
    with pytest.raises(ValueError, match=word):
        RunConfig(**{**base, **changes})


def test_for_profile_scales_report_values():
    report = dict(tinystories_weight=1.0, block_size=512, embed_size=512, n_heads=8, n_blocks=6,
                  max_steps_per_epoch=750, epochs=10)
    full = RunConfig.for_profile("full", **report)
    assert (full.block_size, full.embed_size, full.max_steps_per_epoch) == (512, 512, 750)
    laptop = RunConfig.for_profile("laptop", **report)
    caps = PROFILE_CAPS["laptop"]
    assert laptop.block_size == caps["block_size"] and laptop.embed_size == caps["embed_size"]
    assert laptop.epochs == 10 and laptop.profile == "laptop"
    smoke = RunConfig.for_profile("smoke", laptop=dict(epochs=5), smoke=dict(batch_size=4), **report)
    assert smoke.batch_size == 4 and smoke.epochs == PROFILE_CAPS["smoke"]["epochs"]
    assert smoke.embed_size % smoke.n_heads == 0
    # A cap never raises a smaller report value.
    assert RunConfig.for_profile("laptop", tinystories_weight=1.0, block_size=32).block_size == 32


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("PICOLLM_PROFILE", "smoke")
    assert current_profile() == "smoke"
    assert RunConfig.for_profile(tinystories_weight=1.0).profile == "smoke"
    monkeypatch.setenv("PICOLLM_PROFILE", "gigantic")
    with pytest.raises(ValueError, match="PICOLLM_PROFILE='gigantic'"):
        current_profile()
    monkeypatch.delenv("PICOLLM_PROFILE")
    assert current_profile() == "laptop"


def test_dict_round_trip_and_replace():
    cfg = RunConfig(input_files=["data/3seqs.txt"], tinystories_weight=0.0, use_position_emb=True)
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.replace(use_position_emb=False).pos_emb == "none"
    with pytest.raises(ValueError, match="unknown config keys"):
        RunConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_device_fallback_is_printed(capsys):
    device = resolve_device("cuda:3")
    out = capsys.readouterr().out
    if device.type == "cpu":
        assert "not available" in out and "cpu" in out
    assert resolve_device("cpu").type == "cpu"


def test_profiles_choose_compact_vocab_unless_told():
    assert RunConfig.for_profile("laptop", tinystories_weight=1.0).compact_vocab is True
    assert RunConfig.for_profile("full", tinystories_weight=1.0).compact_vocab is False
    cfg = RunConfig.for_profile("laptop", laptop=dict(compact_vocab=False), tinystories_weight=1.0)
    assert cfg.compact_vocab is False
    assert RunConfig(tinystories_weight=1.0).compact_vocab is False


def test_full_profile_trains_in_auto_precision_with_compile(monkeypatch):
    full = RunConfig.for_profile("full", tinystories_weight=1.0)
    assert (full.precision, full.compile, full.loss_chunk_size) == ("auto", True, 0)
    laptop = RunConfig.for_profile("laptop", tinystories_weight=1.0)
    assert (laptop.precision, laptop.compile, laptop.loss_chunk_size) == ("fp32", False, 512)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for explicitly: kept
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda:0")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda:0")) == "fp32"


def test_summary_lists_only_what_differs_from_the_report_side_by_side():
    cfg = RunConfig.for_profile("laptop", tinystories_weight=1.0, epochs=10, block_size=512, embed_size=512,
                                max_steps_per_epoch=750, laptop=dict(max_steps_per_epoch=75))
    lines = cfg.summary().splitlines()
    assert lines[0].startswith("profile laptop: ")
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["block_size"] == ["512", "128"] and rows["max_steps_per_epoch"] == ["750", "75"]
    assert "tinystories_weight" not in rows and "epochs" not in rows   # as the report: not listed
    n_diff = int(lines[0].split(": ")[1].split()[0])
    assert n_diff == len(rows) == sum(getattr(cfg, k) != getattr(cfg.report_config(), k) for k in rows)
    # Equality, to_dict and checkpoints ignore where a config came from.
    assert cfg == RunConfig.from_dict(cfg.to_dict()) and "_report" not in cfg.to_dict()
    full = RunConfig.for_profile("full", tinystories_weight=1.0, epochs=10)
    assert full.summary() == "profile full: 0 of 38 settings differ from the report's configuration."


def test_auto_device_is_said_once_per_process(capsys, monkeypatch):
    from picollm_helpers import config
    monkeypatch.setattr(config, "_DEVICE_NOTES", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert RunConfig().device_id == "auto"
    for _ in range(3):
        assert config.resolve_device("auto") == torch.device("cpu")
        assert config.resolve_device("cuda:0") == torch.device("cpu")
    out = capsys.readouterr().out.splitlines()
    assert out == ["Device: cpu (auto: no CUDA or MPS device here).",
                   "Device: cuda:0 is not available here; using cpu."]


@pytest.mark.parametrize("field, value, words", [
    ("learning_rate", float("nan"), "learning_rate=nan is invalid: it must be a finite number"),
    ("learning_rate", float("inf"), "finite number"),
    ("weight_decay", float("nan"), "weight_decay=nan"),
    ("grad_clip", float("nan"), "grad_clip=nan"),
    ("learning_rate", "1e-3", "learning_rate='1e-3' is invalid"),
    ("batch_size", "16", "batch_size='16' is invalid: it must be a whole number"),
    ("block_size", 32.0, "block_size=32.0"),
    ("packed", "yes", "packed='yes' is invalid: it must be True or False"),
    ("prompt", "", "prompt='' is invalid"),
    ("device_id", "banana", "device_id='banana' is invalid: use auto, cpu, mps, cuda or cuda:N"),
    ("top_p_values", ("a",), "top_p_values=('a',) is invalid"),
    ("length_bucket", -8, "length_bucket=-8 is invalid"),
    ("length_bucket", 8.0, "length_bucket=8.0 is invalid: it must be a whole number"),
])
def test_bad_values_are_refused_before_any_work(field, value, words):
    from picollm_helpers.errors import ConfigError, PicoLLMError
    with pytest.raises(ConfigError) as e:
        RunConfig(**{field: value})
    assert words in str(e.value) and isinstance(e.value, (PicoLLMError, ValueError))


def test_a_single_input_file_string_is_one_file_and_numpy_numbers_are_numbers():
    import numpy as np
    cfg = RunConfig(input_files="data/3seqs.txt", batch_size=np.int64(8), learning_rate=np.float32(0.5))
    assert cfg.input_files == ("data/3seqs.txt",)
    assert type(cfg.batch_size) is int and cfg.batch_size == 8 and type(cfg.learning_rate) is float
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert RunConfig(device_id=device).device_id == device


def test_length_bucket_joins_the_config_dict_only_when_set():
    """Configs that do not bucket keep their dictionary, so their cached models keep their keys."""
    assert "length_bucket" not in RunConfig().to_dict()
    assert RunConfig(length_bucket=64).to_dict()["length_bucket"] == 64
    assert RunConfig.from_dict(RunConfig(length_bucket=64).to_dict()).length_bucket == 64


def test_embed_scale_defaults_on_with_sinusoidal_positions_only():
    """Left unset, embed_scale follows pos_emb: on for sinusoidal (whose added sinusoid would otherwise start 35x
    the token signal and stall training), off for the others; an explicit value always wins."""
    assert RunConfig(pos_emb="sinusoidal").embed_scale is True
    for pos_emb in ("none", "learned", "rope"):
        assert RunConfig(pos_emb=pos_emb).embed_scale is False
    assert RunConfig(pos_emb="sinusoidal", embed_scale=False).embed_scale is False
    assert RunConfig(pos_emb="rope", embed_scale=True).embed_scale is True
    # replace() resolves a default again for the new encoding, and keeps an explicit choice
    assert RunConfig().replace(pos_emb="sinusoidal").embed_scale is True
    assert RunConfig(pos_emb="sinusoidal").replace(pos_emb="rope").embed_scale is False
    assert RunConfig(embed_scale=False).replace(pos_emb="sinusoidal").embed_scale is False
    assert RunConfig(pos_emb="sinusoidal") == RunConfig(pos_emb="sinusoidal", embed_scale=True)
    with pytest.raises(ValueError, match="embed_scale"):
        RunConfig(embed_scale="yes")


def test_a_stored_config_without_embed_scale_loads_unscaled():
    """to_dict lists embed_scale only when on, so a dictionary without it (every checkpoint and cache key from
    before the default changed) means off, sinusoidal or not: the old models rebuild as they were trained."""
    old = {k: v for k, v in RunConfig(pos_emb="sinusoidal", embed_scale=False).to_dict().items()}
    assert "embed_scale" not in old
    assert RunConfig.from_dict(old).embed_scale is False
    scaled = RunConfig(pos_emb="sinusoidal")
    assert scaled.to_dict()["embed_scale"] is True and RunConfig.from_dict(scaled.to_dict()) == scaled
    for pos_emb in ("none", "learned", "rope"):   # unchanged dictionaries, so unchanged cache keys
        assert "embed_scale" not in RunConfig(pos_emb=pos_emb).to_dict()
