"""Run configuration: every knob of a pico-llm run in one validated dataclass, plus profiles.

The field names are the pico-llm command-line flags, so a configuration reads the same in the
report, on the command line (`python -m picollm_helpers --block_size 32 ...`) and in a notebook.

Profiles scale the report's configurations to the machine at hand, chosen by `PICOLLM_PROFILE`:

- ``smoke``:  seconds per run; what CI and nbval use.
- ``laptop``: the default; minutes on a 2-core CPU, and each lesson's phenomenon still shows.
- ``full``:   the report's own configurations, for a GPU.

A notebook passes the report's values to `RunConfig.for_profile` and, where a lesson needs it,
its own laptop/smoke adjustments; the printed config is what actually ran.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

PROFILES = ("smoke", "laptop", "full")
POS_EMBS = ("none", "learned", "sinusoidal", "rope")
# The transformer's attention: softmax (a KV cache that grows), or a fixed-size state (lesson 10).
ATTENTIONS = ("softmax", "linear", "gated_delta")
KGRAM_INPUTS = ("embedding", "onehot")
PRECISIONS = ("fp32", "bf16", "auto")
LR_SCHEDULES = ("constant", "cosine")
# What device_id may name: a device kind torch knows here, optionally with an index.
_DEVICE_ID = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_FLOATS = ("tinystories_weight", "wiki_weight", "test_fraction", "dropout", "learning_rate", "weight_decay",
           "grad_clip")
_INTS = ("num_tinystories", "num_wiki_lines", "block_size", "embed_size", "kgram_k", "kgram_chunk_size",
         "num_inner_mlp_layers", "lstm_layers", "n_heads", "n_blocks", "epochs", "batch_size", "warmup_steps",
         "loss_chunk_size", "length_bucket", "eval_subset", "max_new_tokens", "seed")
_BOOLS = ("packed", "compact_vocab", "use_position_emb", "use_post_norm", "embed_scale", "compile")
# Fields added later, left out of to_dict() at these values (see RunConfig.to_dict): a stored dictionary
# without one of them means this value, whatever the field's default is now.
_LATER_FIELDS = {"embed_scale": False, "length_bucket": 0, "eval_subset": 0, "attention": "softmax"}
# The largest seed: 32 bits, the size numpy's and most tools' seeds take; seed * 1_000_003 + epoch
# (the data split's and the batch order's generators) then stays far within torch's 64-bit seeds.
MAX_SEED = 2**32 - 1
# Targets with this value are skipped by the loss (padding): F.cross_entropy's default ignore_index.
IGNORE_INDEX = -100

# Upper bounds each profile applies to the report's values before the lesson's own overrides.
# `full` applies none: it is the report.
PROFILE_CAPS: dict[str, dict[str, int]] = {
    "smoke": dict(block_size=32, embed_size=32, n_blocks=2, n_heads=2, epochs=2,
                  max_steps_per_epoch=4, batch_size=8, num_tinystories=400, num_wiki_lines=400,
                  max_new_tokens=12),
    "laptop": dict(block_size=128, embed_size=128, n_blocks=4, n_heads=4,
                   max_steps_per_epoch=150, num_tinystories=20000, num_wiki_lines=30000),
    "full": {},
}
# Settings a profile switches on unless the lesson says otherwise, each the fastest correct setting
# `python -m picollm_helpers.bench` measured for that profile's machine:
# - laptop (a 2-core CPU): train over only the token ids the corpus uses (tokenizer.CompactTokenizer;
#   the output layer gets ~10-20x cheaper), and compute the output layer and its loss 512 rows at a
#   time, fused with their gradient (loss.FusedLinearCE: same loss and gradients, a fraction
#   of the memory). fp32: most laptop CPUs have no fast bf16 matmul, and a lesson's numbers should
#   not depend on the CPU (README, Profiles). No torch.compile: compiling costs more per run than it
#   saves in a laptop run.
# - full (one GPU): the report's 50257-way softmax with full logits (the fused loss is slower on a
#   GPU), bf16 autocast where the device has fast bf16 matmuls (precision="auto") and torch.compile:
#   together several times faster than fp32 eager on an H200 (README, Speed).
PROFILE_DEFAULTS: dict[str, dict] = {
    "smoke": dict(compact_vocab=True),
    "laptop": dict(compact_vocab=True, loss_chunk_size=512),
    "full": dict(compact_vocab=False, precision="auto", compile=True),
}


def repo_root() -> Path:
    """The kit's top folder (the one holding notebooks/, data/, figures/)."""
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Where tokenized data and the tokenizer's files are cached: $PICOLLM_CACHE or <repo>/.cache."""
    env = os.environ.get("PICOLLM_CACHE")
    path = Path(env or repo_root() / ".cache")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError, PermissionError, OSError) as e:
        what = "is a file, not a folder" if isinstance(e, (FileExistsError, NotADirectoryError)) else \
            f"cannot be created ({e.strerror or type(e).__name__})"
        where = f"PICOLLM_CACHE={env!r}" if env else f"the kit's cache folder {path}"
        raise ConfigError(f"{where}: {what}. " + ("Point PICOLLM_CACHE at a folder (it is made if missing), or "
                                                  "unset it to use <kit>/.cache." if env else
                                                  "Set PICOLLM_CACHE to a folder you can write.")) from None
    return path


def figures_dir() -> Path:
    path = Path(os.environ.get("PICOLLM_FIGURES") or repo_root() / "figures")
    path.mkdir(parents=True, exist_ok=True)
    return path


def current_profile() -> str:
    """The profile named by $PICOLLM_PROFILE (default ``laptop``), validated."""
    profile = os.environ.get("PICOLLM_PROFILE", "").strip() or "laptop"
    if profile not in PROFILES:
        raise ConfigError(
            f"PICOLLM_PROFILE={profile!r} is not a profile; use one of {', '.join(PROFILES)} "
            f"(for example: export PICOLLM_PROFILE=laptop)."
        )
    return profile


@dataclass(frozen=True)
class RunConfig:
    # data
    input_files: tuple[str, ...] = ()
    tinystories_weight: float = 0.5
    wiki_weight: float = 0.0
    num_tinystories: int = 20000
    num_wiki_lines: int = 30000
    packed: bool = False
    test_fraction: float = 0.1
    block_size: int = 1024
    compact_vocab: bool = False  # train over only the GPT-2 ids the corpus uses (CompactTokenizer)
    # models
    embed_size: int = 1024
    kgram_k: int = 3
    kgram_chunk_size: int = 1
    kgram_input: str = "embedding"
    num_inner_mlp_layers: int = 1
    lstm_layers: int = 1
    n_heads: int = 8
    n_blocks: int = 6
    pos_emb: str = ""  # "" -> "learned" if use_position_emb else "none"
    use_position_emb: bool = False
    use_post_norm: bool = False
    # Token embeddings at unit scale, N(0, 1/E) times sqrt(E) (Vaswani et al.). None: on with sinusoidal
    # positions, off otherwise. At GPT-2's N(0, 0.02) an added sinusoid (RMS 0.71) starts 35x the token signal
    # (RMS 0.02) and training stalls near a unigram model (lesson 06); other encodings are unchanged.
    embed_scale: bool | None = None
    attention: str = "softmax"  # "softmax", "linear" (Katharopoulos et al.) or "gated_delta" (Gated DeltaNet)
    dropout: float = 0.0
    # training
    epochs: int = 3
    max_steps_per_epoch: int | None = None
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    precision: str = "fp32"
    compile: bool = False
    loss_chunk_size: int = 0
    # 0: each training batch is padded to its longest example. N: to the next multiple of N (at most
    # block_size), so batches take at most ceil(block_size / N) shapes: what CUDA graphs need.
    length_bucket: int = 0
    # 0: each epoch's test loss is on the whole test set. N: each epoch but the last is tested on N test
    # examples, the same ones every epoch (drawn with seed), and the last on the whole set: a long
    # run's per-epoch evaluation then costs N examples, not the whole set (History.test_subset says which).
    eval_subset: int = 0
    # generation
    prompt: str = "Once upon a"
    max_new_tokens: int = 20
    top_p_values: tuple[float, ...] = (0.2, 0.5, 0.75, 0.95, 1.0)
    # run
    device_id: str = "auto"  # "auto": CUDA, then MPS, then CPU; or "cpu", "cuda", "cuda:1", "mps"
    output_dir: str = "outputs"
    seed: int = 1337
    profile: str = "laptop"

    # The report's values this run was scaled from (for_profile's keywords), for summary(); not a
    # setting, so it takes no part in equality, to_dict() or checkpoints.
    _report: dict | None = field(default=None, compare=False, repr=False)
    # True when embed_scale was left to its default (None): replace() then resolves it again for the new
    # pos_emb, so cfg.replace(pos_emb="sinusoidal") scales as RunConfig(pos_emb="sinusoidal") does.
    _embed_scale_auto: bool = field(default=False, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Normalise list-ish inputs so configs compare and serialise the same way. One path given
        # as a string is one file (iterating it would give its characters).
        files = self.input_files or ()
        if isinstance(files, (str, os.PathLike)):
            files = (files,)
        object.__setattr__(self, "input_files", tuple(str(p) for p in files))
        tops = (self.top_p_values,) if isinstance(self.top_p_values, (int, float, str)) else self.top_p_values
        try:
            object.__setattr__(self, "top_p_values", tuple(float(p) for p in tops))
        except (TypeError, ValueError):
            raise ConfigError(f"top_p_values={self.top_p_values!r} is invalid: give numbers in (0, 1], "
                              "e.g. (0.5, 0.95, 1.0).") from None
        for name in _FLOATS + _INTS:   # numpy scalars (a sweep over np.arange) as plain Python numbers
            v = getattr(self, name)
            if type(v) not in (int, float, bool) and isinstance(v, numbers.Real):
                object.__setattr__(self, name, int(v) if isinstance(v, numbers.Integral) else float(v))
        if self.pos_emb == "":
            object.__setattr__(self, "pos_emb", "learned" if self.use_position_emb else "none")
        if self.embed_scale is None:
            object.__setattr__(self, "embed_scale", self.pos_emb == "sinusoidal")
            object.__setattr__(self, "_embed_scale_auto", True)
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, fix: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r} is invalid: {fix}")

        # Types first, so the range checks below compare numbers (a "1e-3" string or a NaN would
        # otherwise pass or fail them with a confusing message, or only during training).
        for name in _FLOATS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "it must be a finite number, e.g. " + repr(getattr(RunConfig, name)) + ".")
        for name in _INTS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(name, "it must be a whole number, e.g. " + repr(getattr(RunConfig, name)) + ".")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "it must be True or False.")
        m = self.max_steps_per_epoch
        if m is not None and (isinstance(m, bool) or not isinstance(m, int)):
            raise bad("max_steps_per_epoch", "it must be a whole number, or None for a full pass.")
        for name in ("prompt", "output_dir", "device_id"):
            if not isinstance(getattr(self, name), str):
                raise bad(name, "it must be a string.")
        if not self.prompt:
            raise bad("prompt", "the samples after each epoch start from it; give some text, e.g. 'Once upon a'.")
        if not _DEVICE_ID.fullmatch(self.device_id):
            raise bad("device_id", "use auto, cpu, mps, cuda or cuda:N (N a GPU number).")

        positive = ["block_size", "embed_size", "kgram_k", "num_tinystories", "num_wiki_lines",
                    "n_heads", "n_blocks", "epochs", "batch_size", "lstm_layers"]
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "it must be a whole number >= 1.")
        if self.block_size < 2:
            raise bad("block_size", "a sequence needs at least 2 tokens (one input, one target); use >= 2.")
        if self.num_inner_mlp_layers < 0:
            raise bad("num_inner_mlp_layers", "use 0 or more.")
        if self.kgram_chunk_size < 0:
            raise bad("kgram_chunk_size", "use 0 or more (<= 1 means all positions at once).")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise bad("max_steps_per_epoch", "use a number >= 1, or None for a full pass over the data.")
        if not 0.0 <= self.test_fraction < 1.0:
            raise bad("test_fraction", "it is the share of examples held out; use a value in [0, 1).")
        for name in ("tinystories_weight", "wiki_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "it is a probability of drawing from that source; use a value in [0, 1].")
        if self.tinystories_weight + self.wiki_weight > 1.0 + 1e-9:
            raise ConfigError(
                f"tinystories_weight + wiki_weight = {self.tinystories_weight + self.wiki_weight:g} > 1: "
                "they are probabilities of one draw; make them sum to at most 1."
            )
        if self.tinystories_weight + self.wiki_weight == 0 and not self.input_files:
            raise ConfigError(
                "tinystories_weight = wiki_weight = 0 and no input_files: there is nothing to train on; "
                "pass input_files (e.g. data/3seqs.txt) or set tinystories_weight=1.0."
            )
        if self.embed_size % self.n_heads:
            raise ConfigError(
                f"embed_size={self.embed_size} is not divisible by n_heads={self.n_heads}: "
                "each head gets embed_size / n_heads dimensions; pick values that divide."
            )
        if self.pos_emb not in POS_EMBS:
            raise bad("pos_emb", f"use one of {', '.join(POS_EMBS)}.")
        if self.use_position_emb and self.pos_emb != "learned":
            raise ConfigError(
                f"use_position_emb=True asks for learned positions but pos_emb={self.pos_emb!r}: "
                "set only one of them."
            )
        if self.attention not in ATTENTIONS:
            raise bad("attention", f"use one of {', '.join(ATTENTIONS)} (softmax is the default transformer).")
        if self.attention == "linear" and self.pos_emb == "rope":
            raise ConfigError("attention='linear' with pos_emb='rope' is invalid: linear attention needs positive "
                              "features and rope rotates them; use pos_emb none, learned or sinusoidal, or "
                              "attention='gated_delta' with rope.")
        if self.kgram_input not in KGRAM_INPUTS:
            raise bad("kgram_input", f"use one of {', '.join(KGRAM_INPUTS)}.")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"use one of {', '.join(PRECISIONS)}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"use one of {', '.join(LR_SCHEDULES)}.")
        if not self.learning_rate > 0:
            raise bad("learning_rate", "use a positive value such as 1e-3.")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip < 0 or self.loss_chunk_size < 0:
            raise ConfigError("weight_decay, warmup_steps, grad_clip and loss_chunk_size must be >= 0 "
                             f"(got {self.weight_decay}, {self.warmup_steps}, {self.grad_clip}, "
                             f"{self.loss_chunk_size}).")
        if self.length_bucket < 0:
            raise bad("length_bucket", "use 0 (pad each batch to its longest example) or a bucket width "
                                       "such as 64 (pad to a multiple of it).")
        if self.eval_subset < 0:
            raise bad("eval_subset", "use 0 (the whole test set every epoch) or a number of test examples such "
                                     "as 256 (a fixed subset each epoch, the whole set after the last).")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "use a value in [0, 1).")
        if self.max_new_tokens < 1:
            raise bad("max_new_tokens", "use 1 or more.")
        if not 0 <= self.seed <= MAX_SEED:   # torch, numpy and the data split all take it as a number this size
            raise bad("seed", f"use a whole number from 0 to {MAX_SEED} (2**32 - 1).")
        for p in self.top_p_values:
            if not 0.0 < p <= 1.0:
                raise ConfigError(f"top_p_values contains {p}: top-p must lie in (0, 1].")
        if self.profile not in PROFILES:
            raise bad("profile", f"use one of {', '.join(PROFILES)}.")

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def for_profile(cls, profile: str | None = None, *, laptop: dict | None = None,
                    smoke: dict | None = None, **full) -> "RunConfig":
        """The report's configuration (`full` keyword values), scaled to `profile`.

        `profile` defaults to $PICOLLM_PROFILE (or ``laptop``). For ``laptop`` and ``smoke`` the
        profile's caps (PROFILE_CAPS) are applied to the report's values, then the lesson's own
        `laptop=`/`smoke=` overrides, which win.
        """
        profile = profile or current_profile()
        if profile not in PROFILES:
            raise ConfigError(f"profile={profile!r} is not a profile; use one of {', '.join(PROFILES)}.")
        values = {**PROFILE_DEFAULTS[profile], **full}
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, cap in PROFILE_CAPS[profile].items():
            current = values.get(name, defaults[name])
            values[name] = cap if current is None else min(current, cap)
        values.update({"laptop": laptop, "smoke": smoke}.get(profile) or {})
        values["profile"] = profile
        report = {**PROFILE_DEFAULTS["full"], **full}
        return cls(**values, _report=report)

    def replace(self, **changes) -> "RunConfig":
        """A copy with some fields changed, validated again."""
        if "use_position_emb" in changes and "pos_emb" not in changes:
            changes["pos_emb"] = ""
        if self._embed_scale_auto and "embed_scale" not in changes:
            changes["embed_scale"] = None   # still the default: resolved again for the (new) pos_emb
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        del d["_report"], d["_embed_scale_auto"]
        # Settings added after the model cache and checkpoints existed appear only when switched on,
        # so every configuration that does not use them keeps its dictionary, and its cache key.
        for name, absent in _LATER_FIELDS.items():
            if d[name] == absent:
                del d[name]
        d["input_files"] = list(self.input_files)
        d["top_p_values"] = list(self.top_p_values)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"_report", "_embed_scale_auto"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys are the pico-llm flags in RunConfig.")
        # A stored dictionary (to_dict's, a checkpoint's) lists a later field only when it differs from its
        # _LATER_FIELDS value, so an absent one means that value: an old sinusoidal checkpoint, trained
        # unscaled, loads unscaled.
        return cls(**{**_LATER_FIELDS, **d})

    def report_config(self) -> "RunConfig":
        """The report's own configuration this run was scaled from (for_profile's keywords, in
        the full profile); for a config built directly, pico-llm's defaults."""
        return RunConfig(**(self._report or {}), profile="full")

    def summary(self) -> str:
        """What this run changes from the report's configuration, side by side, in a few lines.

        The report's configuration is the one a lesson passed to for_profile (a config built
        directly is compared with pico-llm's defaults). Fields equal to the report's are counted,
        not listed; `print(cfg)` shows every field.
        """
        mine, report = self.to_dict(), self.report_config().to_dict()
        for name, absent in _LATER_FIELDS.items():  # to_dict leaves them out when off: listed only when on
            if name in mine or name in report:
                mine.setdefault(name, absent)
                report.setdefault(name, absent)
        changed = [k for k in mine if k != "profile" and mine[k] != report[k]]
        lines = [f"profile {self.profile}: {len(changed)} of {len(mine) - 1} settings differ from the "
                 f"report's configuration" + (":" if changed else ".")]
        if changed:
            width = max(len(k) for k in changed)
            vwidth = max(len("report"), *(len(repr(report[k])) for k in changed))
            lines.append(f"  {'setting':<{width}}  {'report':<{vwidth}}  this run")
            lines += [f"  {k:<{width}}  {report[k]!r:<{vwidth}}  {mine[k]!r}" for k in changed]
        return "\n".join(lines)


def resolve_precision(precision: str, device) -> str:
    """"fp32" or "bf16" for a run on `device`. "auto" is bf16 autocast on a CUDA GPU with bf16
    support and fp32 elsewhere: CPUs without bf16 matrix units (AMX), most laptops', run bf16 matmuls
    several times slower than fp32, and on those with AMX a lesson's numbers would change with the CPU."""
    if precision != "auto":
        return precision
    import torch

    if getattr(device, "type", str(device).split(":")[0]) == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


_DEVICE_NOTES: set = set()  # what resolve_device has already said in this process


def resolve_device(device_id: str = "auto", verbose: bool = True):
    """The torch device for `device_id`: "auto" is CUDA, then MPS, then the CPU; a device that is
    not available falls back the same way. Which device was chosen is said once per process."""
    import torch

    wanted = str(device_id)
    if wanted.startswith("cuda") and torch.cuda.is_available():
        index = int(wanted.split(":")[1]) if ":" in wanted else 0
        device = torch.device(wanted if index < torch.cuda.device_count() else "cuda:0")
    elif wanted == "mps" and torch.backends.mps.is_available():
        device = torch.device("mps")
    elif wanted == "cpu":
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda:0")
    elif torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    note = None
    if wanted == "auto":
        why = {"cuda": "the first CUDA GPU", "mps": "Apple MPS"}.get(device.type, "no CUDA or MPS device here")
        note = f"Device: {device} (auto: {why})."
    elif str(device) != wanted and not (wanted == "cuda" and str(device) == "cuda:0"):
        note = f"Device: {wanted} is not available here; using {device}."
    if verbose and note and note not in _DEVICE_NOTES:
        _DEVICE_NOTES.add(note)
        print(note)
    return device
