"""storage.scratch_dir: what a killed process leaves is removed by the next process, never a live one's."""

import os
import signal
import subprocess
import sys

from actionlab.storage import scratch
from actionlab.storage.scratch import scratch_dir

HOLD = """
import sys, time
from pathlib import Path
from actionlab.storage import scratch_dir
with scratch_dir("checkpoint", root=Path(sys.argv[1])) as path:
    (path / "state.pt").write_bytes(b"x" * 1000)
    print(path, flush=True)
    time.sleep(300)
"""


def test_a_killed_process_leaves_its_folder_to_the_next_one_which_removes_it(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    left = tmp_path / os.path.basename(proc.stdout.readline().strip())
    assert (left / "state.pt").exists() and f"-{proc.pid}-checkpoint-" in left.name
    other_namespace = tmp_path / f"{scratch.PREFIX}1-{proc.pid}-model-abc"  # a PID that means nothing here
    other_namespace.mkdir()

    with scratch_dir("model", root=tmp_path) as mine:
        assert left.exists(), "removed while its process is alive"
        proc.send_signal(signal.SIGKILL)  # as Tune stops a trial inside ray.train.report
        proc.wait()
        assert (left / "state.pt").exists()  # no cleanup of its own after SIGKILL

        with scratch_dir("checkpoint", root=tmp_path) as second:
            assert not left.exists()
            assert mine.exists() and second.exists() and other_namespace.exists()
        assert not second.exists()
    assert not mine.exists()
    assert scratch.reap(tmp_path) == [] and other_namespace.exists()


def test_scratch_is_removed_when_the_block_raises(tmp_path):
    try:
        with scratch_dir("x", root=tmp_path) as path:
            (path / "f").write_text("data")
            raise KeyError("boom")
    except KeyError:
        pass
    assert not path.exists() and list(tmp_path.iterdir()) == []
