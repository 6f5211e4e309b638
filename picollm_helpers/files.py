"""Writing files so that a crash never leaves a half-written one: `atomic_write`.

Every file the kit writes (checkpoints, run logs, figures, caches, results, data/3seqs.txt) goes
through here: the bytes land in a temporary file beside the target, are flushed to disk, and only
then replace the target in one rename. A crash mid-write leaves the previous file intact and no
partial file behind.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically; return the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically; return the path."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)
