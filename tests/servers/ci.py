"""The test run under CI: failures printed as they happen (`CI` set), and a deadline after which no test
goes on (`ACTIONLAB_TEST_DEADLINE`, Unix time; .ci/run sets it below CI's own limit). A run that CI
kills at its time limit never prints pytest's summary; with these, the output still says what failed
and why, and a hung tier ends in time to say it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

DEADLINE_ENV = "ACTIONLAB_TEST_DEADLINE"  # Unix time after which no test may go on (.ci/run sets it)
FAILURE_LINES = 60  # of a failure's report printed when it happens (CI)
REPEAT_S = 5  # after the deadline, SIGALRM again this often until the running test is over

_config = None


def pytest_configure(config):
    global _config
    _config = config
    config.pluginmanager.register(_Phases(), "actionlab-ci-phases")


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


class DeadlineReached(BaseException):
    """Raised by SIGALRM in the running test: a BaseException, so that no `except Exception` or
    `except OSError` in a polling loop takes it for a failed try."""


_in_phase = False  # inside a test's setup, call or teardown, where pytest records what is raised


def _left() -> float | None:
    at = os.environ.get(DEADLINE_ENV)
    return None if not at else float(at) - time.time()


def _expired(signum, frame):
    if _in_phase:  # not in pytest's own bookkeeping between phases: the alarm comes again
        raise DeadlineReached(f"{DEADLINE_ENV} reached: the run is out of time, stopped in this test")


@contextlib.contextmanager
def _phase():
    global _in_phase
    _in_phase = True
    try:
        yield
    finally:
        _in_phase = False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """After the deadline a test fails before any of its fixtures (servers, clusters) start."""
    left = _left()
    if left is not None and left <= 0:
        pytest.fail(f"{DEADLINE_ENV} passed: the run is out of time; not started")


class _Phases:
    """Marks a test's setup, call and teardown, the parts where pytest records what is raised."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item):
        with _phase():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        with _phase():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item, nextitem):
        with _phase():
            return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """While a test runs, SIGALRM at the deadline raises `DeadlineReached` in its setup, call or
    teardown, and again every few seconds until the test is over (a loop may catch one; a
    `subprocess.run` waiting on a hung command kills it)."""
    left = _left()
    if left is None or left <= 0:
        return (yield)
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, left, REPEAT_S)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
