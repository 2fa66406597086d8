"""mlflow/server.sh starts a real tracking server on loopback that a search can log to."""

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_binds_loopback_by_default_and_serves_artifacts(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_BACKEND_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        # This interpreter's mlflow: a checkout without .venv (a git worktree) has no default one.
        "MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow"),
    }
    pidfile = tmp_path / "pid"
    out = subprocess.run(
        [
            str(REPO / "mlflow/server.sh"),
            "--port",
            str(port),
            "--daemon",
            "--pidfile",
            str(pidfile),
            "--log",
            str(tmp_path / "log"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr + (tmp_path / "log").read_text()
    pid = int(pidfile.read_text())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.status == 200
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True
        ).stdout
        local = {line.split()[3] for line in listening.splitlines()}  # the bound address:port
        assert local == {f"127.0.0.1:{port}"}
        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.create_experiment("server-test")
        run = client.create_run(exp)
        (tmp_path / "a.txt").write_text("hello")
        client.log_artifact(run.info.run_id, str(tmp_path / "a.txt"))
        assert list((tmp_path / "artifacts").rglob("a.txt"))  # stored by the server, not the client
    finally:
        subprocess.run(
            [str(REPO / "mlflow/server.sh"), "--stop", "--pidfile", str(pidfile)], timeout=30
        )
    # --stop returns only once the whole process group is gone.
    assert subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).stdout == b""
    try:
        os.kill(pid, 0)
        raise AssertionError("server still running")
    except ProcessLookupError:
        pass
