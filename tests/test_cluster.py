"""The multi-node test cluster itself (`servers.cluster`): a node's local disk is its own, custom
resources and labels place work, and a node SIGKILLed by its raylet's PID is declared dead and leaves
no process behind. Every cluster test builds on these three facts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

PROBE = """
import json, os, ray
ray.init()

@ray.remote(num_cpus=1)
def where(path):
    import time
    time.sleep(0.5)
    return ray.get_runtime_context().get_node_id(), os.path.exists(path)

@ray.remote(num_cpus=0, resources={"decode": 1}, label_selector={"actionlab.io/role": "decode"})
def decode_node():
    return ray.get_runtime_context().get_node_id()

seen = sorted(set(ray.get([where.remote(%r) for _ in range(8)])))
print(json.dumps({"seen": seen, "decode": ray.get(decode_node.remote()), "head": ray.get_runtime_context().get_node_id()}))
"""


def test_nodes_have_disks_of_their_own_and_die_by_raylet_pid(ray_cluster):
    cluster = ray_cluster
    assert cluster.alive_node_names() == ["head", "node2"]
    marker = cluster.local_dir / "written-on-the-head.txt"
    marker.write_text("only the head's disk has this")
    decode = cluster.add_node(num_cpus=1, resources={"decode": 1}, labels={"actionlab.io/role": "decode"})
    assert cluster.alive_node_names() == ["head", "node2", decode.name]

    out = subprocess.run([sys.executable, "-c", PROBE % str(marker)], env=dict(cluster.env, RAY_ADDRESS=cluster.address),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    visible = {node: exists for node, exists in result["seen"]}
    assert len(visible) >= 2, f"the 1-CPU tasks ran on one node only: {result}"
    assert visible.get(result["head"]) is True  # the head (the driver's machine) sees its own file
    assert False in visible.values(), f"another node saw the head's node-local file: {result}"
    assert result["decode"] != result["head"]

    raylet = decode.raylet_pid()
    assert raylet is not None
    start = time.monotonic()
    cluster.remove_node(decode)  # SIGKILL: raylet, then everything the node started
    cluster.wait_for_dead(decode)
    assert not decode.pids(), f"processes of the killed node are left: {decode.pids()}"
    assert time.monotonic() - start < 60
    assert cluster.alive_node_names() == ["head", "node2"]
