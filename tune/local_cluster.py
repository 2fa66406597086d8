"""A real Ray cluster of several nodes on this one machine, for tests, benchmarks and trying `--address`.

Every node is its own `ray start` (its own raylet, object store, temp dir and ports), so trials
scheduled on different nodes run in different raylets exactly as on different machines; only the
network is loopback/local. Nothing here touches other Ray instances on the machine: each node runs
in a process group of its own and `stop()` kills those groups and any process whose command line
names one of our temp dirs, never by process name (no `ray stop`: it stops every Ray on the host).

    python -m tune.local_cluster --nodes 2 --cpus 1     # prints the address and token path; Ctrl-C stops it

    with LocalRayCluster() as cluster:                  # in Python
        cluster.add_node(num_cpus=1, head=True)
        cluster.add_node(num_cpus=1)
        subprocess.run([..., "--address", cluster.address], env=cluster.env)

Ray facts this relies on (Ray 2.60):
- Each node may have its own `--temp-dir` ("can be specified per node"); nodes need not share one.
  `ray start --temp-dir D` writes its address to D/ray_current_cluster, not /tmp/ray, so a plain
  `ray.init()` elsewhere on the machine does not join this cluster by accident.
- Ray replaces a loopback `--node-ip-address` with the machine's routable address and its GCS
  listens on all interfaces; what keeps strangers out is token authentication. Since 2.59 a head
  started while a token exists enables it, but a joining node or driver does not switch it on by
  itself: all of them need RAY_AUTH_MODE=token and the same token (here a fresh one in a file,
  RAY_AUTH_TOKEN_PATH), which `env` carries.
- The dashboard agent's HTTP port defaults to a fixed 52365, which two nodes on one host (or
  another Ray here) would fight over: every node gets free ports instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free right now (the usual small race with whoever binds next is accepted)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def processes_of(sessions: set[int], marker: str = "") -> list[int]:
    """Live pids (not zombies, not this process) whose process group or session is in
    `sessions`, or with `marker` in their command line or environment.

    A `ray start` run as a session leader keeps all its node's processes in its session, though
    the raylet puts each worker in a process group of its own; workers and agents also rename
    themselves ("ray::IDLE"), and renaming can overwrite what /proc shows of their environment.
    """
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            stat = (proc / "stat").read_text()
            # Fields after the parenthesised command name: state ppid pgrp session ...
            state, _, pgrp, sid = stat.rsplit(")", 1)[1].split()[:4]
            if state == "Z":
                continue
            if int(pgrp) in sessions or int(sid) in sessions:
                found.append(int(proc.name))
            elif marker:
                text = (proc / "cmdline").read_bytes() + b"\0" + (proc / "environ").read_bytes()
                if marker.encode() in text:
                    found.append(int(proc.name))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return found


@dataclass
class Node:
    """One `ray start`: its process group, temp dir and the port that identifies it."""

    head: bool
    num_cpus: int
    temp_dir: Path
    node_manager_port: int
    pgid: int  # also its session id: `ray start` runs as a session leader
    output: str
    node_id: str = ""  # Ray's node id (hex), filled in by LocalRayCluster.wait_for_nodes


@dataclass
class LocalRayCluster:
    """Head plus worker nodes started with `ray start` on this machine; a context manager."""

    python: str = sys.executable
    nodes: list[Node] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        # Short paths: Ray's unix sockets live under the temp dir and must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="ctray-", dir="/tmp"))
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        pythonpath = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env.update(
            {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(token),
                # Trial workers are spawned by the raylets: they must import this checkout's tune.
                "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
                "RAY_USAGE_STATS_ENABLED": "0",
            }
        )
        self.env: dict[str, str] = env
        self.ray = str(Path(self.python).parent / "ray")

    @property
    def address(self) -> str:
        if not self.port:
            raise RuntimeError("no head node yet")
        return f"127.0.0.1:{self.port}"

    def add_node(self, num_cpus: int = 1, head: bool = False, timeout_s: float = 120) -> Node:
        """`ray start` one node (the first must be the head); returns when `ray start` has."""
        if head == bool(self.nodes):
            raise RuntimeError("the first node, and only it, must be the head")
        temp_dir = self.root / f"n{len(self.nodes)}"
        nm_port = free_port()
        cmd = [
            self.ray,
            "start",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--temp-dir={temp_dir}",
            f"--node-manager-port={nm_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
        ]
        if head:
            self.port = free_port()
            cmd += [f"--port={self.port}", "--head", "--include-dashboard=false"]
        else:
            cmd += [f"--address={self.address}"]
        # A new session: the daemons `ray start` leaves behind form one process group we can kill.
        proc = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        node = Node(head, num_cpus, temp_dir, nm_port, proc.pid, "")
        self.nodes.append(node)  # before waiting: stop() must find it even if the start fails
        try:
            node.output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            node.output = proc.communicate()[0]
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{node.output}")
        return node

    def wait_for_nodes(self, timeout_s: float = 60) -> dict[str, str]:
        """Wait until every node is alive in the GCS; set each Node.node_id; returns {id: 'n<i>'}.

        Asked from a separate driver process so the caller's own process never joins this cluster.
        """
        probe = (
            "import json, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False)\n"
            "print(json.dumps([[n['NodeID'], n['NodeManagerPort'], n['Alive']] "
            "for n in ray.nodes()]))\n"
        )
        deadline = time.monotonic() + timeout_s
        seen: list[Any] = []
        while time.monotonic() < deadline:
            out = subprocess.run(
                [self.python, "-c", probe], env=self.env, capture_output=True, text=True, timeout=60
            )
            if out.returncode == 0:
                seen = json.loads(out.stdout.strip().splitlines()[-1])
                alive = {port: nid for nid, port, ok in seen if ok}
                if all(n.node_manager_port in alive for n in self.nodes):
                    for n in self.nodes:
                        n.node_id = alive[n.node_manager_port]
                    return {n.node_id: f"n{i}" for i, n in enumerate(self.nodes)}
            time.sleep(1)
        raise RuntimeError(f"not every node came up within {timeout_s} s; GCS sees {seen}")

    def processes(self) -> list[int]:
        """Pids of our processes still running: in our `ray start` sessions or naming our temp dir."""
        return processes_of({n.pgid for n in self.nodes}, str(self.root))

    def stop(self, grace_s: float = 3) -> None:
        """Kill every node (SIGTERM, then SIGKILL after `grace_s`) and remove the temp dirs."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            pids = self.processes()
            if not pids:
                break
            for n in self.nodes:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(n.pgid, sig)
            for pid in pids:  # e.g. workers that left our process groups
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class MlflowServer:
    uri: str
    pgid: int  # server.sh starts it in a session of its own: the server's pid is its group id


@contextlib.contextmanager
def mlflow_server(store: Path, python: str = sys.executable) -> Iterator[MlflowServer]:
    """A real tracking server (mlflow/server.sh) on 127.0.0.1, store and artifacts under `store`.

    Stops the server and its workers (its process group) on exit, even on error.
    """
    store.mkdir(parents=True, exist_ok=True)
    port, pidfile = free_port(), store / "server.pid"
    server = [str(REPO_ROOT / "mlflow" / "server.sh"), "--pidfile", str(pidfile)]
    env = {
        **os.environ,
        "MLFLOW_BACKEND_URI": f"sqlite:///{store / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(store / "artifacts"),
        "MLFLOW_BIN": str(Path(python).parent / "mlflow"),
    }
    try:
        out = subprocess.run(
            [*server, "--port", str(port), "--daemon", "--log", str(store / "server.log")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            log = (store / "server.log").read_text() if (store / "server.log").exists() else ""
            raise RuntimeError(f"mlflow/server.sh failed: {out.stderr}\n{log[-3000:]}")
        yield MlflowServer(f"http://127.0.0.1:{port}", int(pidfile.read_text()))
    finally:
        if pidfile.exists():
            subprocess.run([*server, "--stop"], env=env, timeout=60)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2, help="nodes, the head included")
    p.add_argument("--cpus", type=int, default=1, help="CPUs per node")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the nodes too, like Ctrl-C
    with LocalRayCluster() as cluster:
        for i in range(args.nodes):
            cluster.add_node(num_cpus=args.cpus, head=i == 0)
        ids = cluster.wait_for_nodes()
        print(f"Ray cluster of {args.nodes} nodes at {cluster.address}: {', '.join(ids)}")
        print(
            f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.env['RAY_AUTH_TOKEN_PATH']}\n"
            f"python tune/search.py --smoke --address {cluster.address}\n(Ctrl-C stops it)",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
