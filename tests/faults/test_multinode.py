"""Training across machines, simulated by two local "nodes" (one torchrun each, one CPU process on
gloo, static rendezvous at 127.0.0.1 as `make train NODES=2 NODE_RANK=i` does), and torchrun's
restart policy bringing a job back after a rank dies.

Every run trains the tiny preset for ``STEPS`` steps with the same seed and data, so an
interrupted and resumed run must end with exactly the parameters of the uninterrupted one.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.faults.launch import (
    STEPS,
    Node,
    free_port,
    newest_checkpoint_step,
    node_group,
    records,
    summary,
    train_env,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow


@pytest.fixture()
def launch(sample_shards, tmp_path):
    """Starts nodes training on the sample shards; kills what is left at the end of the test."""
    with node_group(sample_shards, tmp_path) as start:
        yield start


def two_nodes(launch, out: Path, tag: str, *overrides: str, env: dict | None = None, restarts: int = 0) -> list[Node]:
    """Node 0 and node 1 of a 2-node job on a fresh port."""
    port = free_port()
    return [launch(out, f"{tag}{r}", *overrides, env=env, port=port, nnodes=2, node_rank=r, restarts=restarts)
            for r in (0, 1)]


def finish(nodes: list[Node], timeout: float = 240) -> None:
    """Wait for every node to exit 0."""
    for node in nodes:
        code = node.wait(timeout)
        assert code == 0, f"exit {code}: {node.text()[-3000:]}"


def assert_same_end(out: Path, reference: Path) -> None:
    """Finished at ``STEPS`` with both ranks' parameters equal to each other and to the reference run's."""
    s = summary(out)
    assert s["step"] == STEPS and s["world_size"] == 2
    a, b = s["param_checksums"]
    assert a == b, "the two ranks' parameters differ"
    assert s["param_checksums"] == summary(reference)["param_checksums"], "resumed run differs from the uninterrupted one"
    assert sorted({r["step"] for r in records(out)}) == list(range(1, STEPS + 1))


@pytest.fixture(scope="module")
def reference(sample_shards, tmp_path_factory) -> Path:
    """The output directory of an uninterrupted 2-node run (shared by the tests of this module)."""
    tmp = tmp_path_factory.mktemp("reference")
    with node_group(sample_shards, tmp) as launch:
        finish(two_nodes(launch, tmp / "out", "ref"))
    return tmp / "out"


def test_two_nodes_finish_in_sync(reference):
    s = summary(reference)
    assert s["world_size"] == 2 and s["step"] == STEPS
    assert s["param_checksums"][0] == s["param_checksums"][1]  # DDP kept the two nodes' replicas equal
    assert [r["step"] for r in records(reference)] == list(range(1, STEPS + 1))
    assert (reference / "teacher.pth").is_file()


def test_node_killed_then_both_relaunched_resume(reference, launch, tmp_path):
    out = tmp_path / "killed"
    nodes = two_nodes(launch, out, "run")
    wait_for_checkpoint(out, 12, nodes)
    nodes[1].signal_all(signal.SIGKILL)  # node 1 lost: launcher and worker gone at once
    t0 = time.monotonic()
    code = nodes[0].wait(90)
    waited = time.monotonic() - t0
    assert code not in (None, 0), "node 0 went on without its peer"
    assert waited < 60, f"node 0 took {waited:.0f} s to notice"
    # gloo names the lost peer: "closed" when its socket had been read empty, "reset" when data
    # node 0 had already sent was still unread (node 0 runs ahead now that checkpoints are written
    # in the background, so it is often mid-exchange when node 1 dies)
    assert re.search(r"Connection (closed|reset) by peer", nodes[0].text())
    assert not (out / "summary.json").exists()
    last = newest_checkpoint_step(out)
    assert 12 <= last < STEPS

    relaunched = two_nodes(launch, out, "again")
    finish(relaunched)
    assert f"resumed from {out / 'checkpoints' / f'ckpt_{last:09d}.pth'} at step {last}" in relaunched[0].text()
    assert_same_end(out, reference)


def test_hung_node_fails_its_peer_after_the_timeout(launch, tmp_path):
    out = tmp_path / "hung"
    timeout_s = 12
    nodes = two_nodes(launch, out, "hung", f"train.dist_timeout_min={timeout_s / 60}")
    wait_for_checkpoint(out, 4, nodes)
    for worker in nodes[1].workers():  # node 1's trainer frozen (SIGSTOP), its connections left open
        worker.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    code = nodes[0].wait(120)
    waited = time.monotonic() - t0
    assert code not in (None, 0), "node 0 waited for a frozen peer for 2 minutes"
    assert timeout_s * 0.8 < waited < timeout_s + 45, waited
    assert f"Timed out waiting {timeout_s * 1000}ms" in nodes[0].text()


def test_rank_killed_once_single_node_restarts_from_checkpoint(reference, launch, tmp_path):
    out = tmp_path / "elastic"
    env = train_env(TCORE_FAULT_KILL_AT_STEP="10")  # rank 1 SIGKILLs itself when it reaches step 10
    node = launch(out, "elastic", env=env, port=free_port(), nproc=2, restarts=1)
    finish([node])
    text = node.text()
    assert "exitcode: -9" in text and (out / ".fault_killed_step10_rank1").is_file()
    assert f"resumed from {out / 'checkpoints' / 'ckpt_000000008.pth'} at step 8" in text
    steps = [r["step"] for r in records(out)]
    assert steps == list(range(1, 11)) + list(range(9, STEPS + 1))  # steps 9-10 redone after the restart
    assert_same_end(out, reference)


def test_rank_killed_once_two_nodes_both_restart(reference, launch, tmp_path):
    out = tmp_path / "elastic2"
    env = train_env(TCORE_FAULT_KILL_AT_STEP="10")  # global rank 1 = node 1's process
    nodes = two_nodes(launch, out, "elastic", env=env, restarts=1)
    finish(nodes)
    assert "exitcode: -9" in nodes[1].text() and "failed" in nodes[0].text()
    assert f"resumed from {out / 'checkpoints' / 'ckpt_000000008.pth'} at step 8" in nodes[0].text()
    assert_same_end(out, reference)
