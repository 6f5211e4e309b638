import subprocess
import sys

from picollm_helpers.files import atomic_write, write_text

KILLED_MID_WRITE = """
import os, sys
from picollm_helpers.files import atomic_write
with atomic_write(sys.argv[1], "w") as f:
    f.write("half of a file")
    f.flush()
    os._exit(9)   # killed: no cleanup runs
"""


def test_a_killed_write_leaves_a_partial_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "checkpoint.pt"
    write_text(target, "complete")
    r = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)], capture_output=True)
    assert r.returncode == 9
    left = list(tmp_path.glob(".checkpoint.pt.*.tmp"))
    assert len(left) == 1 and left[0].read_text() == "half of a file"
    assert target.read_text() == "complete"                 # the target itself is untouched
    write_text(target, "next")
    assert target.read_text() == "next" and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_write_in_progress_is_not_taken_for_an_orphan(tmp_path):
    target = tmp_path / "log.json"
    with atomic_write(target, "w") as f:
        f.write("mine")
        write_text(tmp_path / "log.json", "other")          # a second write of the same target meanwhile
        f.write(" still")
    assert target.read_text() == "mine still"
