"""What train() does besides training: reporters, called at a few named events.

train() (training.py) is a short loop: the steps of each epoch, then the epoch's evaluation.
Everything else a run does, showing its progress, printing, sampling, saving, keeping the model
for next time, is a reporter (minGPT's trainer calls these callbacks): an object with any of

    on_start(run)               before the first step (of a resumed run: the first step left)
    on_step(run, step, loss)    after each optimizer step, once its loss is known
    on_epoch_end(run)           after each epoch's evaluation (run.history holds its test loss)
    on_end(run)                 after the last epoch (run.history.wall_time is final)

`run` is a RunState: the model, config and History, and where the run stands. `reporters_for`
builds train()'s list from its arguments and the reporting mode (progress.reporting_mode):

    mode       reporters (called in this order)
    notebook   Samples, ProgressBar,           [LivePlot], [Checkpoints], [ModelCacheStore], Summary
    terminal   Samples, ProgressBar, EpochLog, [LivePlot], [Checkpoints], [ModelCacheStore], Summary
    log        Samples,              EpochLog,  [LivePlot], [Checkpoints], [ModelCacheStore], Summary

so a notebook shows one bar and one summary line per run, a terminal the bar with a line per
epoch above it, and a log file a line per epoch. train(..., reporters=[...]) appends a lesson's
own (a Reporter subclass, or any object with some of the four methods).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import save_checkpoint
from .history import History
from .progress import in_notebook, progress
from .sampling import generate


@dataclass
class RunState:
    """One train() call as its reporters see it."""
    name: str
    kind: str | None
    cfg: Any
    model: Any
    optimizer: Any
    history: History
    tokenizer: Any
    run_dir: Path
    save: bool
    data: dict | None              # what the checkpoint records about the data (resume.data_record)
    steps_per_epoch: int
    test_size: int = 0             # examples in the whole test set (0: no test set)
    subset: list | None = None     # the test examples evaluated before the last epoch (cfg.eval_subset)
    start_epoch: int = 1
    epoch: int = 0                 # the epoch running or just finished
    global_step: int = 0           # optimizer steps taken, over all epochs
    epoch_train_loss: float = math.nan  # mean training loss of the epoch just finished
    started: float = field(default_factory=time.time)  # when the run began (a resumed one: earlier)

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def last_epoch(self) -> bool:
        return self.epoch == self.cfg.epochs

    def elapsed(self) -> float:
        return time.time() - self.started


class Reporter:
    """Does nothing at each event; a subclass overrides the events it needs."""

    def on_start(self, run: RunState) -> None:
        pass

    def on_step(self, run: RunState, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, run: RunState) -> None:
        pass

    def on_end(self, run: RunState) -> None:
        pass


def emit(reporters, event: str, run: RunState, *args) -> None:
    """Call `event` on every reporter that has it, in order."""
    for r in reporters:
        fn = getattr(r, event, None)
        if fn is not None:
            fn(run, *args)


# ----------------------------------------------------------------------------------------------
# Reporters


def generate_samples(model, tokenizer, cfg, epoch: int) -> dict[str, str]:
    """Greedy plus one sample per cfg.top_p_values from cfg.prompt: the report's tables."""
    samples = {"greedy": generate(model, tokenizer, cfg.prompt, cfg.max_new_tokens, greedy=True, seed=cfg.seed)}
    for p in cfg.top_p_values:
        samples[f"top_p={float(p)}"] = generate(model, tokenizer, cfg.prompt, cfg.max_new_tokens,
                                                greedy=False, top_p=float(p), seed=cfg.seed + epoch)
    return {k: g.text for k, g in samples.items()}  # prompt + continuation, as the report


class Samples(Reporter):
    """After each epoch, given a tokenizer: the report's samples into history.generations (first,
    so the reporters after it print and save them)."""

    def on_epoch_end(self, run):
        if run.tokenizer is not None:
            run.history.generations[run.epoch] = generate_samples(run.model, run.tokenizer, run.cfg, run.epoch)


class ProgressBar(Reporter):
    """One bar for the whole run (epochs x steps); its postfix: the epoch, the last step's loss and
    the last test loss. leave=False: the bar goes when the run ends (in a notebook, where the summary
    line below it says all its final line would; a lesson that trains 30 models keeps 30 lines)."""

    def __init__(self, leave: bool = True):
        self.bar = None
        self.leave = leave
        self.postfix: dict[str, str] = {}

    def on_start(self, run):
        self.bar = progress(total=run.total_steps, initial=run.global_step, desc=run.name, leave=self.leave)
        if run.history.test_loss:   # a resumed run: its last test loss so far
            self.postfix["test"] = f"{run.history.final_test_loss:.4f}"

    def on_step(self, run, step, loss):
        self.postfix = {"epoch": f"{run.epoch}/{run.cfg.epochs}", "loss": f"{loss:.4f}",
                        **{k: v for k, v in self.postfix.items() if k == "test"}}
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(1)

    def on_epoch_end(self, run):
        if run.history.test_loss and run.history.test_loss[-1][0] == run.epoch:
            self.postfix["test"] = f"{run.history.final_test_loss:.4f}"
            self.bar.set_postfix(self.postfix)

    def on_end(self, run):
        self.bar.close()


def subset_words(run: RunState) -> str:
    """" (on 256 of 2,000 test examples)" when this epoch's test loss is on eval_subset's examples."""
    n = run.history.test_subset.get(run.epoch)
    return f" (on {n:,} of {run.test_size:,} test examples)" if n else ""


class EpochLog(Reporter):
    """A line per epoch, "[name] epoch 3/30: train loss ..., test loss ... (N tok/s)", and its greedy
    sample: the command line's and a log file's record of the run."""

    def __init__(self, write=print):
        self.write = write

    def on_epoch_end(self, run):
        h = run.history
        msg = f"[{run.name}] epoch {run.epoch}/{run.cfg.epochs}: train loss {run.epoch_train_loss:.4f}"
        if h.test_loss and h.test_loss[-1][0] == run.epoch:
            msg += f", test loss {h.final_test_loss:.4f}{subset_words(run)}"
        self.write(f"{msg} ({h.tokens_per_second:,.0f} tok/s)")
        if run.epoch in h.generations:
            self.write(f"[{run.name}] greedy: {h.generations[run.epoch]['greedy']!r}")


class LivePlot(Reporter):
    """Redraws the loss plot in one notebook output every `every` steps and after each epoch; a
    no-op outside a notebook."""

    def __init__(self, every: int = 25):
        self.every = every
        self.handle = None
        self.enabled = every > 0 and in_notebook()

    def on_step(self, run, step, loss):
        if step % self.every == 0:
            self.draw(run.history)

    def on_epoch_end(self, run):
        self.draw(run.history)

    def draw(self, history: History):
        if not self.enabled:
            return
        from IPython.display import Image, display

        from .plots import history_figure, png_bytes
        img = Image(data=png_bytes(history_figure(history, title=f"{history.name}: training (live)")))
        if self.handle is None:
            self.handle = display(img, display_id=True)
        else:
            self.handle.update(img)


class Checkpoints(Reporter):
    """After each epoch: checkpoint.pt (each epoch, or only after the last with every_epoch=False),
    then the logs, into run.run_dir. Checkpoint first: a crash between the two writes leaves logs
    behind the checkpoint (the next resume rewrites them), never logs of epochs it lacks.
    write: the function that writes checkpoint.pt (checkpoint.save_checkpoint's arguments)."""

    def __init__(self, every_epoch: bool = True, write=save_checkpoint):
        self.every_epoch = every_epoch
        self.write = write

    def on_epoch_end(self, run):
        run.history.wall_time = run.elapsed()
        if self.every_epoch or run.last_epoch:
            self.write(run.run_dir / "checkpoint.pt", run.model, run.optimizer, run.cfg, run.kind,
                            run.history, epoch=run.epoch, global_step=run.global_step, tokenizer=run.tokenizer,
                            data=run.data)
        run.history.save(run.run_dir)

    def on_end(self, run):
        run.history.save(run.run_dir)


class ModelCacheStore(Reporter):
    """At the end: keep the trained model under its cache key, for train(..., cache=True) next time."""

    def __init__(self, key: str):
        self.key = key

    def on_end(self, run):
        from . import model_cache
        model_cache.store(run.model, self.key, run.name, run.cfg, run.history, run.tokenizer,
                          epoch=run.cfg.epochs, global_step=run.global_step)


def duration(seconds: float) -> str:
    """"42.0 s", "3 min 5 s", "1 h 2 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    return f"{minutes // 60} h {minutes % 60} min"


class Summary(Reporter):
    """The run's one line at the end: epochs, steps, wall time, final train and test loss, tok/s."""

    def __init__(self, write=print):
        self.write = write

    def on_end(self, run):
        h, cfg = run.history, run.cfg
        msg = (f"[{run.name}] {cfg.epochs} epoch{'s' * (cfg.epochs != 1)}, {h.steps:,} steps in "
               f"{duration(h.wall_time)}: train loss {h.final_train_loss:.4f}")
        if h.test_loss:
            msg += f", test loss {h.final_test_loss:.4f}"
            if h.test_subset:
                n = max(h.test_subset.values())
                msg += f" (each epoch on {n:,} of {run.test_size:,} test examples, the full set at the end)"
        self.write(f"{msg}, {h.tokens_per_second:,.0f} tok/s")


def _above_the_bar(msg: str) -> None:
    """Print a line above a live text bar (tqdm clears the bar, prints, redraws it)."""
    from tqdm.std import tqdm
    tqdm.write(msg, file=sys.stdout)


def reporters_for(run: RunState, mode: str, *, live_plot: bool | int = False, checkpoint_every_epoch: bool = True,
                  cache_key: str | None = None, extra=(), write_checkpoint=save_checkpoint) -> list:
    """train()'s reporters for a reporting mode (see the module docstring), in the order they run."""
    write = _above_the_bar if mode == "terminal" else print
    out: list = [Samples()]
    if mode in ("notebook", "terminal"):
        out.append(ProgressBar(leave=mode == "terminal"))
    if mode in ("terminal", "log"):
        out.append(EpochLog(write))
    if live_plot:
        out.append(LivePlot(25 if live_plot is True else int(live_plot)))
    if run.save:
        out.append(Checkpoints(checkpoint_every_epoch, write_checkpoint))
    if cache_key is not None:
        out.append(ModelCacheStore(cache_key))
    out.append(Summary(write))
    out.extend(extra)
    return out
