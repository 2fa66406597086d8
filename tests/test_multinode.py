"""A search on a real two-node Ray cluster logging to a real MLflow tracking server, all on loopback.

The cluster is two separate `ray start` processes (head and worker, 1 CPU each, each with its own
`--temp-dir`: Ray 2.60 accepts a temp dir per node, so nodes need not share one or a session dir),
joined with token authentication; the tracking server is `mlflow/server.sh` on 127.0.0.1. The
search is the real command, `python tune/search.py --address ... --mlflow-uri http://...`, run as a
subprocess exactly as a user would on a cluster's head. See tune/local_cluster.py for why each
`ray start` gets its own ports and process group.

Trials must use both nodes: each trial reserves 1 CPU, each node has 1, and 2 run at once.
Multi-node Tune needs storage every node can reach (NFS, S3): on one machine a local directory
is that shared storage, since both raylets see the same filesystem; the test names it by a
file:// URI, the way a cluster names S3.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import search_runs

from mlflow import MlflowClient
from tune.local_cluster import LocalRayCluster, mlflow_server, processes_of
from tune.trial import ARTIFACTS

REPO = Path(__file__).resolve().parent.parent
TRIALS = 6
EXPERIMENT = "multinode"
NAME = "two-nodes"

pytestmark = pytest.mark.slow


@dataclass
class Outcome:
    """Everything the search left behind, collected while the cluster and server still ran."""

    search: subprocess.CompletedProcess
    node_ids: dict[str, str]  # Ray node id -> n0 (head) / n1 (worker)
    parent: object = None
    children: list = field(default_factory=list)
    child_artifacts: dict[str, set[str]] = field(default_factory=dict)
    parent_artifacts: set[str] = field(default_factory=set)
    strays: list[int] = field(default_factory=list)  # our processes still alive after teardown
    seconds: dict[str, float] = field(default_factory=dict)
    storage: Path = Path()


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> Outcome:
    tmp = tmp_path_factory.mktemp("multinode")
    start = time.monotonic()
    # Both context managers stop what they started on the way out, failed assertions included.
    with LocalRayCluster() as cluster, mlflow_server(tmp / "mlflow") as server:
        cluster.add_node(num_cpus=1, head=True)
        cluster.add_node(num_cpus=1)
        node_ids = cluster.wait_for_nodes()
        up = time.monotonic()
        search = subprocess.run(
            [
                sys.executable,
                str(REPO / "tune" / "search.py"),
                "--address",
                cluster.address,
                "--mlflow-uri",
                server.uri,
                "--smoke",
                "--dataset",
                "digits",
                "--num-samples",
                str(TRIALS),
                "--cpus-per-trial",
                "1",
                "--max-concurrent",
                "2",
                # A storage URI, as on a real cluster (s3://...): file:// on one machine is
                # storage both nodes reach, since they share its filesystem.
                "--storage-path",
                (tmp / "ray").as_uri(),
                "--name",
                NAME,
                "--experiment",
                EXPERIMENT,
                "--model-name",
                "ct-multinode",
            ],
            env=cluster.env,  # RAY_AUTH_MODE=token and the cluster's token
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        searched = time.monotonic()
        out = Outcome(search, node_ids, storage=tmp / "ray")
        assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-5000:]
        # Read back through the server only: nothing here looks at its store directly.
        client = MlflowClient(server.uri)
        out.parent, out.children = search_runs(server.uri, NAME, EXPERIMENT)
        for r in out.children:
            out.child_artifacts[r.info.run_id] = {
                a.path for a in client.list_artifacts(r.info.run_id)
            }
        out.parent_artifacts = {a.path for a in client.list_artifacts(out.parent.info.run_id)}
        server_pgid = server.pgid
    time.sleep(0.5)
    out.strays = cluster.processes() + processes_of({server_pgid})
    out.seconds = {
        "cluster up": up - start,
        "search": searched - up,
        "total": time.monotonic() - start,
    }
    print(f"\nmulti-node timings (s): {out.seconds}")
    return out


def test_trials_ran_on_both_nodes(outcome):
    """The `ray.node_id` tag of the child runs holds exactly the two nodes' Ray ids (both did
    work), and the short `node` tag a person reads tells them apart too."""
    nodes = [r.data.tags["ray.node_id"] for r in outcome.children]
    assert set(nodes) == set(outcome.node_ids), (nodes, outcome.node_ids)
    assert len({r.data.tags["node"] for r in outcome.children}) == 2
    per_node = {outcome.node_ids[n]: nodes.count(n) for n in set(nodes)}
    assert min(per_node.values()) >= 1, per_node


def test_every_trial_and_its_plots_are_on_the_server(outcome):
    assert len(outcome.children) == TRIALS
    assert len({r.data.tags["ray.trial_id"] for r in outcome.children}) == TRIALS
    for r in outcome.children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["status"] in ("ok", "degenerate")
        assert "val/silhouette" in r.data.metrics and "val/recon_loss" in r.data.metrics
        assert set(ARTIFACTS) <= outcome.child_artifacts[r.info.run_id], r.info.run_name


def test_pareto_summary_came_back(outcome):
    stdout = outcome.search.stdout
    assert f"{TRIALS} trials in" in stdout
    assert "Pareto front" in stdout
    assert any(line.startswith("* ") for line in stdout.splitlines())  # the winner's row
    assert "Winner registered as models:/ct-multinode@champion" in stdout
    assert {"pareto.csv", "all_trials.csv", "pareto_front.png"} <= outcome.parent_artifacts
    assert outcome.parent.info.status == "FINISHED"


def test_results_went_to_the_shared_storage(outcome):
    """Every trial's checkpoints and results are under --storage-path, written by both nodes."""
    trial_dirs = [d for d in (outcome.storage / NAME).iterdir() if d.is_dir()]
    assert len(trial_dirs) == TRIALS
    assert all(list(d.glob("checkpoint_*")) for d in trial_dirs)


def test_nothing_left_running(outcome):
    """Both `ray start` process groups, every worker and the MLflow server are gone."""
    assert outcome.strays == [], outcome.strays


def test_a_trial_no_node_can_hold_exits_2(tmp_path):
    """Two nodes of 1 CPU each (2 in all) and --cpus-per-trial 2: a trial needs its CPUs on one
    node, the cluster has no autoscaler config that could add a bigger one, and Ray's autoscaler
    says so. The search waits for it, saying so once, then exits 2 with one line, before any
    trial, experiment or MLflow run."""
    with LocalRayCluster() as cluster:
        cluster.add_node(num_cpus=1, head=True)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        start = time.monotonic()
        out = subprocess.run(
            [
                sys.executable, str(REPO / "tune" / "search.py"), "--address", cluster.address,
                "--smoke", "--cpus-per-trial", "2", "--name", "big",
                "--storage-path", (tmp_path / "ray").as_uri(),
                "--mlflow-uri", f"sqlite:///{tmp_path}/m.db",
            ],
            env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        seconds = time.monotonic() - start
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-5000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "--cpus-per-trial 2" in errors[0] and "none of its node types" in errors[0], errors[0]
    assert out.stdout.count("waiting for the cluster's autoscaler") == 1, out.stdout[-3000:]
    assert not (tmp_path / "ray").exists() and not (tmp_path / "m.db").exists()
    print(f"\nexit 2 after {seconds:.0f} s: {errors[0]}")
