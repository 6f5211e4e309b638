"""What the kit shows while it runs: progress bars, one-time notes, and how much to say where.

`progress(...)` takes tqdm's arguments. In a notebook it is tqdm's widget while it runs; when it
closes, its output is replaced by the bar's final text line (through the display's id), so a
notebook saved after a run, or viewed on GitHub where widgets do not render, reads
"epoch 1/3: 100%|##########| 150/150 [00:12<00:00, 12.1it/s, loss=3.21]" instead of a bar frozen
at its first frame. In a terminal it is tqdm's text bar.

`note(msg)` prints a line once per process: where the data came from, which tokenizer files,
a cache rebuilt. A lesson that loads the same corpus in five cells says so once.

`reporting_mode()` decides, in one place, how much a training run prints:

  "notebook"  one live bar for the whole run, then a one-line summary (a saved notebook holds no
              walls of per-epoch logs; they are in the History and the run's log files)
  "terminal"  the same bar, with a line per epoch written above it (the command line's users)
  "log"       stdout is a file or a pipe (a log, CI): a line per epoch and the summary, no bar,
              so the log holds no carriage-return refreshes
"""

from __future__ import annotations

import sys

from tqdm.std import tqdm as text_tqdm

REPORTING_MODES = ("notebook", "terminal", "log")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where figures and widgets can be displayed)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def reporting_mode(reporting: str = "auto") -> str:
    """"notebook", "terminal" or "log" (see the module docstring); "auto" picks the first that
    applies: a Jupyter kernel, a stdout that is a terminal, else a log."""
    if reporting in REPORTING_MODES:
        return reporting
    if reporting != "auto":
        raise ValueError(f"reporting={reporting!r} is not a reporting mode: use 'auto', "
                         f"{', '.join(repr(m) for m in REPORTING_MODES)}")
    if in_notebook():
        return "notebook"
    isatty = getattr(sys.stdout, "isatty", None)
    return "terminal" if isatty is not None and isatty() else "log"


_NOTED: set[str] = set()   # every note printed in this process


def note(msg: str) -> bool:
    """Print msg unless this process printed the same line before; True when it was printed."""
    if msg in _NOTED:
        return False
    _NOTED.add(msg)
    print(msg)
    return True


def forget_notes() -> None:
    """Let every note be printed again (each test starts as a fresh process would)."""
    _NOTED.clear()


def _notebook_bar_class():
    from IPython.display import display
    from tqdm.notebook import tqdm as widget_tqdm

    class NotebookProgress(widget_tqdm):
        """tqdm's widget, whose saved output becomes its final text line when it closes."""

        def __init__(self, *args, **kwargs):
            kwargs["display"] = False
            super().__init__(*args, **kwargs)
            self._handle = None if self.disable else display(self.container, display_id=True)

        def close(self):
            if self.disable or self._handle is None:
                return super().close()
            super().close()
            line = self.format_meter(**self.format_dict) if self.leave else ""
            self._handle.update({"text/plain": line}, raw=True)
            self._handle = None

    return NotebookProgress


_BAR_CLASS = None


def progress(iterable=None, **kwargs):
    """A tqdm progress bar (same arguments) that reads as a finished line once it is done."""
    global _BAR_CLASS
    if _BAR_CLASS is None:
        _BAR_CLASS = _notebook_bar_class() if in_notebook() else text_tqdm
    kwargs.setdefault("dynamic_ncols", True)
    return _BAR_CLASS(iterable, **kwargs)
