"""How long a Train run waits for workers it cannot place, and what it says when it gives up.

Ray Train's fixed-size policy retries a worker group that cannot be placed (60 s start-up timeouts,
until the retries run out: minutes of "startup timed out" with half the cluster alive), and its elastic
policy waits for `min_workers` forever. `CapacityWatch` ends the wait after `compute.resize_timeout_s`
without a running group, with a message naming the missing resources and the nodes that were lost.
"""

from __future__ import annotations

import time

from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

# Ray Train's worker-group start-up timeout (`ray.train.v2._internal.constants`), propagated by Ray
# from the driver to the controller: how long one placement of the group may wait for resources.
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def start_timeout_s(min_workers: int, num_workers: int, resize_timeout_s: float) -> float:
    """Ray's worker-group start-up timeout: a fixed size waits up to `resize_timeout_s` for its group;
    an elastic run retries a group sized on a stale view of the cluster within a minute."""
    return resize_timeout_s if min_workers == num_workers else min(resize_timeout_s, 60.0)


class CapacityError(RuntimeError):
    """Too few resources for `min_workers` for longer than `compute.resize_timeout_s`."""


def unwrap(err: BaseException) -> BaseException:
    """The `CapacityError` inside Ray Train's `ControllerError`, else `err` itself."""
    inner = getattr(err, "controller_failure", None)
    return inner if isinstance(inner, CapacityError) else err


def _alive_nodes() -> dict[str, str]:
    import ray

    return {n["NodeID"]: n.get("NodeName") or n.get("NodeManagerAddress", "?") for n in ray.nodes() if n["Alive"]}


def _fmt(resources: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


# How long an elastic restart waits for the cluster to declare dead the nodes whose workers died, so
# that the group is sized without them (Ray's GCS takes ~15-30 s with its default health checks).
SETTLE_S = 30.0


class CapacityWatch(ControllerCallback, WorkerGroupCallback):
    """Fails the run when no worker group has run for `timeout_s`, naming the missing resources.

    Ray copies it into the Train controller, which calls `after_controller_state_update` on every
    iteration of its loop; a `CapacityError` raised there is not retried by Ray's failure policy.
    The controller's worker group calls the same object's worker-group hooks, which note the nodes of
    workers that died: an elastic restart first lets the cluster declare those nodes dead.
    """

    def __init__(self, *, min_workers: int, num_workers: int, resources_per_worker: dict, timeout_s: float):
        self.min_workers = min_workers
        self.num_workers = num_workers
        self.resources_per_worker = dict(resources_per_worker)
        self.timeout_s = timeout_s
        self._nodes: dict[str, str] = {}
        self._waiting_since: float | None = None
        self._requester_id = ""
        self._rank_nodes: dict[int, str] = {}
        self._lost_workers_nodes: set[str] = set()

    def after_controller_start(self, train_run_context) -> None:
        self._nodes = _alive_nodes()
        self._waiting_since = time.monotonic()
        self._requester_id = f"train-{train_run_context.run_id}"  # how Ray's scaling policy names its request

    def after_worker_group_start(self, worker_group) -> None:
        self._rank_nodes = {w.distributed_context.world_rank: w.metadata.node_id for w in worker_group.get_workers()}

    def after_worker_group_poll_status(self, worker_group_status) -> None:
        from ray.exceptions import RayActorError

        for rank, error in worker_group_status.errors.items():
            cause = getattr(error, "health_check_failure", error)
            if isinstance(cause, RayActorError) and rank in self._rank_nodes:  # the process died, not the code
                self._lost_workers_nodes.add(self._rank_nodes[rank])

    def after_controller_state_update(self, previous_state, current_state) -> None:
        name = type(current_state).__name__
        if name in ("RunningState", "ShuttingDownState", "FinishedState", "ErroredState", "AbortedState"):
            self._waiting_since = None
            return
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
            if self.min_workers < self.num_workers:
                self._settle()
                self._refresh_reservation()
            return
        waited = time.monotonic() - self._waiting_since
        if waited >= self.timeout_s:
            raise CapacityError(self.message(waited))

    def _settle(self) -> None:
        """Waits (at most SETTLE_S) until the nodes of workers whose processes died are dead or gone.

        A worker killed with its node is seen dead at once by the controller, seconds before Ray's GCS
        declares the node dead; a group sized meanwhile counts the lost node and waits for it.
        """
        suspects, self._lost_workers_nodes = self._lost_workers_nodes, set()
        deadline = time.monotonic() + SETTLE_S
        while suspects & _alive_nodes().keys() and time.monotonic() < deadline:
            time.sleep(0.5)

    def _refresh_reservation(self) -> None:
        """Has Ray's autoscaling coordinator look at the cluster now.

        The elastic policy sizes the restarted group from the coordinator's view of the nodes, which it
        refreshes every 20 s: a group sized on a view that still holds the lost node would wait for it
        until the start-up timeout. Best effort: on any error the timeout still bounds the wait.
        """
        try:
            import ray
            from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
                get_or_create_autoscaling_coordinator,
            )

            coordinator = get_or_create_autoscaling_coordinator()
            ray.get(coordinator.get_reserved_resources.remote(self._requester_id, recompute=True), timeout=10)
        except Exception:  # noqa: BLE001 - an internal API of Ray's; the start-up timeout is the fallback
            pass

    def message(self, waited: float) -> str:
        import ray

        alive = _alive_nodes()
        lost = sorted(name for node_id, name in self._nodes.items() if node_id not in alive)
        self._nodes.update(alive)
        free = ray.available_resources()
        total = ray.cluster_resources()
        fits = min((int(free.get(k, 0.0) // v) for k, v in self.resources_per_worker.items() if v > 0), default=0)
        have = ", ".join(f"{free.get(k, 0.0):g} {k} free of {total.get(k, 0.0):g}"
                         for k in self.resources_per_worker)
        after = ""
        if lost:
            after = f" after node {lost[0]} was lost" if len(lost) == 1 else f" after nodes {', '.join(lost)} were lost"
        size = "compute.num_workers" if self.min_workers == self.num_workers else "compute.min_workers"
        fix = "Add nodes or free resources"
        if 1 <= fits < self.min_workers:
            fix = f"Set compute.min_workers={fits} to go on with fewer workers, or add nodes"
        return (f"the run needs {self.min_workers} workers x {_fmt(self.resources_per_worker)} ({size}="
                f"{self.min_workers}); the cluster has {have}{after}; waited {waited:.0f} s "
                f"(compute.resize_timeout_s={self.timeout_s:g}). {fix}")
