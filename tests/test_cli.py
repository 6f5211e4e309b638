import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from picollm_helpers import cli
from picollm_helpers.config import RunConfig
from picollm_helpers.seqs import write_3seqs
from picollm_helpers.tokenizer import get_tokenizer, ranks_path

REPO = Path(__file__).resolve().parent.parent
# pico-llm's own flags: the course's commands use these names
PICO_FLAGS = ["--input_files", "--tinystories_weight", "--max_steps_per_epoch", "--num_inner_mlp_layers",
              "--kgram_k", "--kgram_chunk_size", "--block_size", "--embed_size", "--prompt", "--device_id",
              "--test_fraction", "--output_dir", "--epochs", "--batch_size", "--learning_rate",
              "--use_position_emb", "--use_post_norm", "--n_heads", "--n_blocks"]
KIT_FLAGS = ["--models", "--profile", "--pos_emb", "--seed", "--resume", "--num_tinystories", "--wiki_weight",
             "--precision", "--loss_chunk_size"]


def offline_env(tmp_path) -> dict:
    """A child environment: smoke profile, no hub, caches in tmp (with the tokenizer's ranks)."""
    get_tokenizer()                                            # makes sure the ranks are cached here
    cache = tmp_path / "cache"
    (cache / "tokenizer").mkdir(parents=True, exist_ok=True)
    shutil.copy(ranks_path(), cache / "tokenizer" / "gpt2.tiktoken")
    return {**os.environ, "PICOLLM_PROFILE": "smoke", "HF_HUB_OFFLINE": "1", "PICOLLM_CACHE": str(cache),
            "PICOLLM_FIGURES": str(tmp_path / "figures"), "OMP_NUM_THREADS": "1"}


def course_dir(tmp_path, n_lines=None) -> Path:
    """A working folder holding data/3seqs.txt, as the course's commands expect."""
    (tmp_path / "data").mkdir(exist_ok=True)
    if n_lines is None and (REPO / "data" / "3seqs.txt").exists():
        shutil.copy(REPO / "data" / "3seqs.txt", tmp_path / "data" / "3seqs.txt")
    else:
        write_3seqs(tmp_path / "data" / "3seqs.txt", n_lines=n_lines or 10000)
    return tmp_path


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in PICO_FLAGS + KIT_FLAGS:
        assert flag in out, flag
    # every RunConfig field can be set from the command line, under its own name
    for f in dataclasses.fields(RunConfig):
        if f.name.startswith("_"):
            continue  # not a setting: the report's values a profile config was scaled from
        assert f"--{f.name}" in out, f.name


@pytest.mark.parametrize("argv, message", [
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--block_size", "ten"], "argument --block_size: invalid int value: 'ten'"),
    (["--block_size", "1"], "block_size=1"),
    (["--models", "gpt"], "argument --models: invalid choice: 'gpt'"),
    (["--models", "lstm", "lstm_seq"], "argument --models: lstm and lstm_seq name the same model (lstm)"),
    (["--models", "kvcache_transformer", "kvcache_transformer"], "kvcache_transformer is given twice"),
    (["--tinystories_weight", "0"], "input_files"),
    (["--top_p_values", "0", "0.5"], "top-p must lie in (0, 1]"),
])
def test_bad_flags_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    # the one error line and where to look, not the whole usage above it
    assert "usage:" not in err and len(err.strip().splitlines()) == 2 and "--help" in err


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "prompt='' is invalid"),
    (["--learning_rate", "nan"], "learning_rate=nan is invalid: it must be a finite number"),
    (["--weight_decay", "inf"], "weight_decay=inf"),
    (["--grad_clip", "nan"], "grad_clip=nan"),
    (["--device_id", "banana"], "device_id='banana' is invalid: use auto, cpu, mps, cuda or cuda:N"),
])
def test_values_checkable_before_training_are_refused_before_it(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["--tinystories_weight", "0", "--input_files", "data/3seqs.txt", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "=== Training" not in err


def test_explicit_flags_override_the_profile():
    parser = cli.build_parser()
    cfg = cli.config_from_args(parser.parse_args(["--profile", "laptop", "--block_size", "512",
                                                  "--tinystories_weight", "1.0", "--use_position_emb"]), parser)
    assert cfg.profile == "laptop" and cfg.block_size == 512          # explicit: not capped
    assert cfg.embed_size == 128 and cfg.max_steps_per_epoch == 150   # the laptop profile's caps
    assert cfg.pos_emb == "learned"
    bare = cli.config_from_args(parser.parse_args(["--profile", "full"]), parser)
    assert bare.tinystories_weight == 0.5 and bare.block_size == 1024 and bare.input_files == ()
    assert (bare.precision, bare.compile) == ("auto", True)          # the full profile's GPU settings
    off = cli.config_from_args(parser.parse_args(["--profile", "full", "--precision", "fp32", "--no-compile"]),
                               parser)
    assert (off.precision, off.compile) == ("fp32", False)
    on = cli.config_from_args(parser.parse_args(["--profile", "laptop", "--compile"]), parser)
    assert on.compile is True


def test_course_smoke_command_end_to_end(tmp_path):
    work = course_dir(tmp_path, n_lines=2000)                  # a smaller 3seqs.txt keeps the test quick
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "picollm_helpers", "--tinystories_weight", "0.0", "--input_files",
           "data/3seqs.txt", "--prompt", "0 1 2 3 4", "--block_size", "32", "--max_steps_per_epoch", "10",
           "--output_dir", str(out)]
    env = offline_env(tmp_path)
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, kind in cli.PICO_LLM_NAMES.items():          # by default, pico-llm's names
        assert f"=== Training model: {name}" in r.stdout
        run = out / kind
        logs = json.loads((run / "loss_logs.json").read_text())
        assert logs["config"]["profile"] == "smoke" and logs["config"]["block_size"] == 32
        assert logs["train"]["step"] == list(range(1, 21))                 # 2 smoke epochs x 10 steps
        assert len(logs["test"]["loss"]) == 2
        gens = json.loads((run / "generation_logs.json").read_text())
        assert all(text.startswith("0 1 2 3 4") for text in gens["epochs"][-1]["samples"].values())
        assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
        assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    attn = torch.load(out / "transformer" / "attention.pt", weights_only=True)
    T = len(attn["tokens"])
    assert attn["prompt"] == "0 1 2 3 4" and set(attn["attention"]) == {"blocks.0.attn", "blocks.1.attn"}
    assert all(a.shape == (2, T, T) for a in attn["attention"].values())    # smoke: 2 heads
    assert (out / "loss_comparison.png").exists() and (out / "transformer" / "attention.png").exists()
    assert "greedy" in r.stdout and "top_p=0.95" in r.stdout
    assert not list(out.rglob("*.tmp")) and not (tmp_path / "figures").exists()
    check_pico_llm_files(out, {"kgram_mlp_seq": 0, "lstm_seq": 0, "kvcache_transformer": 2}, epochs=2, steps=10)

    # --resume continues from the checkpoints: nothing left to train, the logs are kept (in-process: quicker)
    log = run_in_process(cmd[3:] + ["--resume", "--models", "lstm"], work, env)
    assert "[lstm] resumed from" in log and "=== Training model: kgram_mlp_seq" not in log
    assert json.loads((out / "lstm" / "loss_logs.json").read_text())["train"]["step"] == list(range(1, 21))


def check_pico_llm_files(out, heads: dict, epochs: int, steps: int, top_p=(0.2, 0.5, 0.75, 0.95, 1.0)):
    """pico-llm's own files in `out` for the models named in `heads` ({name: attention heads, 0: none})."""
    losses = json.loads((out / "loss_logs.json").read_text())
    gens = json.loads((out / "generation_logs.json").read_text())
    assert list(losses) == list(gens) == list(heads)
    for name, n_heads in heads.items():
        kind = cli.MODEL_NAMES[name]
        kit = json.loads((out / kind / "loss_logs.json").read_text())
        train, test = losses[name]["train"], losses[name]["test"]
        assert len(train) == epochs and all(len(epoch) == steps for epoch in train)
        assert [loss for epoch in train for loss in epoch] == kit["train"]["loss"]     # every step, per epoch
        assert len(test) == epochs and all(len(epoch) >= 1 for epoch in test)
        assert test == kit["test"]["batch_loss"]                                       # each test batch
        assert gens[name][-1]["greedy"].startswith("0 1 2 3 4") and len(gens[name]) == epochs
        assert all(list(g) == ["greedy", *map(str, top_p)] for g in gens[name])
        weights = torch.load(out / f"{name}_final_weights.pt", weights_only=True)
        ckpt = torch.load(out / kind / "checkpoint.pt", weights_only=True)
        assert weights.keys() == ckpt["model_state"].keys()
        assert all(torch.equal(weights[k], ckpt["model_state"][k]) for k in weights)    # the final model
        attn_path = out / f"{name}_attention.pt"
        assert attn_path.exists() == (n_heads > 0)
        if n_heads:   # the same document as <kind>/attention.pt
            attn = torch.load(attn_path, weights_only=True)
            kit_attn = torch.load(out / kind / "attention.pt", weights_only=True)
            assert attn["tokens"] == kit_attn["tokens"] and attn["attention"].keys() == kit_attn["attention"].keys()
            assert all(a.shape[0] == n_heads and torch.equal(a, kit_attn["attention"][k])
                       for k, a in attn["attention"].items())


def run_in_process(argv, work, env):
    """cli.main(argv) in this process, in `work`, with env's PICOLLM_* and HF_* variables; returns stdout."""
    import contextlib
    import io
    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    os.environ.update({k: v for k, v in env.items() if k.startswith(("PICOLLM_", "HF_"))})
    os.chdir(work)
    torch.set_num_threads(1)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            assert cli.main(argv) == 0
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
    return buf.getvalue()


def run_cli(argv, work, env, capsys):
    """cli.main(argv) in this process in `work`: (exit code, stdout, stderr)."""
    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    os.environ.update({k: v for k, v in env.items() if k.startswith(("PICOLLM_", "HF_"))})
    os.chdir(work)
    torch.set_num_threads(1)
    try:
        code = cli.main(argv)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_user_mistakes_print_one_message_and_exit_1(course, capsys):
    work, env, argv = course
    code, out, err = run_cli(argv + ["--resume"], work, env, capsys)
    assert code == 0 and "[lstm] --resume: no checkpoint at out/lstm/checkpoint.pt; starting fresh" in out
    assert "0 1 2" in out                           # a 3seqs run samples from a 3seqs prompt by default
    ckpt = work / "out" / "lstm" / "checkpoint.pt"
    good = ckpt.read_bytes()
    cases = [
        (argv + ["--overwrite", "--input_files", "data/nope.txt"], None, "no file 'data/nope.txt'"),
        (argv + ["--overwrite", "--prompt", "Hello world"], None, "none of its tokens ('Hello', ' world') occurs"),
        (argv + ["--resume", "--seed", "5"], None, "seed: checkpoint 1337, this run 5"),
        (argv + ["--resume"], good[:len(good) // 3], "checkpoint.pt is incomplete or damaged"),
        (argv + ["--resume"], b"", "checkpoint.pt is empty (0 bytes)"),
    ]
    for case_argv, ckpt_bytes, message in cases:
        if ckpt_bytes is not None:
            ckpt.write_bytes(ckpt_bytes)
        code, out, err = run_cli(case_argv, work, env, capsys)
        assert code == 1, (case_argv, err)
        assert message in err and "Traceback" not in err + out, (message, err)
        assert len(err.strip().splitlines()) == 2 and "--debug" in err
        ckpt.write_bytes(good)
    code, out, _ = run_cli(argv + ["--resume", "--seed", "5", "--force"], work, env, capsys)
    assert code == 0 and "resuming anyway (force): seed: checkpoint 1337, this run 5" in out


def test_no_traceback_in_a_real_process_and_debug_shows_it(course):
    work, env, argv = course
    cmd = [sys.executable, "-m", "picollm_helpers", *argv, "--input_files", "data/missing.txt"]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no file 'data/missing.txt'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["--debug"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr and "MissingFileError" in r.stderr


def test_pico_llm_names_name_the_models_in_pico_llm_files(course, capsys):
    work, env, argv = course
    argv = [a for a in argv if a not in ("--models", "lstm")]
    code, out, err = run_cli(argv + ["--models", "kvcache_transformer", "lstm"], work, env, capsys)
    assert code == 0, err
    assert "=== Training model: kvcache_transformer (the kit's transformer, " in out
    assert "=== Training model: lstm (" in out
    check_pico_llm_files(work / "out", {"kvcache_transformer": 2, "lstm": 0}, epochs=2, steps=2)
    # another run of one model replaces its entries and keeps the others'
    code, out, err = run_cli(argv + ["--models", "lstm_seq", "--epochs", "1", "--overwrite"], work, env, capsys)
    assert code == 0, err
    losses = json.loads((work / "out" / "loss_logs.json").read_text())
    assert list(losses) == ["kvcache_transformer", "lstm", "lstm_seq"] and len(losses["lstm_seq"]["train"]) == 1
    assert "(models: kvcache_transformer, lstm, lstm_seq)" in out


def test_monosemantic_enabled_annotates_each_generated_token(course, capsys):
    """pico-llm's --monosemantic_enabled: every token of the final samples, after the prompt, with its 5 nearest
    tokens in the model's embedding space (the cosine similarities of monosemantic_analysis_for_token), printed and
    saved in generation_logs.json; without the flag the file holds no such key."""
    work, env, argv = course
    code, out, err = run_cli(argv + ["--monosemantic_enabled"], work, env, capsys)
    assert code == 0, err
    assert "[lstm] monosemantic: each greedy token [its 3 nearest tokens in the embedding space]:" in out
    last = json.loads((work / "out" / "generation_logs.json").read_text())["lstm"][-1]
    notes = last["monosemantic"]
    assert set(notes) == {k for k in last if k != "monosemantic"} and notes["greedy"]
    model = torch.load(work / "out" / "lstm_final_weights.pt", weights_only=True)
    emb = model["embedding.weight"]
    for token, neighbours in notes["greedy"]:
        assert len(neighbours) == 5 and all(-1.0 <= s <= 1.0 for _, s in neighbours)
        assert [s for _, s in neighbours] == sorted((s for _, s in neighbours), reverse=True)
        assert token not in [n for n, _ in neighbours]
    # the similarities are the saved model's own: some token's 5 largest cosines to the others are exactly them
    cos = torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(emb, dim=-1).T
    cos.fill_diagonal_(-2.0)
    top5 = cos.topk(5, dim=-1).values                                          # (V, 5)
    saved = torch.tensor([s for _, s in notes["greedy"][0][1]])
    assert ((top5 - saved).abs().max(-1).values < 1e-3).any()
    code, out, err = run_cli(argv + ["--overwrite"], work, env, capsys)
    last = json.loads((work / "out" / "generation_logs.json").read_text())["lstm"][-1]
    assert code == 0 and "monosemantic" not in last


def test_attention_flag_sets_the_config_and_refuses_unknown_choices(capsys):
    parser = cli.build_parser()
    for choice in ("softmax", "linear", "gated_delta"):
        cfg = cli.config_from_args(parser.parse_args(["--profile", "smoke", "--attention", choice]), parser)
        assert cfg.attention == choice
    assert cli.config_from_args(parser.parse_args(["--profile", "smoke"]), parser).attention == "softmax"
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--attention", "cosine"])
    assert e.value.code == 2 and "gated_delta" in capsys.readouterr().err


def test_embed_scale_follows_the_encoding_unless_a_flag_says_otherwise(capsys):
    parser = cli.build_parser()
    parse = lambda *argv: cli.config_from_args(parser.parse_args(["--tinystories_weight", "1.0", *argv]), parser)
    assert parse("--pos_emb", "sinusoidal").embed_scale is True
    assert parse("--pos_emb", "sinusoidal", "--no-embed_scale").embed_scale is False
    assert parse("--pos_emb", "rope").embed_scale is False
    assert parse("--pos_emb", "rope", "--embed_scale").embed_scale is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: on with --pos_emb sinusoidal" in help_text and "--no-embed_scale" in help_text
