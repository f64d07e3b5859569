"""Local scratch folders that outlive a killed process by one start at most.

A Train worker writes each checkpoint into a temporary folder before Ray Train persists it. A worker is
often killed while it waits in `ray.train.report`: Tune's scheduler stops a trial right when it reports,
a failed peer brings its group down, a node is drained. `tempfile.TemporaryDirectory` never cleans up
after SIGKILL, so every such kill left a checkpoint-sized folder in the node's /tmp (seen here: 77 of
130-180 MB, a smoke model's state, in a day of tests).

`scratch_dir` names its folder after the process (PID-namespace id and PID) and, before it makes one,
removes the folders of processes of the same PID namespace that are gone. A killed process's scratch
lasts until the next one on that machine starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "actionlab-scratch-"
_NAME = re.compile(re.escape(PREFIX) + r"(?P<ns>\d+)-(?P<pid>\d+)-")


def _pid_namespace() -> str:
    """The id of this process's PID namespace (a PID means nothing in another one); "0" if unknown,
    and then nothing is reaped."""
    try:
        return re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or "0"
    except OSError:
        return "0"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def reap(root: Path | None = None) -> list[Path]:
    """Removes the scratch folders under `root` (the temp dir) of this PID namespace's dead processes;
    returns them. A folder of a process this one cannot judge (another namespace) is left alone."""
    root = Path(root or tempfile.gettempdir())
    namespace, removed = _pid_namespace(), []
    if namespace == "0":
        return removed
    for entry in root.glob(PREFIX + "*"):
        match = _NAME.match(entry.name)
        if match is None or match["ns"] != namespace or _alive(int(match["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():  # another user's folder in a shared /tmp stays
            removed.append(entry)
    return removed


@contextlib.contextmanager
def scratch_dir(what: str, root: Path | None = None) -> Iterator[Path]:
    """A new empty folder under `root` (the temp dir) for `what`, removed on exit; a process killed
    inside leaves it to the next `scratch_dir` on the machine, which removes it."""
    root = Path(root or tempfile.gettempdir())
    reap(root)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{_pid_namespace()}-{os.getpid()}-{what}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
