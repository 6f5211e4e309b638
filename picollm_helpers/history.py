"""What one training run produced: `History`, and the run-log files it reads and writes.

Each run folder `<cfg.output_dir>/<name>/` holds:

  loss_logs.json        {"format": "picollm.loss_logs/1", "name", "kind", "config": {...RunConfig},
                         "train": {"step": [1, 2, ...], "loss": [...]},          one entry per optimizer step
                         "test":  {"epoch": [1, ...], "step": [...], "loss": [...], one per epoch, full test set
                                   "batch_loss": [[...], ...]},        per epoch, the loss of each test batch
                         "test_subset": {"epoch": [...], "examples": [...]},  epochs whose test loss is
                                          on cfg.eval_subset's fixed examples, not the whole test set
                         "epochs": {"epoch": [1, ...], "end_step": [...]},   the last step of each epoch
                         "epoch_times": {"epoch": [...], "train_time_s": [...], "tokens": [...]},
                                          each epoch's seconds in optimizer steps and non-padding tokens
                         "final_train_loss", "final_test_loss",
                         "wall_time_s", "train_time_s", "tokens_seen", "tokens_per_second", "extra": {...}}
  generation_logs.json  {"format": "picollm.generation_logs/1", "name", "prompt", "max_new_tokens",
                         "epochs": [{"epoch": 1, "samples": {"greedy": "...", "top_p=0.2": "...", ...}}, ...]}

(checkpoint.pt beside them is described in checkpoint.py.) The command line also writes the
same runs in pico-llm's own files (pico_llm_losses, pico_llm_generations; see cli.py). Losses are
mean cross-entropy in nats per non-padding target token (a batch loss: over that batch's tokens);
`tokens_per_second` counts non-padding tokens over the time spent in optimizer steps (evaluation
and sampling excluded).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import MissingFileError, RunLogError
from .files import atomic_write

LOSS_LOGS_FORMAT = "picollm.loss_logs/1"
GENERATION_LOGS_FORMAT = "picollm.generation_logs/1"


@dataclass
class History:
    """What one training run produced. Plain data: it round-trips through JSON and checkpoints."""
    name: str = ""
    kind: str | None = None
    config: dict = field(default_factory=dict)
    train_loss: list = field(default_factory=list)   # [(global_step, loss)] one per optimizer step
    test_loss: list = field(default_factory=list)    # [(epoch, global_step, loss)] one per epoch
    test_batch_losses: dict = field(default_factory=dict)  # {epoch: [loss of each test batch, in order]}
    test_subset: dict = field(default_factory=dict)  # {epoch: examples} epochs tested on cfg.eval_subset's subset
    epoch_ends: list = field(default_factory=list)   # [(epoch, global_step of its last step)]
    epoch_times: list = field(default_factory=list)  # [(epoch, seconds in its optimizer steps, tokens)]
    generations: dict = field(default_factory=dict)  # {epoch: {"greedy": text, "top_p=0.2": text, ...}}
    wall_time: float = 0.0                           # seconds, whole run including eval and sampling
    train_time: float = 0.0                          # seconds spent in optimizer steps
    tokens_seen: int = 0                             # non-padding target tokens trained on
    extra: dict = field(default_factory=dict)        # lesson-specific records (step_callback results)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.train_time if self.train_time > 0 else 0.0

    @property
    def final_train_loss(self) -> float:
        """Mean training loss over the last 10 steps (one step alone is noisy)."""
        last = [loss for _, loss in self.train_loss[-10:]]
        return sum(last) / len(last) if last else float("nan")

    @property
    def final_test_loss(self) -> float:
        return self.test_loss[-1][2] if self.test_loss else float("nan")

    @property
    def steps(self) -> int:
        return self.train_loss[-1][0] if self.train_loss else 0

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "config": plain(self.config),
                "train_loss": [[int(s), float(l)] for s, l in self.train_loss],
                "test_loss": [[int(e), int(s), float(l)] for e, s, l in self.test_loss],
                "test_batch_losses": {str(e): [float(l) for l in ls] for e, ls in self.test_batch_losses.items()},
                "test_subset": {str(e): int(n) for e, n in self.test_subset.items()},
                "epoch_ends": [[int(e), int(s)] for e, s in self.epoch_ends],
                "epoch_times": [[int(e), float(t), int(n)] for e, t, n in self.epoch_times],
                "generations": {str(e): dict(g) for e, g in self.generations.items()},
                "wall_time": float(self.wall_time), "train_time": float(self.train_time),
                "tokens_seen": int(self.tokens_seen), "extra": plain(self.extra)}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        test_loss = [(int(e), int(s), float(l)) for e, s, l in d.get("test_loss", [])]
        return cls(name=d.get("name", ""), kind=d.get("kind"), config=dict(d.get("config", {})),
                   train_loss=[(int(s), float(l)) for s, l in d.get("train_loss", [])],
                   test_loss=test_loss,
                   test_batch_losses={int(e): [float(l) for l in ls]
                                      for e, ls in d.get("test_batch_losses", {}).items()},
                   test_subset={int(e): int(n) for e, n in d.get("test_subset", {}).items()},
                   epoch_ends=_epoch_ends(d.get("epoch_ends"), test_loss),
                   epoch_times=[(int(e), float(t), int(n)) for e, t, n in d.get("epoch_times", [])],
                   generations={int(e): dict(g) for e, g in d.get("generations", {}).items()},
                   wall_time=float(d.get("wall_time", 0.0)), train_time=float(d.get("train_time", 0.0)),
                   tokens_seen=int(d.get("tokens_seen", 0)), extra=dict(d.get("extra", {})))

    def loss_logs(self) -> dict:
        """The loss_logs.json document (see the module docstring)."""
        return {"format": LOSS_LOGS_FORMAT, "name": self.name, "kind": self.kind,
                "config": plain(self.config),
                "train": {"step": [int(s) for s, _ in self.train_loss],
                          "loss": [float(l) for _, l in self.train_loss]},
                "test": {"epoch": [int(e) for e, _, _ in self.test_loss],
                         "step": [int(s) for _, s, _ in self.test_loss],
                         "loss": [float(l) for _, _, l in self.test_loss],
                         "batch_loss": [list(self.test_batch_losses.get(e, [])) for e, _, _ in self.test_loss]},
                "test_subset": {"epoch": [int(e) for e in sorted(self.test_subset)],
                                "examples": [int(self.test_subset[e]) for e in sorted(self.test_subset)]},
                "epochs": {"epoch": [int(e) for e, _ in self.epoch_ends],
                           "end_step": [int(s) for _, s in self.epoch_ends]},
                "epoch_times": {"epoch": [int(e) for e, _, _ in self.epoch_times],
                                "train_time_s": [float(t) for _, t, _ in self.epoch_times],
                                "tokens": [int(n) for _, _, n in self.epoch_times]},
                "final_train_loss": _json_float(self.final_train_loss),
                "final_test_loss": _json_float(self.final_test_loss),
                "wall_time_s": self.wall_time, "train_time_s": self.train_time,
                "tokens_seen": self.tokens_seen, "tokens_per_second": self.tokens_per_second,
                "extra": plain(self.extra)}

    def generation_logs(self) -> dict:
        """The generation_logs.json document (see the module docstring)."""
        return {"format": GENERATION_LOGS_FORMAT, "name": self.name,
                "prompt": self.config.get("prompt"), "max_new_tokens": self.config.get("max_new_tokens"),
                "epochs": [{"epoch": e, "samples": dict(self.generations[e])}
                           for e in sorted(self.generations)]}

    def pico_llm_losses(self) -> dict:
        """This run's entry in pico-llm's loss_logs.json: {"train": [[loss of each step] per epoch],
        "test": [[loss of each test batch] per epoch]} ("test" is [] without a test set)."""
        train, prev = [], 0
        for _, end in self.epoch_ends:
            train.append([float(l) for s, l in self.train_loss if prev < s <= end])
            prev = end
        test = [[float(l) for l in self.test_batch_losses.get(e, [])] for e, _, _ in self.test_loss]
        return {"train": train, "test": test}

    def pico_llm_generations(self) -> list[dict]:
        """This run's entry in pico-llm's generation_logs.json: per epoch, {"greedy": text, "0.2": text,
        ...}, one key per top-p value sampled (pico-llm's keys: the p values themselves)."""
        return [{key.removeprefix("top_p="): text for key, text in self.generations[e].items()}
                for e in sorted(self.generations)]

    def save(self, run_dir) -> None:
        """Write loss_logs.json and generation_logs.json into run_dir (atomically)."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for fname, doc in (("loss_logs.json", self.loss_logs()), ("generation_logs.json", self.generation_logs())):
            with atomic_write(run_dir / fname, "w") as f:
                json.dump(doc, f, indent=1, ensure_ascii=False)

    @classmethod
    def load(cls, run_dir) -> "History":
        """Read a run folder's loss_logs.json (and generation_logs.json if present)."""
        run_dir = Path(run_dir)
        path = run_dir / "loss_logs.json"
        if not path.exists():
            raise MissingFileError(f"no loss_logs.json in {run_dir}: pass the folder train() wrote "
                                    f"(<output_dir>/<name>)")
        logs = _read_log(path, run_dir)
        try:
            test = logs["test"]
            test_loss = list(zip(test["epoch"], test["step"], test["loss"]))
            epochs = logs.get("epochs")
            h = cls(name=logs.get("name", ""), kind=logs.get("kind"), config=logs.get("config", {}),
                    train_loss=list(zip(logs["train"]["step"], logs["train"]["loss"])),
                    test_loss=test_loss,
                    test_batch_losses={e: ls for e, ls in zip(test["epoch"], test.get("batch_loss", [])) if ls},
                    test_subset=dict(zip(*(logs.get("test_subset", {}).get(k, []) for k in ("epoch", "examples")))),
                    epoch_ends=_epoch_ends(epochs and list(zip(epochs["epoch"], epochs["end_step"])), test_loss),
                    epoch_times=list(zip(*(logs.get("epoch_times", {}).get(k, []) for k in
                                           ("epoch", "train_time_s", "tokens")))),
                    wall_time=logs.get("wall_time_s", 0.0), train_time=logs.get("train_time_s", 0.0),
                    tokens_seen=logs.get("tokens_seen", 0), extra=logs.get("extra", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RunLogError(f"{path} is not a loss_logs.json that train() wrote (missing or malformed: {e}); "
                              f"{_from_checkpoint(run_dir)}") from None
        gen_path = run_dir / "generation_logs.json"
        if gen_path.exists():
            gens = _read_log(gen_path, run_dir)
            try:
                h.generations = {int(g["epoch"]): dict(g["samples"]) for g in gens.get("epochs", [])}
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise RunLogError(f"{gen_path} is not a generation_logs.json that train() wrote (missing or "
                                  f"malformed: {e}); {_from_checkpoint(run_dir)}") from None
        return h


def _from_checkpoint(run_dir: Path) -> str:
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():
        return (f"the checkpoint beside it holds the run's history up to its last epoch: "
                f"load_checkpoint('{ckpt}')[1]['history']")
    return "train again to write it anew"


def _read_log(path: Path, run_dir: Path) -> dict:
    """A log file's JSON object; a truncated or damaged file raises RunLogError naming it."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunLogError(f"{path} is not complete JSON (it ends or breaks at line {e.lineno}, column {e.colno}: "
                          f"truncated or damaged); {_from_checkpoint(run_dir)}") from None
    except UnicodeDecodeError:
        raise RunLogError(f"{path} is not UTF-8 text (damaged); {_from_checkpoint(run_dir)}") from None
    if not isinstance(doc, dict):
        raise RunLogError(f"{path} holds a JSON {type(doc).__name__}, not the object train() writes; "
                          f"{_from_checkpoint(run_dir)}")
    return doc


def _epoch_ends(recorded, test_loss) -> list[tuple[int, int]]:
    """The recorded epoch ends; logs written before they were recorded have them in the test losses."""
    if recorded is None:
        return [(int(e), int(s)) for e, s, _ in test_loss]
    return [(int(e), int(s)) for e, s in recorded]


def _json_float(x: float):
    return x if math.isfinite(x) else None


def plain(obj):
    """Tensors and tuples -> numbers and lists, so a record survives JSON and weights_only loads."""
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
