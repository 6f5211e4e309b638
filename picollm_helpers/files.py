"""Writing files so that a crash never leaves a half-written one: `atomic_write`.

Every file the kit writes (checkpoints, run logs, figures, caches, results, data/3seqs.txt) goes
through here: the bytes land in a temporary file beside the target, are flushed to disk, and only
then replace the target in one rename. A crash mid-write leaves the previous file intact; a
process killed mid-write (no chance to clean up) leaves its temporary file, which the next write
of the same target removes. A write that fills the disk raises DiskFullError (the previous file
is kept, and the message says the disk is full, naming the file).
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError

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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _DISK_FULL and not isinstance(e, DiskFullError):
            raise DiskFullError(disk_full_message(path)) from e
        raise


# No space left, or the user's disk quota used up: either way the write could not finish.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def disk_full_message(path) -> str:
    """What a write that filled the disk says: which file, that its previous version is kept, the fix."""
    path = Path(path)
    kept = f"the previous {path.name} is kept as it was" if path.exists() else f"no {path.name} was written"
    return (f"the disk is full (no space left on the device holding {path.parent}) while writing {path}; "
            f"{kept}. Free some space (e.g. `make clean-cache`, old output folders) and run again "
            f"(with --resume / resume_from to continue from the last checkpoint).")


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
