"""The test run under CI: failures printed as they happen (`CI` set), and a deadline after which no test
goes on (`ACTIONLAB_TEST_DEADLINE`, Unix time; .ci/run sets it below CI's own limit). A run that CI
kills at its time limit never prints pytest's summary; with these, the output still says what failed
and why, and a hung tier ends in time to say it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

DEADLINE_ENV = "ACTIONLAB_TEST_DEADLINE"  # Unix time after which no test may go on (.ci/run sets it)
FAILURE_LINES = 60  # of a failure's report printed when it happens (CI)

_config = None


def pytest_configure(config):
    global _config
    _config = config


def pytest_runtest_logreport(report):
    """Under CI: a failure's last lines and report sections (a server's logs) right away, not only in
    the summary at the end, which a run killed at CI's time limit never prints."""
    if not (os.environ.get("CI") and report.failed and _config is not None):
        return
    terminal = _config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None:
        return
    lines = report.longreprtext.splitlines()[-FAILURE_LINES:]
    for title, text in report.sections:
        if not title.startswith("Captured"):
            lines += [f"--- {title}", *text.splitlines()[-FAILURE_LINES:]]
    terminal.write_line("")
    terminal.write_sep("!", f"{report.nodeid} failed ({report.when}, {report.duration:.0f}s)")
    for line in lines:
        terminal.write_line(line)


@pytest.fixture(autouse=True)
def ci_deadline():
    """Fails the test with a TimeoutError at `ACTIONLAB_TEST_DEADLINE` (SIGALRM; a `subprocess.run`
    waiting for a hung command kills it), and every later one at once: the tier ends and prints its
    summary before CI's own limit."""
    at = os.environ.get(DEADLINE_ENV)
    if not at:
        yield
        return
    left = int(float(at) - time.time())
    if left <= 0:
        pytest.fail(f"{DEADLINE_ENV} passed: the run is out of time; not started")

    def expired(signum, frame):
        raise TimeoutError(f"{DEADLINE_ENV} reached: the run is out of time, stopped in this test")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(left)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Runs every test with one torch intra-op thread, restoring the count after. The tests run tiny
    models, where starting and syncing threads costs more than the maths: on a shared 2-core machine
    one thread is several times faster than two. Code under test that sets its own count (bench) still
    can; subprocesses are not affected."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
