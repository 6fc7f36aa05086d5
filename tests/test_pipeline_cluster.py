"""Two-node Ray cluster (ray.cluster_utils.Cluster): a node leaves mid-job and only its in-flight rows are redone."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pipeline import run_job
from pipeline.replica.actor import Replica

from test_pipeline import assert_audio_matches, metadata_rows, scripts


@pytest.fixture
def two_nodes():
    """A head and a worker node, one CPU each, so each holds exactly one replica."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def test_node_removed_mid_job_costs_only_its_in_flight_rows(
    two_nodes, pipeline_cfg, pipeline_parquet, tmp_path
):
    cluster, worker = two_nodes
    worker_node = worker.node_id
    marker = tmp_path / "worker-holds-rows"

    class StallOnWorker(Replica):
        """On the worker node: announce that rows are in flight, then hold them until the node goes."""

        def _admitted(self, p):
            import ray

            if ray.get_runtime_context().get_node_id() == worker_node:
                marker.write_text(p.row.key)
                time.sleep(600)

    def remove_worker_when_busy():
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        cluster.remove_node(worker, allow_graceful=False)

    remover = threading.Thread(target=remove_worker_when_busy, daemon=True)
    remover.start()
    rows = scripts(12)
    data = pipeline_parquet(rows)
    job = tmp_path / "job"
    summary = run_job(
        pipeline_cfg(
            f"data.input={data}",
            "cluster.replicas=2",
            "generation.batch_size=2",
            "cluster.unit_rows=2",
            "generation.max_new_frames=40",
        ),
        replica_cls=StallOnWorker,
    )
    remover.join(timeout=5)
    assert marker.exists(), "no replica ran on the worker node"

    meta = metadata_rows(job)
    assert sorted(r["id"] for r in meta) == [r["id"] for r in rows]  # nothing lost, nothing twice
    assert all(r["status"] == "ok" for r in meta)
    for r in meta:
        assert_audio_matches(job, r)
        assert r["node"] != worker_node  # the worker never finished a row
    requeued = {r["id"] for r in meta if r["attempts"] == 1}
    assert set(marker.read_text().split(",")) <= requeued  # the stalled batch was redone elsewhere
    assert (
        all(r["attempts"] <= 1 for r in meta) and len(requeued) <= 4
    )  # at most its units in flight
    failed = [r for r in summary["replicas"].values() if r["crashes"]]
    assert len(failed) == 1
