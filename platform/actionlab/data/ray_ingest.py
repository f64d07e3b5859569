"""`data.engine: ray`: clips decoded by Ray Data tasks on other nodes' CPUs, streamed into a Train worker.

A `RayClipLoader` stands where the worker's DataLoader stood: the same sampler picks the epoch's
indices, each training batch becomes one Ray Data task that decodes and augments it (uint8, the
dataset's own `__getitem__`, so sampling, (seed, epoch, index) randomness and bad-sample handling
are the DataLoader's), and batches come back in order with a bounded prefetch, so memory stays
bounded and the batches equal the DataLoader's. Decode capacity then grows with the cluster's CPU
nodes, whatever the number of GPUs.

Why not `ray.train.get_dataset_shard`: a Train dataset is one plan re-executed every epoch, with no
way to tell its tasks which epoch they serve; the clips' random views would then not be a function
of (seed, epoch, index), and a resumed run would not see the clips the interrupted one would have.
Building the epoch's plan in the worker keeps both, and a restarted worker rebuilds it from its
checkpoint's epoch.

Where the tasks run (`data.decode_nodes`, see `decode_label_selector`): by default on the nodes that
hold no Train worker of the run, when the cluster has such nodes with CPUs, so CPU-only decode nodes
take the decoding and the GPU nodes' CPUs stay with the training step; a node is declared a decode
node with the label `actionlab.io/role=decode` (`ray start --labels actionlab.io/role=decode`, or a KubeRay
worker group's `rayStartParams`), which `decode_nodes=labelled` requires.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from .dataset import VideoClipDataset, stack_clips

_DATASETS: dict[str, VideoClipDataset] = {}  # per Ray worker process: datasets fetched once, by object id

# The node label that declares a decode node; `decode_nodes=labelled` selects on it.
DECODE_LABEL_KEY, DECODE_LABEL_VALUE = "actionlab.io/role", "decode"
NODE_ID_LABEL = "ray.io/node-id"  # Ray's own label on every node


def train_node_ids() -> list[str]:
    """The nodes holding this run's Train workers: those of the placement group that Ray Train put the
    worker group in (read from its table, so no rank waits on another); outside one, this process's node.
    """
    import ray
    from ray.util import get_current_placement_group, placement_group_table

    nodes = {ray.get_runtime_context().get_node_id()}
    group = get_current_placement_group()
    if group is not None:
        nodes.update(placement_group_table(group).get("bundles_to_node_id", {}).values())
    return sorted(nodes)


def decode_label_selector(mode: str, train_nodes: list[str], nodes: list[dict], *, num_cpus: float) -> dict | None:
    """The `label_selector` of the decode tasks for `data.decode_nodes=mode` (None: any node), given the
    nodes holding Train workers and the cluster's node table (`ray.nodes()`).

    `auto` keeps the tasks off the Train workers' nodes with Ray's own `ray.io/node-id` label and an
    `!in(...)` selector (Ray Data pins its local reads the same way), but only when another alive node
    has the CPUs for one task; otherwise (one node, or Train workers on every node) any node, as
    before. No declaration is needed, so the rule holds on any cluster, labelled or not; node affinity
    could not say it (it names one node, not "any but these"). The selector is hard: a soft one would
    spill decoding onto the Train nodes exactly when the decode nodes are busy. It is decided each
    epoch from the live node table, so decode nodes that join or leave between epochs are seen.
    """
    if mode == "any":
        return None
    if mode == "labelled":
        return {DECODE_LABEL_KEY: DECODE_LABEL_VALUE}
    others = [n for n in nodes if n.get("Alive") and n["NodeID"] not in train_nodes
              and n.get("Resources", {}).get("CPU", 0) >= num_cpus]
    if not others:
        return None
    return {NODE_ID_LABEL: f"!in({','.join(sorted(train_nodes))})"}


def train_label_selector(mode: str) -> dict | None:
    """The Train workers' `ScalingConfig(label_selector=...)`: off the nodes declared for decoding (a CPU
    Train worker could otherwise take a decode node's CPUs); none for `data.decode_nodes=any`."""
    return None if mode == "any" else {DECODE_LABEL_KEY: f"!{DECODE_LABEL_VALUE}"}


def decode_node_table() -> list[dict]:
    """Alive nodes as {"node_id", "name", "cpus", "decode_label"}: what a placement report names."""
    import ray

    return [{"node_id": n["NodeID"], "name": n.get("NodeName") or n.get("NodeManagerHostname", ""),
             "cpus": n.get("Resources", {}).get("CPU", 0),
             "decode_label": (n.get("Labels") or {}).get(DECODE_LABEL_KEY) == DECODE_LABEL_VALUE}
            for n in ray.nodes() if n.get("Alive")]


def _decode_batch(batch: dict, *, dataset_ref: list, epoch: int) -> dict:
    """Ray Data task: one training batch of indices -> its clips (bad ones flagged, not raised)."""
    import ray

    key = dataset_ref[0].hex()
    dataset = _DATASETS.get(key)
    if dataset is None:
        dataset = _DATASETS[key] = ray.get(dataset_ref[0])
    dataset.set_epoch(epoch)
    indices = [int(i) for i in batch["indices"][0]]
    items = [dataset[i] for i in indices]
    good = [item for item in items if "error" not in item]
    stacked = stack_clips([item["clip"] for item in good]).numpy() if good else np.zeros((0, 0), np.uint8)
    clips = np.zeros((len(items), *stacked.shape[1:]), dtype=np.uint8)  # (B, T, C, H, W) or (B, V, T, C, H, W)
    clips[[row for row, item in enumerate(items) if "error" not in item]] = stacked
    return {
        "clip": clips,
        "label": np.asarray([item.get("label", -1) for item in items], dtype=np.int64),
        "video_id": np.asarray([item["video_id"] for item in items], dtype=object),
        "error": np.asarray([item.get("error", "") for item in items], dtype=object),
        "node": np.asarray([ray.get_runtime_context().get_node_id()] * len(items), dtype=object),
    }


def _as_batch(block: dict) -> dict:
    """A decoded block in `collate_clips`' form: good clips stacked, bad ones listed."""
    ok = np.asarray([not e for e in block["error"]], dtype=bool)
    bad = [(str(v), str(e)) for v, e, k in zip(block["video_id"], block["error"], ok) if not k]
    if not ok.any():
        return {"clip": torch.empty(0, dtype=torch.uint8), "label": torch.empty(0, dtype=torch.int64),
                "video_id": [], "bad": bad}
    return {
        "clip": torch.from_numpy(np.ascontiguousarray(block["clip"][ok])),
        "label": torch.from_numpy(block["label"][ok]),
        "video_id": [str(v) for v in block["video_id"][ok]],
        "bad": bad,
    }


class RayClipLoader:
    """Iterable over an epoch's batches, decoded by Ray Data tasks (see the module docstring).

    Args:
        dataset: the clips (training or test mode); put in the object store once.
        sampler: picks this rank's indices for the epoch (call its `set_epoch` as for a DataLoader).
        batch_size: clips per batch.
        drop_last: drop the last incomplete batch.
        num_cpus_per_task: CPUs Ray reserves per decoding task.
        prefetch_batches: batches decoded ahead of the training step (bounds memory).
        decode_nodes: where the tasks run, `data.decode_nodes` (see `decode_label_selector`).

    `clips_per_node` counts the clips decoded on each node (by node id) since the loader was made.
    """

    def __init__(self, dataset: VideoClipDataset, sampler, *, batch_size: int, drop_last: bool,
                 num_cpus_per_task: float = 1.0, prefetch_batches: int = 4, decode_nodes: str = "auto"):
        import ray

        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_cpus_per_task = num_cpus_per_task
        self.prefetch_batches = prefetch_batches
        self.decode_nodes = decode_nodes
        self.train_nodes = train_node_ids() if decode_nodes == "auto" else []
        self.clips_per_node: Counter = Counter()
        self._ref = ray.put(dataset)

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def __iter__(self):
        import ray

        # A DataLoader draws one number from torch's global generator per epoch (its workers' base seed);
        # drawing it here too keeps every later draw (dropout, mixing) the same whichever engine is used.
        torch.empty((), dtype=torch.int64).random_()
        indices = list(self.sampler)
        steps = len(self)
        batches = [np.asarray(indices[k * self.batch_size:(k + 1) * self.batch_size]) for k in range(steps)]
        if not batches:
            return
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the sampler's order, as a DataLoader gives it
        plan = ray.data.from_items([{"indices": b.tolist()} for b in batches], override_num_blocks=len(batches))
        plan = plan.map_batches(
            _decode_batch, fn_kwargs={"dataset_ref": [self._ref], "epoch": self.dataset.epoch}, batch_size=1,
            num_cpus=self.num_cpus_per_task, batch_format="numpy",
            label_selector=decode_label_selector(self.decode_nodes, self.train_nodes, ray.nodes(),
                                                 num_cpus=self.num_cpus_per_task),
        )
        # Every task returns exactly its batch's rows (bad ones flagged), so fixed-size batches in order
        # are the sampler's batches, whatever blocks Ray Data cut them into.
        for block in plan.iter_batches(batch_size=self.batch_size, batch_format="numpy",
                                       prefetch_batches=self.prefetch_batches):
            self.clips_per_node.update(str(n) for n in block["node"])
            yield _as_batch(block)
