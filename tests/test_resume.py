"""Resuming checks what it resumes; checkpoints that cannot be read say why; logs never run ahead."""

import json
import pathlib

import pytest
import test_training as base
import torch
from test_training import Crash, make, tiny_cfg, token_dataset

from picollm_helpers import checkpoint
from picollm_helpers import training as tr
from picollm_helpers.errors import CheckpointError, PicoLLMError, PromptError
from picollm_helpers.tokenizer import check_prompt

# The 3seqs fixtures of test_training (tokenizer, data, one thread, model vocabulary), shared here.
tok, data, one_thread, vocab = base.tok, base.data, base.one_thread, base.vocab


@pytest.fixture
def trained(tmp_path, data):
    """A one-epoch LSTM run and its checkpoint."""
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, epochs=2, max_steps_per_epoch=2)
    tr.train(make("lstm", cfg), cfg.replace(epochs=1), train_ds, test_ds)
    return cfg, tmp_path / "out" / "lstm" / "checkpoint.pt"


@pytest.mark.parametrize("change, words", [
    (dict(seed=7), "seed: checkpoint 1337, this run 7"),
    (dict(embed_size=16, n_heads=2), "embed_size: checkpoint 32, this run 16"),
    (dict(learning_rate=1e-2), "learning_rate"),
    (dict(lr_schedule="cosine"), "lr_schedule: checkpoint 'constant', this run 'cosine'"),
])
def test_resume_refuses_a_different_run_and_names_the_difference(trained, data, change, words):
    cfg, ckpt = trained
    train_ds, test_ds = data
    other = cfg.replace(**change)
    with pytest.raises(CheckpointError, match="different run") as e:
        tr.train(make("lstm", other), other, train_ds, test_ds, resume_from=ckpt)
    assert words in str(e.value) and "--force" in str(e.value)


def test_resume_refuses_other_data_and_another_model_kind(trained, data, tok):
    cfg, ckpt = trained
    train_ds, test_ds = data
    seqs = [train_ds[i].tolist()[::-1] for i in range(len(train_ds))]     # same size, other tokens
    reversed_ds = token_dataset(seqs, tok.eot_token)
    with pytest.raises(CheckpointError, match=r"training data: .*\(same size, different tokens\)"):
        tr.train(make("lstm", cfg), cfg, reversed_ds, test_ds, resume_from=ckpt)
    with pytest.raises(CheckpointError, match="model: checkpoint lstm, this run transformer"):
        tr.train(make("transformer", cfg), cfg, train_ds, test_ds, resume_from=ckpt)


def test_force_resumes_and_says_what_differs(trained, data, capsys):
    cfg, ckpt = trained
    train_ds, test_ds = data
    other = cfg.replace(learning_rate=5e-3)
    h = tr.train(make("lstm", other), other, train_ds, test_ds, resume_from=ckpt, force_resume=True)
    assert "resuming anyway (force): learning_rate: checkpoint 0.003, this run 0.005" in capsys.readouterr().out
    assert [s for s, _ in h.train_loss] == [1, 2, 3, 4]
    # a shape that cannot load is refused even with force, in the kit's words
    wide = cfg.replace(embed_size=64)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        tr.train(make("lstm", wide), wide, train_ds, test_ds, resume_from=ckpt, force_resume=True)


def test_the_same_run_resumes_and_changing_only_epochs_is_allowed(trained, data):
    cfg, ckpt = trained
    train_ds, test_ds = data
    h = tr.train(make("lstm", cfg), cfg.replace(device_id="auto"), train_ds, test_ds, resume_from=ckpt)
    assert h.steps == 4
    rec = torch.load(ckpt, weights_only=True)["data"]
    assert rec["train"]["examples"] == len(train_ds) and rec["test"]["tokens"] == test_ds.num_tokens
    assert len(rec["train"]["fingerprint"]) == 32


@pytest.mark.parametrize("damage, words", [
    ("empty", "is empty (0 bytes)"),
    ("truncated", "is incomplete or damaged"),
    ("foreign", "holds Python objects other than tensors"),
    ("other format", "is not a pico-llm checkpoint"),
])
def test_damaged_or_foreign_checkpoints_are_refused_in_the_kits_words(trained, damage, words):
    _, ckpt = trained
    good = ckpt.read_bytes()
    if damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "truncated":
        ckpt.write_bytes(good[:len(good) // 2])
    elif damage == "foreign":
        torch.save({"weights": pathlib.PurePosixPath("x")}, ckpt)
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load_checkpoint(ckpt)
    assert words in str(e.value) and str(ckpt) in str(e.value)
    assert "weights_only" not in str(e.value)                  # never the advice to load unsafely


def test_a_crash_while_checkpointing_leaves_the_logs_at_the_checkpoints_epoch(tmp_path, data, monkeypatch):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, epochs=2, max_steps_per_epoch=2)
    real = tr.save_checkpoint

    def crash_on_epoch_2(*args, epoch, **kw):
        if epoch == 2:
            raise Crash
        return real(*args, epoch=epoch, **kw)
    monkeypatch.setattr(tr, "save_checkpoint", crash_on_epoch_2)
    with pytest.raises(Crash):
        tr.train(make("lstm", cfg), cfg, train_ds, test_ds)
    run = tmp_path / "out" / "lstm"
    logs = json.loads((run / "loss_logs.json").read_text())
    assert logs["train"]["step"] == [1, 2] and torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_resume_rewrites_logs_that_ran_ahead_of_the_checkpoint(trained, data):
    cfg, ckpt = trained
    train_ds, test_ds = data
    logs_path = ckpt.parent / "loss_logs.json"
    logs = json.loads(logs_path.read_text())
    logs["train"]["step"] += [3, 4, 5]
    logs["train"]["loss"] += [9.0, 9.0, 9.0]
    logs_path.write_text(json.dumps(logs))

    def stop(step, model, loss):
        raise Crash
    with pytest.raises(Crash):
        tr.train(make("lstm", cfg), cfg, train_ds, test_ds, resume_from=ckpt, step_callback=stop)
    assert json.loads(logs_path.read_text())["train"]["step"] == [1, 2]


def test_prompts_outside_a_compact_vocabulary(tok, capsys):
    assert check_prompt(tok, "0 1 2") == tok.encode_ordinary("0 1 2")
    with pytest.raises(PromptError, match=r"none of its tokens \('Hello', ' world'\)"):
        check_prompt(tok, "Hello world")
    ids = check_prompt(tok, "0 1 dragon")
    assert "' dragon' never occur in the training data" in capsys.readouterr().out and tok.unk_token in ids
    with pytest.raises(PicoLLMError, match="has no tokens"):
        check_prompt(tok.base, "")


def test_train_refuses_an_unusable_prompt_before_any_step(tmp_path, data, tok):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, prompt="Hello world")
    steps = []
    with pytest.raises(PromptError):
        tr.train(make("lstm", cfg), cfg, train_ds, test_ds, tokenizer=tok,
                 step_callback=lambda s, m, loss: steps.append(s))
    assert steps == [] and not (tmp_path / "out").exists()
