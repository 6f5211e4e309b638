"""Nothing lost, nothing silently wrong: finished runs are not overwritten, caches and checkpoints
prove what they hold, and no message advises deleting a good file.

The command-line cases check the exit code, that no traceback is printed, and that nothing in
the output folder changed.
"""

import errno
import json
import os
import shutil

import pytest
import test_training as base
import torch
from test_cli import run_cli
from test_training import make, tiny_cfg

from picollm_helpers import checkpoint, files, model_cache
from picollm_helpers import tokenizer as tk
from picollm_helpers import training as tr
from picollm_helpers.data import load_text_files
from picollm_helpers.errors import (
    CheckpointError,
    DataError,
    DiskFullError,
    PicoLLMError,
    RunLogError,
    TokenizerError,
    VocabularyError,
)
from picollm_helpers.history import History
from picollm_helpers.sampling import generate
from picollm_helpers.tokenizer import CompactTokenizer, get_tokenizer
from picollm_helpers.widgets import AttentionExplorer, TopPExplorer

tok, data, one_thread, vocab = base.tok, base.data, base.one_thread, base.vocab


def snapshot(folder) -> dict:
    """{relative path: bytes} of every file under folder (and the folders, as None)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def finished(course, capsys):
    work, env, argv = course
    code, _, err = run_cli(argv, work, env, capsys)
    assert code == 0, err
    return work / "out"


def refused(course, capsys, extra, message, code=1):
    """Run with `extra` flags: it exits with `code`, says `message`, prints no traceback, changes nothing."""
    work, env, argv = course
    before = snapshot(work / "out")
    try:
        got, out, err = run_cli(argv + extra, work, env, capsys)
    except SystemExit as e:                    # argparse's errors (exit 2)
        got, (out, err) = e.code, capsys.readouterr()
    assert got == code, (extra, err)
    assert message in err, (message, err)
    assert "Traceback" not in out + err
    assert snapshot(work / "out") == before, extra
    return err


# ----- 1. a re-run does not overwrite finished training


def test_a_rerun_without_resume_is_refused_and_overwrite_replaces(course, capsys):
    out = finished(course, capsys)
    err = refused(course, capsys, ["--epochs", "1"], "--output_dir out already holds a run")
    assert "out/lstm/checkpoint.pt (lstm, epoch 2 of 2)" in err
    assert "--resume" in err and "--overwrite" in err and "another --output_dir" in err
    refused(course, capsys, ["--resume", "--overwrite"], "give one of them", code=2)
    work, env, argv = course
    code, _, err = run_cli(argv + ["--epochs", "1", "--overwrite"], work, env, capsys)
    assert code == 0, err
    assert torch.load(out / "lstm" / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_resuming_with_fewer_epochs_than_the_checkpoint_says_so(course, capsys):
    finished(course, capsys)
    err = refused(course, capsys, ["--resume", "--epochs", "1"], "has 2 epochs trained, and --epochs 1 asks for fewer")
    assert "--epochs 2 or more" in err


def test_a_forced_resume_records_both_seeds(course, capsys):
    out = finished(course, capsys)
    work, env, argv = course
    code, _, err = run_cli(argv + ["--resume", "--epochs", "3", "--seed", "5", "--force"], work, env, capsys)
    assert code == 0, err
    for extra in (json.loads((out / "lstm" / "loss_logs.json").read_text())["extra"],
                  torch.load(out / "lstm" / "checkpoint.pt", weights_only=True)["history"]["extra"]):
        record = extra["forced_resumes"][0]
        assert record["settings"]["seed"] == {"checkpoint": 1337, "this run": 5} and record["after_epoch"] == 2


# ----- 6. output folders are checked before training


def test_output_folders_that_cannot_take_the_run_are_refused_before_training(course, capsys, monkeypatch):
    work, env, argv = course
    (work / "afile").write_text("not a folder")
    err = refused(course, capsys, ["--output_dir", "afile"], "--output_dir afile: afile is a file, not a folder")
    refused(course, capsys, ["--output_dir", "afile/sub"], "afile is a file, not a folder")
    (work / "out" / "lstm" / "checkpoint.pt").mkdir(parents=True)
    err = refused(course, capsys, [], "out/lstm/checkpoint.pt is a folder, where the run writes its checkpoint.pt")
    shutil.rmtree(work / "out")
    (work / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).endswith("ro") else real_access(p, mode))
    err = refused(course, capsys, ["--output_dir", "ro"], "the folder ro is not writable")
    assert ".tmp" not in err


def test_output_dir_dot_keeps_the_comparison_plot_out_of_the_kits_figures(course, capsys):
    work, env, argv = course
    argv = [a for a in argv if a not in ("--models", "lstm", "--output_dir", "out")]
    code, _, err = run_cli(argv + ["--models", "lstm", "kgram_mlp_seq", "--epochs", "1", "--output_dir", "."],
                           work, env, capsys)
    assert code == 0, err
    assert (work / "loss_comparison.png").is_file()
    assert not (work / "figures" / "loss_comparison.png").exists()     # $PICOLLM_FIGURES: the kit's figures/


# ----- 7. the remaining tracebacks become messages


def test_ctrl_c_says_which_checkpoint_is_kept_and_resume_continues(course, capsys, monkeypatch):
    work, env, argv = course
    real_train = tr.train

    def interrupted(*args, **kw):
        def stop(step, model, loss):
            if step == 3:                      # the first step of epoch 2 (2 steps an epoch)
                raise KeyboardInterrupt
        return real_train(*args, step_callback=stop, **kw)

    monkeypatch.setattr(tr, "train", interrupted)
    code, out, err = run_cli(argv, work, env, capsys)
    assert code == 130 and "Traceback" not in out + err
    assert "out/lstm/checkpoint.pt keeps the last finished epoch of lstm (epoch 1 of 2)" in err
    assert "--resume" in err
    monkeypatch.setattr(tr, "train", real_train)
    code, out, err = run_cli(argv + ["--resume"], work, env, capsys)
    assert code == 0 and "resumed from out/lstm/checkpoint.pt after epoch 1" in out, err


def test_a_full_disk_keeps_the_checkpoint_and_says_the_disk_is_full(course, capsys, monkeypatch):
    finished(course, capsys)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    err = refused(course, capsys, ["--resume", "--epochs", "3"], "the disk is full")
    assert "is kept as it was" in err


def test_a_seed_beyond_32_bits_is_refused_by_name(course, capsys):
    refused(course, capsys, ["--seed", str(2**64)], "seed=18446744073709551616 is invalid", code=2)


def test_a_model_too_large_for_the_memory_names_its_size_and_settings(course, capsys):
    err = refused(course, capsys, ["--embed_size", "1000000"], "the model is too large for this machine")
    assert "--embed_size 1000000" in err and "GiB" in err and "parameters" in err


def test_picollm_cache_pointing_at_a_file_names_the_variable(course, capsys, tmp_path):
    work, env, argv = course
    (tmp_path / "cachefile").write_text("x")
    before = snapshot(work / "out")
    code, out, err = run_cli(argv, work, {**env, "PICOLLM_CACHE": str(tmp_path / "cachefile")}, capsys)
    assert code == 1 and "Traceback" not in out + err and snapshot(work / "out") == before
    assert f"PICOLLM_CACHE='{tmp_path / 'cachefile'}': is a file, not a folder" in err


# ----- 8. a damaged top-level loss_logs.json is kept before it is rewritten


def test_a_damaged_pico_llm_loss_log_is_kept_as_a_backup(course, capsys):
    out = finished(course, capsys)
    (out / "loss_logs.json").write_text('{"lstm": {"train": [[1.0, ')
    work, env, argv = course
    code, stdout, err = run_cli(argv + ["--overwrite"], work, env, capsys)
    assert code == 0, err
    assert (out / "loss_logs.json.damaged").read_text() == '{"lstm": {"train": [[1.0, '
    assert "kept as out/loss_logs.json.damaged" in stdout
    assert list(json.loads((out / "loss_logs.json").read_text())) == ["lstm"]


# ----- 2. no advice to delete a good checkpoint; 3. checkpoints prove what they hold


@pytest.fixture
def ckpt(tmp_path, data, tok):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, epochs=1, max_steps_per_epoch=2)
    model = make("lstm", cfg)
    tr.train(model, cfg, train_ds, test_ds, tok)
    return tmp_path / "out" / "lstm" / "checkpoint.pt", model


def rewrite(path, change):
    """Edit a checkpoint's dict and write it back with a valid digest (a file the kit did not write)."""
    c = torch.load(path, weights_only=True)
    change(c)
    c["digest"] = checkpoint.content_digest(c)
    torch.save(c, path)


def test_a_good_checkpoint_is_never_called_damaged(ckpt, monkeypatch):
    path, _ = ckpt
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(PicoLLMError) as e:
        checkpoint.load_checkpoint(path, map_location="cuda")
    assert "this machine has no CUDA device" in str(e.value) and "map_location='cpu'" in str(e.value)
    assert "Delete" not in str(e.value) and "damaged" not in str(e.value)
    monkeypatch.undo()

    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_checkpoint(path)
    assert "cannot read the checkpoint" in str(e.value) and "Permission denied" in str(e.value)
    assert "Delete" not in str(e.value)


def test_a_checkpoint_that_does_not_fit_its_config_or_lacks_weights_gets_the_kits_message(ckpt):
    path, _ = ckpt
    good = path.read_bytes()
    rewrite(path, lambda c: c["config"].update(embed_size=16, n_heads=2))
    with pytest.raises(CheckpointError, match="do not fit the lstm its config describes") as e:
        checkpoint.load_checkpoint(path)
    assert "embedding.weight: shape" in str(e.value)
    path.write_bytes(good)
    rewrite(path, lambda c: c.pop("model_state"))
    with pytest.raises(CheckpointError, match="has no model_state"):
        checkpoint.load_checkpoint(path)


def test_random_bytes_are_damaged_and_a_flipped_weight_fails_the_digest(ckpt):
    path, model = ckpt
    good = path.read_bytes()
    for seed in range(5):
        path.write_bytes(torch.randint(0, 256, (len(good),), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.uint8).numpy().tobytes())
        with pytest.raises(CheckpointError, match="is incomplete or damaged") as e:
            checkpoint.load_checkpoint(path)
        assert "Python objects" not in str(e.value)
    weight = model.lm_head.weight.detach().cpu().contiguous().numpy().tobytes()
    at = good.index(weight) + 4 * (len(weight) // 8) + 2   # the sign-and-exponent bytes of one float32
    flipped = bytearray(good)
    flipped[at:at + 2] = b"\x7f\x7f"          # two bytes of one weight: a huge value, still a valid file
    path.write_bytes(bytes(flipped))
    assert torch.load(path, weights_only=True)["model_state"]["lm_head.weight"].abs().max() > 1e30
    with pytest.raises(CheckpointError, match="fail their digest") as e:
        checkpoint.load_checkpoint(path)
    assert "Delete it" in str(e.value)


def test_the_model_cache_proves_its_entries(tmp_path, data, tok, monkeypatch, capsys):
    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path / "cache"))
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, epochs=1, max_steps_per_epoch=2)
    runs = {}
    for seed in (1, 2):
        c = cfg.replace(seed=seed)
        model = make("lstm", c)
        tr.train(model, c, train_ds, test_ds, tok, cache=True, save=False)
        key = model_cache.cache_key(make("lstm", c), c, train_ds, test_ds, tok, "lstm")
        runs[seed] = (c, model_cache.entry_path(key, "lstm"), model.state_dict())
    (c2, entry2, weights2), (_, entry1, _) = runs[2], runs[1]
    good = entry2.read_bytes()
    shutil.copy(entry1, entry2)                # another seed's entry copied over this one
    capsys.readouterr()
    model = make("lstm", c2)
    tr.train(model, c2, train_ds, test_ds, tok, cache=True, save=False)
    out = capsys.readouterr().out
    assert "holds the model of another key" in out and "training anew" in out and "loaded from" not in out
    assert all(torch.equal(model.state_dict()[k], weights2[k]) for k in weights2)    # seed 2's model again
    flipped = bytearray(good)
    weight = weights2["lm_head.weight"].numpy().tobytes()
    at = good.index(weight) + 2                # the first weight's sign-and-exponent bytes: about 1e38
    flipped[at:at + 2] = b"\x7f\x7f"
    entry2.write_bytes(bytes(flipped))
    model = make("lstm", c2)
    tr.train(model, c2, train_ds, test_ds, tok, cache=True, save=False)
    out = capsys.readouterr().out
    assert "fails its digest" in out and "training anew" in out, out
    assert model.state_dict()["lm_head.weight"].abs().max() < 100
    model = make("lstm", c2)                   # the retrained entry replaced it, and loads
    tr.train(model, c2, train_ds, test_ds, tok, cache=True, save=False)
    assert "loaded from the model cache" in capsys.readouterr().out


# ----- 4. the tokenizer and the model agree


def test_generate_and_the_explorers_refuse_another_vocabulary(ckpt, tok, data):
    path, model = ckpt
    gpt2 = get_tokenizer()
    assert model.vocab_name == tk.vocab_name(tok) and model.vocab_name.startswith(f"{tok.name}#")
    assert generate(model, tok, "0 1 2", 3, greedy=True).text.startswith("0 1 2")
    with pytest.raises(VocabularyError) as e:
        generate(model, gpt2, "0 1 2", 3, greedy=True)
    assert "gpt2 (50,257 ids)" in str(e.value) and f"{model.vocab_name} ({tok.n_vocab:,} ids)" in str(e.value)
    # a compact vocabulary of the same size but other tokens is refused too
    ids = [int(i) for i in tok.to_base[:-1] if int(i) != gpt2.eot_token]
    other = CompactTokenizer(gpt2, [i + 1 for i in ids])
    assert other.n_vocab == tok.n_vocab
    with pytest.raises(VocabularyError):
        generate(model, other, [1, 2], 3, greedy=True)
    # the rebuilt model of a checkpoint knows its vocabulary
    loaded, info = checkpoint.load_checkpoint(path)
    assert loaded.vocab_name == model.vocab_name
    assert generate(loaded, info["tokenizer"], "0 1 2", 3, greedy=True).ids == \
        generate(model, tok, "0 1 2", 3, greedy=True).ids
    with pytest.raises(VocabularyError):
        generate(loaded, gpt2, "0 1 2", 3)
    # an untrained model names no vocabulary: its output size must be the tokenizer's
    fresh = make("transformer", tiny_cfg(path.parent))
    with pytest.raises(VocabularyError, match="output layer has"):
        generate(fresh, gpt2, "0 1 2", 3)
    for explorer in (TopPExplorer, AttentionExplorer):
        with pytest.raises(VocabularyError, match=explorer.__name__):
            explorer(fresh, gpt2, "0 1 2")


# ----- 7. messages instead of tracebacks: logs, tokenizer, data, disk


def test_history_load_on_a_truncated_log_names_the_file_and_the_checkpoint(ckpt):
    path, _ = ckpt
    logs = path.parent / "loss_logs.json"
    logs.write_text(logs.read_text()[:200])
    with pytest.raises(RunLogError) as e:
        History.load(path.parent)
    assert f"{logs} is not complete JSON" in str(e.value) and "load_checkpoint(" in str(e.value)


def test_a_damaged_tokenizer_file_offline_says_it_failed_its_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(tk, "_ranks_from_tiktoken", lambda: None)
    monkeypatch.setattr(tk, "_ranks_from_pypi", lambda: None)
    tk.ranks_path().parent.mkdir(parents=True)
    tk.ranks_path().write_bytes(b"damaged ranks\n")
    with pytest.raises(TokenizerError) as e:
        tk.ensure_ranks()
    assert "failed its sha256 check" in str(e.value) and "no cached file" not in str(e.value)
    assert isinstance(e.value, RuntimeError)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_file_is_named_utf16(tmp_path, encoding):
    path = tmp_path / "lines.txt"
    path.write_bytes("one line\ntwo lines, café\n".encode(encoding))
    with pytest.raises(DataError) as e:
        load_text_files(path)
    assert "is UTF-16 text, not UTF-8" in str(e.value) and "latin" not in str(e.value)


def test_a_full_disk_while_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    files.write_bytes(target, b"the good one")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(DiskFullError, match="the disk is full") as e:
        files.write_bytes(target, b"the new one")
    assert isinstance(e.value, OSError) and "previous checkpoint.pt is kept" in str(e.value)
    assert target.read_bytes() == b"the good one" and not list(tmp_path.glob("*.tmp"))
