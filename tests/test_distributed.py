"""torchrun with 2 CPU processes (gloo) trains the same steps as one process with the same global batch."""

import json
import subprocess
import sys

import pytest
from test_cli import course_dir, offline_env, run_in_process

ARGS = ["--models", "transformer", "--device_id", "cpu", "--tinystories_weight", "0.0",
        "--input_files", "data/3seqs.txt", "--prompt", "0 1 2 3 4", "--block_size", "24",
        "--batch_size", "8", "--epochs", "2", "--max_steps_per_epoch", "4", "--learning_rate", "3e-3"]


def run(cmd, work, env):
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def test_two_process_ddp_matches_one_process(tmp_path):
    work = course_dir(tmp_path, n_lines=400)
    env = offline_env(tmp_path)
    run_in_process([*ARGS, "--output_dir", "single"], work, env)
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "picollm_helpers", *ARGS, "--output_dir", "ddp"], work, env)

    a = json.loads((work / "single" / "transformer" / "loss_logs.json").read_text())
    b = json.loads((work / "ddp" / "transformer" / "loss_logs.json").read_text())
    assert a["train"]["step"] == b["train"]["step"] == list(range(1, 9))
    # each rank computes half of every global batch of 8; the gradients are those of the whole batch
    assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=1e-4)
    assert b["test"]["loss"] == pytest.approx(a["test"]["loss"], rel=1e-4)
    for per_batch_a, per_batch_b in zip(a["test"]["batch_loss"], b["test"]["batch_loss"], strict=True):
        assert per_batch_b == pytest.approx(per_batch_a, rel=1e-4)    # each rank's batches, gathered
    assert a["train"]["loss"][-1] < a["train"]["loss"][0] - 0.3

    # only rank 0 prints and writes: one log, one set of files
    assert "2 processes (DDP)" in ddp.stdout
    assert ddp.stdout.count("=== Training model: transformer") == 1
    assert ddp.stdout.count("epoch 2/2: train loss") == 1
    files = sorted(p.relative_to(work / "ddp").as_posix() for p in (work / "ddp").rglob("*"))
    assert files == ["generation_logs.json", "loss_logs.json",                  # pico-llm's files
                     "transformer", "transformer/attention.png", "transformer/attention.pt",
                     "transformer/checkpoint.pt", "transformer/generation_logs.json",
                     "transformer/loss.png", "transformer/loss_logs.json",
                     "transformer_attention.pt", "transformer_final_weights.pt"]
