"""`data.engine=ray` decodes on the nodes that hold no Train worker (`data.decode_nodes`), and
`bench train --data-only` measures what that feeds one Train worker.

The placement rule is checked on its own (fast tier), then on the multi-node test cluster: one Train
worker fed by Ray Data tasks with 2, 1 and 0 extra 1-CPU labelled decode nodes (videos on S3, cached
per node), where every clip must have been decoded off the Train worker's node and on every decode
node, and with `decode_nodes=labelled` on the decode nodes only. The clips/s are printed, never
asserted (a shared 2-core machine times nothing reliably).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest
from servers.process import REPO, needs_netns

from actionlab.config import Config, resolve
from actionlab.data.ray_ingest import (
    DECODE_LABEL_KEY,
    DECODE_LABEL_VALUE,
    NODE_ID_LABEL,
    decode_label_selector,
    train_label_selector,
)


def _node(node_id: str, cpus: float, alive: bool = True) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus}, "Labels": {}}


def test_auto_keeps_decoding_off_the_train_nodes_when_another_node_has_cpus():
    nodes = [_node("gpu1", 8), _node("gpu2", 8), _node("cpu1", 4)]
    selector = decode_label_selector("auto", ["gpu2", "gpu1"], nodes, num_cpus=1)
    assert selector == {NODE_ID_LABEL: "!in(gpu1,gpu2)"}
    # No other node, only a dead one, or one too small for a task: any node, as without the rule.
    assert decode_label_selector("auto", ["gpu1"], [_node("gpu1", 8)], num_cpus=1) is None
    assert decode_label_selector("auto", ["gpu1"], [_node("gpu1", 8), _node("cpu1", 4, alive=False)],
                                 num_cpus=1) is None
    assert decode_label_selector("auto", ["gpu1"], [_node("gpu1", 8), _node("head", 0)], num_cpus=1) is None


def test_labelled_selects_the_decode_label_and_any_selects_nothing():
    nodes = [_node("gpu1", 8), _node("cpu1", 4)]
    assert decode_label_selector("labelled", ["gpu1"], nodes, num_cpus=1) == {DECODE_LABEL_KEY: DECODE_LABEL_VALUE}
    assert decode_label_selector("any", ["gpu1"], nodes, num_cpus=1) is None


def test_train_workers_keep_off_declared_decode_nodes_unless_any():
    assert train_label_selector("auto") == train_label_selector("labelled") == {DECODE_LABEL_KEY: "!decode"}
    assert train_label_selector("any") is None


def test_the_selectors_are_valid_ray_label_selectors():
    from ray._private.label_utils import validate_label_selector

    node_ids = ["a" * 56, "b" * 56]  # Ray node ids: 56 hex digits
    for mode in ("auto", "labelled"):
        selector = decode_label_selector(mode, node_ids, [_node(i, 1) for i in node_ids] + [_node("c" * 56, 1)],
                                         num_cpus=1)
        assert selector and validate_label_selector(selector) is None, selector
    assert validate_label_selector(train_label_selector("auto")) is None


def test_decode_nodes_is_a_config_choice():
    assert Config().data.decode_nodes == "auto"
    assert resolve({}, ["data.decode_nodes=labelled"]).data.decode_nodes == "labelled"
    with pytest.raises(ValueError, match="decode_nodes"):
        resolve({}, ["data.decode_nodes=gpu"])


def test_preflight_counts_decode_nodes_cpus_for_decoding_only(monkeypatch, capsys):
    """Train workers cannot use a labelled decode node's CPUs: the pre-flight check says so before
    compute instead of leaving the run waiting for a place; `labelled` without such a node warns."""
    import ray

    from actionlab.data import ray_ingest
    from actionlab.train import launch

    table = [{"node_id": "h", "name": "head", "cpus": 1.0, "decode_label": False},
             {"node_id": "d", "name": "node3", "cpus": 2.0, "decode_label": True}]
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 3.0})
    monkeypatch.setattr(ray_ingest, "decode_node_table", lambda: table)
    two_workers = ["compute.num_workers=2", "compute.cpus_per_worker=1", "data.engine=ray"]
    with pytest.raises(RuntimeError, match=r"has 1 \(and 2 on nodes labelled actionlab.io/role=decode"):
        launch.check_resources(resolve({}, two_workers), use_gpu=False)
    launch.check_resources(resolve({}, [*two_workers, "data.decode_nodes=any"]), use_gpu=False)
    launch.check_resources(resolve({}, ["compute.cpus_per_worker=1", "data.engine=ray"]), use_gpu=False)
    assert capsys.readouterr().out == ""
    table[1]["decode_label"] = False
    launch.check_resources(resolve({}, ["compute.cpus_per_worker=1", "data.engine=ray",
                                         "data.decode_nodes=labelled"]), use_gpu=False)
    assert "no node with CPUs has the label actionlab.io/role=decode" in capsys.readouterr().out


def test_bench_train_takes_one_mode():
    from actionlab.cli import main

    assert main(["bench", "train", "smoke"]) == 2  # neither --vs-plain nor --data-only: a one-line error
    assert main(["bench", "train", "smoke", "--vs-plain", "--data-only"]) == 2


@needs_netns
@pytest.mark.integration
def test_decode_tasks_run_on_decode_nodes_and_feed_one_train_worker(ray_cluster, s3_server, tmp_path):
    from actionlab.data import synthetic

    cluster = ray_cluster
    # Clips that take a while to decode (32 frames at 160 px: ~50 ms each on one core), so a task's
    # fixed cost does not hide the decoding; 48 training clips, 12 batches (tasks) per epoch.
    manifest = synthetic.synthesize(tmp_path / "data", num_classes=4, videos_per_class=16, num_frames=32,
                                    size_px=160, seed=0, num_procs=1)
    bucket = s3_server.make_bucket("decode-nodes")
    env = {**cluster.env, **s3_server.env, "RAY_ADDRESS": cluster.address}

    def actionlab(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "actionlab", *args], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    actionlab("data", "upload", str(manifest.parent), f"{bucket}/motion")
    # The suite checks placement with 2 decode nodes; ACTIONLAB_DECODE_SCALING=1 also measures 1 and 0 (the
    # scaling table: about 8 minutes on a 2-core machine).
    scaling = os.environ.get("ACTIONLAB_DECODE_SCALING") == "1"
    epochs, rows = (4 if scaling else 2), []

    def feed(mode: str) -> dict:
        done = actionlab("bench", "train", "smoke", "--data-only", "--json", "--set=data.engine=ray",
                         f"--set=data.decode_nodes={mode}", f"--set=data.manifest={bucket}/motion/manifest.parquet",
                         "--set=data.batch_size=4", "--set=compute.num_workers=1", "--set=compute.cpus_per_worker=1",
                         f"--set=schedule.epochs={epochs}", "--set=clip.size_px=32", "--set=clip.resize_px=36",
                         "--set=workload.params.backbone=resnet10t")  # a small step
        out = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"\ndecode_nodes={mode}: {json.dumps(out)}", flush=True)
        assert sum(out["clips_per_node"].values()) == 48 * epochs, out  # every clip of every epoch, once
        assert len(out["clips_per_s"]) == epochs and out["step_clips_per_s"] > 0
        return out

    # Both decode nodes first (nodes join a quieter cluster more surely), then one removed, then none.
    added = [cluster.add_node(num_cpus=1, labels={DECODE_LABEL_KEY: DECODE_LABEL_VALUE}) for _ in range(2)]
    for extra in ((2, 1, 0) if scaling else (2,)):
        while len(added) > extra:
            node = added.pop()
            cluster.remove_node(node)
            cluster.wait_for_dead(node)
        out = feed("auto")
        decoded, train_nodes = out["clips_per_node"], out["train_nodes"]
        decode_nodes = sorted(n["name"] for n in out["nodes"] if n["decode_label"])
        assert decode_nodes == sorted(n.name for n in added) and len(train_nodes) == 1, out
        assert train_nodes[0] in ("head", "node2"), f"a Train worker on a decode node: {out}"
        assert train_nodes[0] not in decoded, f"clips decoded on the Train worker's node: {out}"
        assert set(decode_nodes) <= set(decoded), f"a decode node decoded nothing: {out}"
        rows.insert(0, (extra, out))
        if extra == 2:
            # Only the labelled nodes, although the base node without a Train worker has a free CPU too.
            labelled = feed("labelled")
            assert sorted(labelled["clips_per_node"]) == decode_nodes, labelled

    print("\nclips/s fed to one Train worker (data.engine=ray, 1 CPU per node, shared 2-core machine):")
    print(f"  {'decode nodes':>12s} {'decode CPUs':>11s} {'steady clips/s':>14s} {'step clips/s':>12s}  "
          "clips decoded per node")
    for extra, out in rows:
        cpus = sum(n["cpus"] for n in out["nodes"] if n["name"] not in out["train_nodes"])
        per_node = ", ".join(f"{k} {v}" for k, v in out["clips_per_node"].items())
        steady = statistics.median(out["clips_per_s"][1:])  # as `bench train --data-only`: epochs 2..N
        print(f"  {extra:12d} {cpus:11g} {steady:14.1f} {out['step_clips_per_s']:12.1f}  {per_node}")
