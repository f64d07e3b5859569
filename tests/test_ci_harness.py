"""The CI harness (`servers.ci`): a failure is printed when it happens, and the deadline stops a hung test
and every later one, so a tier ends with its summary."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers.process import needs_netns

TESTS = Path(__file__).resolve().parent
SAMPLE = '''
import pathlib
import time

import pytest

def test_fails():
    assert 1 == 2, "the reason it failed"

def test_hangs_in_a_loop_that_swallows_errors():
    while True:
        try:
            time.sleep(1)
        except Exception:
            pass

@pytest.fixture
def server(tmp_path_factory):
    pathlib.Path(__file__).with_name("server_started").write_text("yes")

def test_after_the_deadline(server):
    pass
'''


def test_failures_print_at_once_and_the_deadline_ends_a_hung_test(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {**os.environ, "CI": "true", "ACTIONLAB_TEST_DEADLINE": str(time.time() + 6), "PYTHONPATH": str(TESTS)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "servers.ci", "-p", "no:cacheprovider",
                           str(tmp_path / "test_sample.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=100)
    out = proc.stdout
    assert proc.returncode == 1 and time.monotonic() - started < 60, out
    printed = out.index("test_sample.py::test_fails failed (call")
    assert printed < out.index("short test summary info")  # before the summary
    hung = out.index("test_sample.py::test_hangs_in_a_loop_that_swallows_errors failed")
    assert "the reason it failed" in out[printed:hung]
    assert "ACTIONLAB_TEST_DEADLINE reached: the run is out of time, stopped in this test" in out
    assert "ACTIONLAB_TEST_DEADLINE passed: the run is out of time; not started" in out
    assert "2 failed, 1 error" in out
    assert not (tmp_path / "server_started").exists()  # refused before its fixtures start


@needs_netns
@pytest.mark.integration
def test_a_broken_shared_head_is_replaced_for_the_next_test(ray_head):
    head = ray_head.get()
    assert head.healthy()
    raylet = next(pid for pid in head.leftover_pids() if b"raylet" in Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(raylet, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while head.healthy():  # `ray start --block` notices its raylet is gone and ends
        assert time.monotonic() < deadline, "the head still looks healthy 120 s after its raylet was killed"
        time.sleep(1)
    assert "raylet" in head.report()
    with pytest.warns(UserWarning, match="the shared Ray head is broken; starting a new one"):
        fresh = ray_head.get()
    assert fresh is not head and fresh.healthy() and not head.leftover_pids()
