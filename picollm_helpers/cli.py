"""`python -m picollm_helpers`: the pico-llm command line.

    python -m picollm_helpers --tinystories_weight 0.0 --input_files data/3seqs.txt \\
        --prompt "0 1 2 3 4" --block_size 32 --max_steps_per_epoch 10

trains the k-gram MLP, the LSTM and the transformer in turn (choose with --models), prints
their samples and writes under --output_dir, per model, in <output_dir>/<kind>/: loss_logs.json,
generation_logs.json, checkpoint.pt and loss.png; for the transformer also attention.pt (its
attention patterns on the prompt) and attention.png; and loss_comparison.png across models.

Beside them, the files pico-llm itself writes, so a course's scripts that read them work as they are:

    <output_dir>/loss_logs.json           {name: {"train": [[loss of each step] per epoch],
                                                  "test": [[loss of each test batch] per epoch]}}
    <output_dir>/generation_logs.json     {name: [{"greedy": text, "0.2": text, ...} per epoch]}
                                          (with --monosemantic_enabled the last epoch also holds "monosemantic":
                                          {sample: [[token, [[nearest token, cosine], ...]], ...]})
    <output_dir>/<name>_final_weights.pt  the model's state_dict (torch.load(..., weights_only=True))
    <output_dir>/<name>_attention.pt      the transformer's attention.pt, as above

`name` is the model as --models named it: pico-llm's names (kgram_mlp_seq, lstm_seq,
kvcache_transformer, the default) or the kit's (lstm, transformer). The two JSON files keep the
entries of models an earlier run wrote; each model's entry is replaced when it trains again (a
file that is not a JSON object is kept beside it as <name>.damaged before it is written afresh).

Nothing finished is lost: before loading any data the command checks --output_dir (a folder it
can write, no folder where a file goes) and refuses to train over a run already there unless
--resume continues it or --overwrite replaces it. Ctrl-C says which checkpoint is kept; a full
disk, a model too large for the memory and the like end in one message, never a traceback.

The profile (--profile, else $PICOLLM_PROFILE, else laptop) sets the defaults; every flag given
explicitly overrides it. The same command under torchrun trains with DistributedDataParallel:

    torchrun --standalone --nproc_per_node 2 -m picollm_helpers --models transformer ...
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from pathlib import Path

from .config import PROFILE_CAPS, PROFILES, RunConfig, current_profile, resolve_device
from .errors import PicoLLMError

MODEL_KINDS = ("kgram_mlp_seq", "lstm", "transformer")   # models.KINDS, in the order pico-llm trains them
# pico-llm's own names for them: --models takes these too, and by default they name the models in
# pico-llm's output files (so a course's scripts find loss_logs["lstm_seq"] where pico-llm put it).
PICO_LLM_NAMES = {"kgram_mlp_seq": "kgram_mlp_seq", "lstm_seq": "lstm", "kvcache_transformer": "transformer"}
MODEL_NAMES = {**{kind: kind for kind in MODEL_KINDS}, **PICO_LLM_NAMES}   # a name --models takes -> kind
_D = {f: getattr(RunConfig, f) for f in RunConfig.__dataclass_fields__ if hasattr(RunConfig, f)}


def _int_or_none(s: str):
    if s.lower() in ("none", "full", "all"):
        return None
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number (or 'none' for a full pass)") from None


def _default(name: str) -> str:
    value = _D[name]
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "none"
    return repr(value) if isinstance(value, str) else str(value)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are the one line that matters and a pointer to --help
    (argparse's default repeats the whole usage, 35 lines, above it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\nRun `{self.prog} --help` to see every flag.\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m picollm_helpers",
        description="Train pico-llm's k-gram MLP, LSTM and transformer on TinyStories and/or text files, "
                    "print samples, and save logs, checkpoints and plots. A flag not given takes its "
                    "default below, capped by the profile; a flag given is used as is.",
        epilog="profile caps: " + "; ".join(f"{name}: " + ", ".join(f"{k}<={v}" for k, v in caps.items())
                                            for name, caps in PROFILE_CAPS.items() if caps) + ".",
        argument_default=argparse.SUPPRESS)

    def flag(group, name, help, **kw):
        """--name sets RunConfig.name; its dataclass default is appended to the help."""
        if name in _D and kw.get("action") not in ("store_true", argparse.BooleanOptionalAction):
            help += f" (default: {_default(name)})"
        group.add_argument(f"--{name}", help=help, **kw)

    g = p.add_argument_group("run")
    g.add_argument("--models", nargs="+", choices=list(MODEL_NAMES), default=list(PICO_LLM_NAMES), metavar="MODEL",
                   help="which models to train, in this order: kgram_mlp_seq, lstm_seq (or lstm), "
                        "kvcache_transformer (or transformer); pico-llm's files use the name given "
                        "(default: all three, by pico-llm's names)")
    g.add_argument("--profile", choices=PROFILES,
                   help="smoke (seconds), laptop (minutes on a CPU) or full (the report's sizes, a GPU); "
                        "default: $PICOLLM_PROFILE or laptop")
    g.add_argument("--resume", action="store_true", default=False,
                   help="continue each model from <output_dir>/<model>/checkpoint.pt when it exists; a "
                        "checkpoint of other settings or data is refused")
    g.add_argument("--force", action="store_true", default=False,
                   help="with --resume: resume even when the checkpoint's settings or data differ (they are listed)")
    g.add_argument("--overwrite", action="store_true", default=False,
                   help="train afresh over a run already in --output_dir, replacing its checkpoints and logs "
                        "(without it, or --resume, such a run is refused)")
    g.add_argument("--debug", action="store_true", default=False,
                   help="on an error, show the full Python traceback instead of the one-line message")
    flag(g, "seed", "seeds the data split, initialisation and sampling", type=int)
    flag(g, "device_id", "torch device, e.g. cuda:0, mps, cpu; falls back to an available one", type=str)
    flag(g, "output_dir", "folder for logs, checkpoints and plots, one subfolder per model", type=str)

    g = p.add_argument_group("data")
    flag(g, "input_files", "text files mixed in as data, one example per line", nargs="*")
    flag(g, "tinystories_weight", "probability an example is drawn from TinyStories; 0 skips it; without "
                                  "input files every example comes from TinyStories/wiki", type=float)
    flag(g, "wiki_weight", "probability an example is drawn from the Wikipedia text", type=float)
    flag(g, "num_tinystories", "how many TinyStories to load", type=int)
    flag(g, "num_wiki_lines", "how many Wikipedia lines to load", type=int)
    flag(g, "packed", "join documents with <|endoftext|> and cut block_size+1 token chunks, instead of "
                      "one example per line/story", action="store_true")
    flag(g, "compact_vocab", "train over only the GPT-2 ids the corpus uses (a much cheaper output layer); "
                             "profile default: on for smoke and laptop, off for full",
         action=argparse.BooleanOptionalAction)
    flag(g, "test_fraction", "share of each source held out for the test loss", type=float)
    flag(g, "block_size", "maximum sequence length in tokens", type=int)

    g = p.add_argument_group("models")
    flag(g, "embed_size", "embedding / hidden size of every model", type=int)
    flag(g, "kgram_k", "context window of the k-gram MLP, in tokens", type=int)
    flag(g, "kgram_chunk_size", "k-gram positions processed per micro-batch", type=int)
    flag(g, "kgram_input", "k-gram input encoding", choices=("embedding", "onehot"))
    flag(g, "num_inner_mlp_layers", "(Linear->SiLU) blocks inside the k-gram MLP", type=int)
    flag(g, "lstm_layers", "stacked LSTM layers", type=int)
    flag(g, "n_heads", "attention heads per transformer block", type=int)
    flag(g, "n_blocks", "transformer blocks", type=int)
    flag(g, "pos_emb", "transformer positional encoding; default: learned with --use_position_emb, else none",
         choices=("none", "learned", "sinusoidal", "rope"))
    flag(g, "attention", "transformer attention: softmax (a growing KV cache), linear (Katharopoulos et al.) or "
                         "gated_delta (the gated delta rule); the last two generate from a fixed-size state",
         choices=("softmax", "linear", "gated_delta"))
    flag(g, "use_position_emb", "learned absolute position embeddings (pico-llm's flag)", action="store_true")
    flag(g, "use_post_norm", "RMSNorm after each residual add (post-norm) instead of before (pre-norm)",
         action="store_true")
    flag(g, "embed_scale", "token embeddings at unit scale, N(0, 1/E) times sqrt(E), as in Vaswani et al.; "
                           "default: on with --pos_emb sinusoidal (at GPT-2's init the sinusoid is 35x the "
                           "token signal and training stalls), off otherwise",
         action=argparse.BooleanOptionalAction)
    flag(g, "dropout", "dropout probability", type=float)

    g = p.add_argument_group("training")
    flag(g, "epochs", "passes over the data", type=int)
    flag(g, "max_steps_per_epoch", "end each epoch after this many steps ('none': a full pass)", type=_int_or_none)
    flag(g, "batch_size", "examples per optimizer step, split across processes under torchrun", type=int)
    flag(g, "learning_rate", "AdamW learning rate", type=float)
    flag(g, "weight_decay", "AdamW weight decay", type=float)
    flag(g, "warmup_steps", "linear learning-rate warmup steps", type=int)
    flag(g, "lr_schedule", "learning rate after warmup", choices=("constant", "cosine"))
    flag(g, "grad_clip", "clip the gradient norm to this; 0 disables", type=float)
    flag(g, "precision", "bf16 autocast, plain fp32, or auto: bf16 on a CUDA GPU that supports it, else fp32; "
                         "profile default: auto for full, fp32 otherwise", choices=("fp32", "bf16", "auto"))
    flag(g, "compile", "torch.compile the training step (eager if compiling fails); profile default: on for "
                       "full, off otherwise", action=argparse.BooleanOptionalAction)
    flag(g, "loss_chunk_size", "0: loss on the full (B, T, V) logits; N: output layer and loss N rows at a "
                               "time, saving memory", type=int)
    flag(g, "length_bucket", "0: pad each batch to its longest example; N: to a multiple of N, so batches "
                             "come in a few shapes (with --compile on a CUDA GPU: CUDA graphs)", type=int)
    flag(g, "eval_subset", "0: each epoch's test loss on the whole test set; N: on N fixed test examples "
                           "each epoch but the last (the whole set then), a cheaper evaluation", type=int)

    g = p.add_argument_group("generation")
    flag(g, "prompt", "prompt for the samples", type=str)
    flag(g, "max_new_tokens", "tokens generated per sample", type=int)
    flag(g, "top_p_values", "nucleus sampling p values sampled each epoch", type=float, nargs="+")
    g.add_argument("--monosemantic_enabled", action="store_true", default=False,
                   help="annotate each token of the final samples with the tokens nearest to it in the model's "
                        "embedding space (pico-llm's K-means monosemantic stub); printed, and saved under "
                        "'monosemantic' in the last epoch of generation_logs.json")
    return p


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RunConfig:
    """The profile's config with every explicitly given flag applied; bad values -> parser.error (exit 2)."""
    explicit = {k: v for k, v in vars(args).items()
                if k not in ("models", "profile", "resume", "force", "overwrite", "debug", "monosemantic_enabled")}
    files = explicit.get("input_files") or ()
    if ("prompt" not in explicit and files and not explicit.get("tinystories_weight", 0.5)
            and not explicit.get("wiki_weight", 0.0) and all(Path(f).name == "3seqs.txt" for f in files)):
        explicit["prompt"] = "0 1 2 3 4"   # a 3seqs model knows only digits: start it like the data
    try:
        profile = getattr(args, "profile", None) or current_profile()
        # Explicit flags go in as the report's values and as the profile's overrides: never capped.
        return RunConfig.for_profile(profile, laptop=explicit, smoke=explicit, **explicit)
    except PicoLLMError as e:
        parser.error(str(e))


def _print_samples(name: str, history, prompt: str) -> None:
    if not history.generations:
        return
    epoch = max(history.generations)
    print(f"[{name}] samples after epoch {epoch} from prompt {prompt!r}:")
    for key, text in history.generations[epoch].items():
        print(f"  {key:>12}: {text!r}")


def _check_models(names, parser) -> None:
    """Each model once: `--models lstm lstm_seq` would train one model twice into the same folder."""
    seen = {}
    for name in names:
        kind = MODEL_NAMES[name]
        if kind in seen:
            same = f"{seen[kind]} and {name} name the same model ({kind})" if seen[kind] != name else \
                f"{name} is given twice"
            parser.error(f"argument --models: {same}; give each model once.")
        seen[kind] = name


def _update_json(path: Path, name: str, entry) -> list[str]:
    """Set {name: entry} in the JSON object at path, keeping the other models' entries; return its names."""
    from .files import write_text

    doc = {}
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = None
        if not isinstance(doc, dict):
            backup = _backup(path)
            print(f"note: {path} did not hold a JSON object of models; kept as {backup}, writing it afresh")
            doc = {}
    doc[name] = entry
    write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return list(doc)


def _backup(path: Path) -> Path:
    """Copy a file about to be replaced to <name>.damaged (.damaged.1, ... if taken); return the copy."""
    from .files import write_bytes

    backup, n = path.with_name(path.name + ".damaged"), 0
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}.damaged.{n}")
    return write_bytes(backup, path.read_bytes())


def _monosemantic_notes(kind: str, model, tokenizer, history, prompt: str, top_n: int = 5) -> dict:
    """--monosemantic_enabled: each token the final samples generated after the prompt, with its top_n nearest
    tokens in the model's embedding space: {sample key: [[token, [[neighbour, cosine], ...]], ...]}. Prints the
    greedy sample's tokens with their 3 nearest."""
    from .monosemantic import monosemantic_analysis_for_token

    if not history.generations:
        return {}
    n_prompt = len(tokenizer.encode_ordinary(prompt))
    notes = {}
    for key, text in history.generations[max(history.generations)].items():
        ids = tokenizer.encode_ordinary(text)[n_prompt:]     # the generated tokens (the text re-encoded)
        notes[key.removeprefix("top_p=")] = [
            [tokenizer.decode([i]), [list(nb) for nb in monosemantic_analysis_for_token(i, model, tokenizer, top_n)]]
            for i in ids]
    greedy = notes.get("greedy", [])
    print(f"[{kind}] monosemantic: each greedy token [its 3 nearest tokens in the embedding space]:")
    print("  " + " ".join(f"{tok!r}[{', '.join(repr(n) for n, _ in nbs[:3])}]" for tok, nbs in greedy))
    return notes


def _save_pico_llm_files(out: Path, name: str, model, history, monosemantic: dict | None = None) -> None:
    """pico-llm's own output files for one model (see the module docstring); with monosemantic notes, the
    last epoch's generations carry them under "monosemantic"."""
    import torch

    from .files import atomic_write

    names = _update_json(out / "loss_logs.json", name, history.pico_llm_losses())
    generations = history.pico_llm_generations()
    if monosemantic and generations:
        generations[-1]["monosemantic"] = monosemantic
    _update_json(out / "generation_logs.json", name, generations)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}   # a plain state_dict
    with atomic_write(out / f"{name}_final_weights.pt", "wb") as f:
        torch.save(weights, f)
    print(f"[{name}] pico-llm's files: {out / f'{name}_final_weights.pt'}; {out / 'loss_logs.json'} and "
          f"{out / 'generation_logs.json'} (models: {', '.join(names)})")


def _save_attention(model, tokenizer, cfg, paths: list[Path], run_dir: Path) -> None:
    """The transformer's attention on the prompt, written to each of `paths` (one format:
    {"prompt", "tokens", "attention": {"blocks.i.attn": (H, T, T)}}), and a heatmap of the last
    block's head 0 in run_dir/attention.png."""
    import torch

    from .files import atomic_write
    from .interp import attention_patterns
    from .plots import plot_attention

    device = next(model.parameters()).device
    ids = tokenizer.encode_ordinary(cfg.prompt)[-cfg.block_size:]
    attn = attention_patterns(model, torch.tensor([ids], device=device))  # {"blocks.i.attn": (1, H, T, T)}
    tokens = [tokenizer.decode([i]) for i in ids]
    doc = {"prompt": cfg.prompt, "tokens": tokens,
           "attention": {name: a[0].float().cpu() for name, a in attn.items()}}   # name -> (H, T, T)
    for path in paths:
        with atomic_write(path, "wb") as f:
            torch.save(doc, f)
    last = list(doc["attention"])[-1]
    plot_attention(doc["attention"][last][0], tokens, title=f"{last}, head 0: attention on the prompt",
                   path=run_dir / "attention.png")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_models(args.models, parser)
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --output_dir, --overwrite replaces it: give one of them.")
    cfg = config_from_args(args, parser)
    _training.clear()
    try:
        return _main(cfg, args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{parser.prog}: interrupted (Ctrl-C): {_interrupted_message()}", file=sys.stderr)
        return 130
    except (PicoLLMError, OSError, RuntimeError) as e:
        # A mistake in what the user gave (PicoLLMError), a file the system refused (OSError with a
        # file name: a folder not writable), a full disk, or memory running out: one message, no
        # traceback. Any other exception is a bug and keeps its traceback.
        what = _user_message(e)
        if args.debug or what is None:
            raise
        print(f"{parser.prog}: error: {what}\n(--debug shows the traceback)", file=sys.stderr)
        return 1


def _user_message(e: BaseException) -> str | None:
    """The one-line message for an error that is the user's or the machine's to fix; None for a bug."""
    if isinstance(e, PicoLLMError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {e.filename}" if e.filename else ""
        return f"the disk is full{where} ({e.strerror or e}); free some space and run again (--resume continues)."
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    if isinstance(e, RuntimeError) and _out_of_memory(e) and _training:
        return _too_large_message(**_training, ran_out=True)
    return None


def _out_of_memory(e: BaseException) -> bool:
    import torch

    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


# The model being trained now, for the messages of Ctrl-C and of memory running out:
# {"kind", "cfg", "vocab_size", "checkpoint", "before" (its mtime when training began), "resume"}.
_training: dict = {}


def _interrupted_message() -> str:
    if not _training:
        return "stopped before any model began training; nothing in --output_dir was changed by this run."
    kind, ckpt, before = _training["kind"], Path(_training["checkpoint"]), _training["before"]
    now = ckpt.stat().st_mtime_ns if ckpt.is_file() else None
    if now is None:
        return (f"no epoch of {kind} had finished, so it has no checkpoint yet; run the same command again "
                f"to train it.")
    epoch = _checkpoint_epochs(ckpt)
    if now == before and not _training["resume"]:
        return (f"no epoch of this {kind} run had finished; {ckpt} still holds the earlier run"
                f"{f' ({epoch})' if epoch else ''}.")
    return (f"{ckpt} keeps the last finished epoch of {kind}{f' ({epoch})' if epoch else ''}; run the same "
            f"command with --resume to continue from it (the interrupted epoch is trained again).")


def _checkpoint_epochs(ckpt: Path) -> str:
    """ "epoch 2 of 4" as the checkpoint records it, or "" when it cannot be read."""
    from .checkpoint import read_checkpoint

    try:
        c = read_checkpoint(ckpt)
        return f"epoch {c['epoch']} of {c['config'].get('epochs', '?')}"
    except Exception:
        return ""


def _model_settings(kind: str, cfg, vocab_size: int) -> str:
    """The settings that decide a model's size, as flags."""
    names = {"lstm": ("embed_size", "lstm_layers"),
             "kgram_mlp_seq": ("embed_size", "kgram_k", "num_inner_mlp_layers", "kgram_input"),
             "transformer": ("embed_size", "n_blocks", "block_size")}[kind]
    return ", ".join(f"--{n} {getattr(cfg, n)}" for n in names) + f" and a vocabulary of {vocab_size:,} ids"


def _too_large_message(kind: str, cfg, vocab_size: int, have: int | None = None, ran_out: bool = False,
                       **_) -> str:
    from .models import param_count_formula

    n = param_count_formula(kind, cfg, vocab_size)
    gib = 2.0**30
    need = f"{n:,} parameters, about {16 * n / gib:,.1f} GiB to train (weights, gradients and AdamW's two " \
           f"moments, 4 bytes each)"
    if ran_out:
        return (f"[{kind}] memory ran out while building or training the model: {need}, plus the activations of "
                f"--batch_size {cfg.batch_size} x --block_size {cfg.block_size}. Its size comes from "
                f"{_model_settings(kind, cfg, vocab_size)}: lower them (or --batch_size).")
    return (f"[{kind}] the model is too large for this machine: {need}, but the device has {have / gib:,.1f} GiB "
            f"of memory. Its size comes from {_model_settings(kind, cfg, vocab_size)}: lower them.")


def _memory_bytes(device) -> int | None:
    """Total memory of the device a model trains on (the RAM for a CPU), or None if unknown."""
    import torch

    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None


def _check_fits(kind: str, cfg, vocab_size: int, device) -> None:
    """Refuse, before any memory is allocated, a model whose training state alone exceeds the device's memory."""
    from .models import param_count_formula

    have = _memory_bytes(device)
    if have and 16 * param_count_formula(kind, cfg, vocab_size) > have:
        raise PicoLLMError(_too_large_message(kind, cfg, vocab_size, have))


# What each model's run folder and --output_dir hold: the files a run writes there.
RUN_FILES = ("checkpoint.pt", "loss_logs.json", "generation_logs.json", "loss.png", "attention.pt", "attention.png")
TOP_FILES = ("loss_logs.json", "generation_logs.json", "loss_comparison.png")


def check_output_dir(cfg, names, resume: bool = False, overwrite: bool = False) -> None:
    """Before any data is loaded: --output_dir and each model's folder must be folders this user can
    write, with no folder where a file goes; a run already there is refused unless resumed
    (--resume) or replaced (--overwrite); a resumed checkpoint must be readable and not ask for
    fewer epochs than it has."""
    from .checkpoint import read_checkpoint

    label = cfg.output_dir or "."
    out = Path(label)
    for folder in [out] + [out / MODEL_NAMES[n] for n in names]:
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent          # where mkdir would start
        if existing.exists() and not existing.is_dir():
            raise PicoLLMError(f"--output_dir {label}: {existing} is a file, not a folder. Pick another "
                               f"--output_dir, or move the file away.")
        if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
            raise PicoLLMError(f"--output_dir {label}: the folder {existing} is not writable (read-only, or "
                               f"another user's). Pick another --output_dir, or make it writable.")
    files = [out / MODEL_NAMES[n] / f for n in names for f in RUN_FILES]
    files += [out / f for f in TOP_FILES] + [out / f"{n}_{f}" for n in names for f in ("final_weights.pt",
                                                                                       "attention.pt")]
    for f in files:
        if f.is_dir():
            raise PicoLLMError(f"--output_dir {label}: {f} is a folder, where the run writes its {f.name}. Move "
                               f"it away, or pick another --output_dir.")
    if resume:
        for n in names:
            ckpt = out / MODEL_NAMES[n] / "checkpoint.pt"
            if not ckpt.is_file():
                continue
            done = read_checkpoint(ckpt)["epoch"]   # a damaged one is refused here, before any data is loaded
            if done > cfg.epochs:
                raise PicoLLMError(f"{ckpt} has {done} epochs trained, and --epochs {cfg.epochs} asks for fewer, so "
                                   f"--resume would train nothing. Pass --epochs {done} or more to continue it, "
                                   f"--overwrite to replace it with a {cfg.epochs}-epoch run, or pick another "
                                   f"--output_dir.")
        return
    if overwrite:
        return
    found = []
    for n in names:
        kind = MODEL_NAMES[n]
        ckpt = out / kind / "checkpoint.pt"
        if ckpt.is_file():
            epochs = _checkpoint_epochs(ckpt)
            found.append(f"{ckpt} ({kind}{', ' + epochs if epochs else ''})")
        else:
            found += [str(f) for f in (out / kind / "loss_logs.json", out / f"{n}_final_weights.pt") if f.is_file()][:1]
    if found:
        raise PicoLLMError(f"--output_dir {label} already holds a run: {'; '.join(found)}. Nothing was changed. "
                           f"Pass --resume to continue it, --overwrite to replace it, or pick another --output_dir.")


def _main(cfg: RunConfig, args) -> int:

    from . import distributed
    dist, _ = distributed.setup(cfg.device_id)
    if not dist.is_main:
        os.environ["TQDM_DISABLE"] = "1"          # one progress bar and one log, from rank 0
    quiet = contextlib.redirect_stdout(open(os.devnull, "w")) if not dist.is_main else contextlib.nullcontext()
    with quiet:
        check_output_dir(cfg, args.models, resume=args.resume, overwrite=args.overwrite)
        _run(cfg, args.models, args.resume, dist, force=args.force,
             monosemantic=getattr(args, "monosemantic_enabled", False))
    distributed.cleanup()
    return 0


def _run(cfg: RunConfig, names, resume: bool, dist, force: bool = False, monosemantic: bool = False) -> None:
    import torch

    from .batching import make_datasets
    from .models import build_model
    from .tokenizer import get_tokenizer
    from .training import train

    if not dist.enabled:   # resolve once, so the printed config says what runs
        cfg = cfg.replace(device_id=str(resolve_device(cfg.device_id)))
    print(f"profile: {cfg.profile}" + (f", {dist.world_size} processes (DDP)" if dist.enabled else ""))
    print(cfg.summary())
    train_ds, test_ds = make_datasets(cfg, get_tokenizer())
    tokenizer = train_ds.tokenizer          # GPT-2, or its compact form with cfg.compact_vocab
    out = Path(cfg.output_dir)
    histories = {}
    for name in names:
        kind = MODEL_NAMES[name]
        torch.manual_seed(cfg.seed)
        _check_fits(kind, cfg, train_ds.vocab_size, resolve_device(cfg.device_id, verbose=False))
        ckpt = out / kind / "checkpoint.pt"
        _training.update(kind=kind, cfg=cfg, vocab_size=train_ds.vocab_size, checkpoint=ckpt, resume=resume,
                         before=ckpt.stat().st_mtime_ns if ckpt.is_file() else None)
        model = build_model(kind, cfg, vocab_size=train_ds.vocab_size)
        n_params = sum(p.numel() for p in model.parameters())
        also = f"the kit's {kind}, " if name != kind else ""
        print(f"\n=== Training model: {name} ({also}{n_params:,} parameters) ===")
        if resume and not ckpt.exists():
            print(f"[{kind}] --resume: no checkpoint at {ckpt}; starting fresh")
        history = train(model, cfg, train_ds, test_ds, tokenizer, name=kind, force_resume=force,
                        resume_from=ckpt if resume and ckpt.exists() else None)
        histories[name] = history
        if dist.is_main:
            from .plots import plot_history  # matplotlib and seaborn load in rank 0 only
            _print_samples(kind, history, cfg.prompt)
            plot_history(history, path=out / kind / "loss.png")
            if kind == "transformer":
                _save_attention(model, tokenizer, cfg, [out / kind / "attention.pt", out / f"{name}_attention.pt"],
                                out / kind)
            print(f"[{kind}] outputs in {out / kind}")
            notes = _monosemantic_notes(kind, model, tokenizer, history, cfg.prompt) if monosemantic else None
            _save_pico_llm_files(out, name, model, history, notes)
        _training.clear()
    if dist.is_main and len(histories) > 1:
        from .plots import plot_runs
        # absolute: a bare "loss_comparison.png" (--output_dir . or "") would go to the kit's figures/
        plot_runs(histories, metric="train", path=out.absolute() / "loss_comparison.png",
                  title="Training loss by model (moving mean)")
        print(f"\nloss comparison: {out / 'loss_comparison.png'}")


if __name__ == "__main__":
    sys.exit(main())
