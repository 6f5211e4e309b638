"""Progress bars for long loops, and whether the code runs in a notebook kernel.

`progress(...)` takes tqdm's arguments. In a notebook it is tqdm's widget while it runs; when it
closes, its output is replaced by the bar's final text line (through the display's id), so a
notebook saved after a run, or viewed on GitHub where widgets do not render, reads
"epoch 1/3: 100%|##########| 150/150 [00:12<00:00, 12.1it/s, loss=3.21]" instead of a bar frozen
at its first frame. In a terminal it is tqdm's text bar.
"""

from __future__ import annotations

from tqdm.std import tqdm as text_tqdm


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where figures and widgets can be displayed)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


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
