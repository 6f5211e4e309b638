"""Writing files so that a crash never leaves a half-written one: `atomic_write`.

Every file the kit writes (checkpoints, run logs, figures, caches, results, data/3seqs.txt) goes
through here: the bytes land in a temporary file beside the target, are flushed to disk, and only
then replace the target in one rename. A crash mid-write leaves the previous file intact; a
process killed mid-write (no chance to clean up) leaves its temporary file, which the next write
of the same target removes.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

_ORPHAN_AGE_S = 3600  # a temporary file without a live writer's pid counts as left over after this


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:      # exists, owned by someone else
        return True
    return True


def remove_orphans(path) -> list[Path]:
    """Remove the temporary files that killed writes of `path` left beside it; return them.

    Names are `.<name>.<pid>-<random>.tmp`: one whose writing process is gone is an orphan (a
    live process may still be writing it, so it is kept). Names without a pid count as orphans
    once an hour old.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        middle = tmp.name[len(path.name) + 2:-len(".tmp")]
        pid = middle.split("-", 1)[0]
        try:
            orphan = (not _pid_alive(int(pid))) if pid.isdigit() and "-" in middle else \
                time.time() - tmp.stat().st_mtime > _ORPHAN_AGE_S
            if orphan:
                tmp.unlink()
                removed.append(tmp)
        except (FileNotFoundError, ValueError):
            continue
    return removed


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
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
