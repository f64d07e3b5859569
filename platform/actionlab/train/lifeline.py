"""A run's Ray actors die with the driver that launched them.

Found with Ray 2.60: after `actionlab train` is SIGKILLed, its Train controller and workers go on
(their GCS and raylet are gone, they are not), training and writing checkpoints into the run that a
rerun resumes. `Lifeline` is a Train callback that Ray copies into the controller and into every
worker, where a watcher thread ends the process when the driver's process is gone (same node) or
when the process's parent (its raylet) has died.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerCallback

from .run_lock import pid_alive, process_started


class Lifeline(ControllerCallback, WorkerCallback):
    """Ends the Train controller and workers of a run when its driver (or their raylet) dies."""

    def __init__(self, *, interval_s: float = 2.0):
        import ray

        self.driver_pid = os.getpid()
        self.driver_started = process_started(self.driver_pid)
        self.driver_node = ray.get_runtime_context().get_node_id()
        self.interval_s = interval_s

    def after_controller_start(self, train_run_context) -> None:
        self._watch("Train controller")

    def after_init_train_context(self) -> None:
        self._watch("Train worker")

    def _watch(self, role: str) -> None:
        import ray

        same_node = ray.get_runtime_context().get_node_id() == self.driver_node
        parent = os.getppid()

        def run() -> None:
            while True:
                time.sleep(self.interval_s)
                if os.getppid() != parent:
                    why = f"its raylet (pid {parent}) died"
                elif same_node and not pid_alive(self.driver_pid, self.driver_started):
                    why = f"its driver (pid {self.driver_pid}) died"
                else:
                    continue
                sys.stderr.write(f"actionlab: {role} pid {os.getpid()} exits: {why}\n")
                sys.stderr.flush()
                os._exit(1)

        threading.Thread(target=run, name="actionlab-lifeline", daemon=True).start()
