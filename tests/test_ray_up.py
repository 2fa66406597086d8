"""`ray up cluster.local.yaml`, `ray submit` of a smoke search, `ray down`: the cluster launcher for real.

The "remote" head is this machine reached over SSH on loopback: the test runs its own sshd
(127.0.0.1, a free port, a config, host key and authorized key of its own; the system's sshd and
~/.ssh are never touched) and writes a copy of cluster.local.yaml whose head is 127.0.0.1. What
the test changes in that copy, and why:

- SSH port: Ray's launcher has no SSH port setting (ray-project/ray#15225, #30452); it does pass
  `auth.ssh_proxy_command` to every ssh and rsync, so a tiny relay to the test's port stands in
  (`nc %h 2222` does the same on a real network). The launcher's ControlMaster options work
  unchanged through it.
- A private HOME: sshd's ForceCommand runs every remote command with HOME set to a directory of
  the test, so everything the launcher and the cluster file put in `~` (the synced checkout, the
  `ray_bootstrap_*` files, ~/.bashrc, ~/.ray/auth_token, the MLflow store) lands there.
- Offline setup: instead of creating a venv and pip-installing, `~/clustertune/.venv` is a
  stand-in whose `python`, `mlflow` and `ray` are the test's own interpreter's (sys.executable's
  venv: .venv in CI). Its `ray` is a shim with one change: `ray stop` stops only the Ray started
  through it. Real `ray stop` stops every Ray process on the host, and the launcher runs it on
  the head at `ray up` (head_start_ray_commands) and at `ray down`; here the head is a machine
  other Ray users may share.
- Ports: the head's GCS, dashboard and MLflow server get free ports (the file's 6379, 8265 and
  5000 may be taken on a shared machine); Ray gets its own --temp-dir and 1 CPU.

Everything else (file_mounts, rsync excludes, the .bashrc lines, token authentication, MLflow on
the head's loopback, the command order) is the real file's. Checked: `ray up` syncs the checkout
and the token and starts the head; `ray submit` runs a smoke search there that logs to the head's
MLflow; MLflow (and the dashboard, where ray[default] is installed) answer through the launcher's
port forward; `ray down` stops the head's Ray; nothing of the test keeps running.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import search_runs

from tune.local_cluster import free_port, processes_of
from tune.ray_private import dashboard_dependency_error

REPO = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not SSHD.exists() or not shutil.which("rsync") or not shutil.which("ssh-keygen"),
        reason="needs Debian's openssh-server, openssh-client and rsync (.ci/run installs them)",
    ),
]

# stdin/stdout <-> TCP: the ProxyCommand that gives ssh and rsync a non-default port.
PROXY = """\
import os, socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    os.write(1, data)
"""

# The stand-in venv's `ray`: `ray stop` stops only the Ray this shim started, the rest is Ray's.
RAY_SHIM = """\
#!{python}
import os, signal, subprocess, sys, time
sys.path.insert(0, {repo!r})
from tune.local_cluster import processes_of

REAL, SESSIONS, TEMP_DIR = {ray!r}, {sessions!r}, {temp_dir!r}
args = sys.argv[1:]
if args[:1] == ["stop"]:
    ours = {{int(s) for s in open(SESSIONS).read().split()}} if os.path.exists(SESSIONS) else set()
    for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        for pid in processes_of(ours, TEMP_DIR):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        while processes_of(ours, TEMP_DIR) and time.monotonic() < deadline:
            time.sleep(0.2)
    print("ray stop (test shim): stopped this cluster's Ray only")
    sys.exit(0)
if args[:1] == ["start"]:
    # A session of its own holds every process of the node, workers included.
    proc = subprocess.Popen([REAL, *args], start_new_session=True)
    with open(SESSIONS, "a") as f:
        f.write(f"{{proc.pid}}\\n")
    sys.exit(proc.wait())
os.execv(REAL, [REAL, *args])
"""


@dataclass
class SshHost:
    """This machine behind the test's sshd, with a private HOME for every session."""

    root: Path
    home: Path
    port: int
    key: Path
    proxy_command: str
    sshd: subprocess.Popen

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        """`command` over one verbose ssh session; a hang fails with ssh's and sshd's own logs."""
        args = [
            "ssh",
            "-v",
            "-i",
            str(self.key),
            "-o",
            f"ProxyCommand={self.proxy_command}",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={os.devnull}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",  # never a prompt that would wait for the timeout
            f"{getpass.getuser()}@127.0.0.1",
            command,
        ]
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"ssh did not return in 60 s\n--- ssh -v:\n{_text(e.stderr)[-4000:]}"
                f"\n--- sshd.log:\n{self.sshd_log()}"
            ) from None

    def sshd_log(self) -> str:
        try:
            return (self.root / "sshd.log").read_text()[-4000:]
        except OSError as e:
            return f"(unreadable: {e})"


def _text(out: bytes | str | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def ssh_host() -> Iterator[SshHost]:
    # Short path: Ray's unix sockets live under the head's --temp-dir (root/ray).
    root = Path(tempfile.mkdtemp(prefix="ctup-", dir="/tmp"))
    home = root / "home"
    port = free_port()
    key, host_key = root / "client_key", root / "host_key"
    for k in (key, host_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True, timeout=30
        )
    _write(root / "authorized_keys", (root / "client_key.pub").read_text(), 0o600)
    proxy = _write(root / "proxy.py", PROXY)
    # Every session: HOME = the private home, then the client's command (or a login shell).
    session = _write(
        root / "session.sh",
        f'#!/bin/sh\nexport HOME={home}\ncd "$HOME" || exit 1\n'
        'exec /bin/bash -c "${SSH_ORIGINAL_COMMAND:-exec /bin/bash -l}"\n',
        0o755,
    )
    venv = home / "venv-standin"
    _write(venv / "bin" / "python", f'#!/bin/sh\nexec {sys.executable} "$@"\n', 0o755)
    _write(venv / "bin" / "mlflow", f'#!/bin/sh\nexec {VENV_BIN / "mlflow"} "$@"\n', 0o755)
    shim = RAY_SHIM.format(
        python=sys.executable,
        repo=str(REPO),
        ray=str(RAY),
        sessions=str(root / "ray-sessions"),
        temp_dir=str(root / "ray"),
    )
    _write(venv / "bin" / "ray", shim, 0o755)
    # What `pip install -e ~/clustertune` into this venv would give: its python imports that copy.
    _write(
        venv / "bin" / "activate",
        'export PATH="$HOME/clustertune/.venv/bin:$PATH" PYTHONPATH="$HOME/clustertune"\n',
    )
    # Login shells (the launcher's) reset PATH in /etc/profile; the shim goes first from the start,
    # so even a `ray stop` before the setup commands ran cannot reach the real one.
    _write(
        home / ".bash_profile", f'export PATH="{venv}/bin:$PATH"\n[ -f ~/.bashrc ] && . ~/.bashrc\n'
    )
    _write(home / ".bashrc", "")
    config = _write(
        root / "sshd_config",
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                f"AllowUsers {getpass.getuser()}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",  # the key files live under /tmp
                f"ForceCommand {session}",
                "MaxStartups 100",
                "MaxSessions 100",
                # bash started by sshd sources the account's real ~/.bashrc before ForceCommand
                # runs, unless SHLVL says it is nested: that file is not the test's to run.
                "SetEnv SHLVL=1",
            ]
        )
        + "\n",
    )
    # sshd insists on its privilege-separation directory (Debian creates it at boot only).
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    except OSError as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"sshd needs /run/sshd, which cannot be created here: {e}")
    sshd = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "sshd.log", "w"),  # noqa: SIM115 - sshd owns it until the end
        start_new_session=True,
    )
    host = SshHost(root, home, port, key, f"{sys.executable} {proxy} 127.0.0.1 {port}", sshd)
    try:
        # sshd's own line, not a connect: another process may have taken the port meanwhile.
        deadline = time.monotonic() + 30
        while f"listening on 127.0.0.1 port {port}" not in host.sshd_log():
            if sshd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start:\n{host.sshd_log()}")
            time.sleep(0.2)
        yield host
    finally:
        print(f"\n--- sshd.log (end):\n{host.sshd_log()[-2000:]}")  # shown when a test failed
        # Whatever is still running of ours: sshd, its sessions, the Ray and MLflow started
        # through it (their environment holds HOME=root/home), ssh ControlMasters and relays.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in processes_of({sshd.pid}, str(root)):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            time.sleep(1)
        sshd.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def test_ssh_session_runs_in_the_private_home_with_the_shim_first(ssh_host):
    out = ssh_host.ssh("bash --login -c 'echo $HOME; command -v ray'")
    assert out.returncode == 0, out.stderr
    home, ray = out.stdout.split()
    assert home == str(ssh_host.home)
    assert ray == str(ssh_host.home / "venv-standin" / "bin" / "ray")


def _cluster_file(
    host: SshHost, token: Path, gcs_port: int, mlflow_port: int, dashboard_port: int
) -> Path:
    """cluster.local.yaml with the head at 127.0.0.1 over the test's sshd (see the module doc)."""
    config = yaml.safe_load((REPO / "cluster.local.yaml").read_text())
    config["cluster_name"] = f"ct-up-{secrets.token_hex(4)}"
    config["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    config["auth"] = {
        "ssh_user": getpass.getuser(),
        "ssh_private_key": str(host.key),
        "ssh_proxy_command": host.proxy_command,
    }
    config["min_workers"] = config["max_workers"] = 0
    mounts = config["file_mounts"]
    assert set(mounts) == {"~/clustertune", "~/.ray/auth_token"}, mounts
    config["file_mounts"] = {"~/clustertune": str(REPO), "~/.ray/auth_token": str(token)}
    setup = config["setup_commands"]
    assert "python3 -m venv ~/clustertune/.venv" in setup[0]
    config["setup_commands"] = ["ln -sfn ~/venv-standin ~/clustertune/.venv", *setup[1:]]

    def adapt(cmd: str) -> str:
        new = cmd
        if "ray start --head" in cmd:
            new = new.replace("--port=6379", f"--port={gcs_port}") + (
                f" --temp-dir={host.root / 'ray'} --num-cpus=1 --dashboard-port={dashboard_port}"
                f" --dashboard-agent-listen-port={free_port()} --disable-usage-stats"
            )
        if "mlflow/server.sh" in cmd and "--daemon" in cmd:
            assert "--host" not in cmd  # 127.0.0.1: the driver, on the head, is its only client
            new = new.replace("--port 5000", f"--port {mlflow_port}")
        assert new != cmd or "ray stop" in cmd or "--stop" in cmd, cmd
        return new

    config["head_start_ray_commands"] = [adapt(c) for c in config["head_start_ray_commands"]]
    return _write(host.root / "cluster.yaml", yaml.safe_dump(config, sort_keys=False))


def _launcher(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        return subprocess.run(
            [str(RAY), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"ray {args[0]} did not return in {timeout:.0f} s\n--- stdout:\n"
            f"{_text(e.stdout)[-4000:]}\n--- stderr:\n{_text(e.stderr)[-4000:]}"
        ) from None


def test_ray_up_submit_down(ssh_host):
    host = ssh_host
    token = _write(host.root / "auth_token", secrets.token_hex(32), 0o600)
    gcs_port, mlflow_port, dashboard_port = free_port(), free_port(), free_port()
    cluster = str(_cluster_file(host, token, gcs_port, mlflow_port, dashboard_port))
    uri = f"http://127.0.0.1:{mlflow_port}"
    seconds: dict[str, float] = {}
    name = yaml.safe_load(Path(cluster).read_text())["cluster_name"]
    try:
        t = time.monotonic()
        up = _launcher("up", "-y", "--no-config-cache", cluster)
        seconds["ray up"] = time.monotonic() - t
        assert up.returncode == 0, up.stdout[-5000:] + up.stderr[-5000:]
        assert (host.home / "clustertune" / "tune" / "search.py").exists()  # file_mounts synced
        assert (host.home / ".ray" / "auth_token").read_text() == token.read_text()
        assert (host.home / "ray_bootstrap_config.yaml").exists()

        t = time.monotonic()
        submit = _launcher(
            "submit",
            "--no-config-cache",
            cluster,
            str(REPO / "tune" / "search.py"),
            "--",
            # The head's address, not `auto`: `auto` may find another Ray on a shared machine.
            "--address",
            f"127.0.0.1:{gcs_port}",
            "--mlflow-uri",
            uri,
            "--smoke",
            "--num-samples",
            "2",
            "--storage-path",
            str(host.root / "results"),
            "--name",
            "ray-up",
        )
        seconds["ray submit"] = time.monotonic() - t
        assert submit.returncode == 0, submit.stdout[-5000:] + submit.stderr[-5000:]
        assert "Pareto front" in submit.stdout
        # The head runs with token authentication, from the file's .bashrc line and mounted token.
        gcs = [
            p
            for p in processes_of(set(), str(host.root / "ray"))
            if _cmd(p)[0].endswith(b"gcs_server")
        ]
        assert gcs and all(b"RAY_AUTH_MODE=token" in _environ(p) for p in gcs)
        parent, kids = search_runs(uri, "ray-up", "clustertune")
        assert parent.info.status == "FINISHED" and len(kids) == 2
        assert (host.home / "clustertune" / "mlflow" / "store" / "mlflow.db").exists()

        # The README's port forwards (`ray attach -p`, `ray dashboard`: ssh -L to the head's
        # loopback). Local and remote ports differ here, as head and laptop are one machine.
        t = time.monotonic()
        assert _through_tunnel(cluster, host, mlflow_port, "/health") == 200  # MLflow's UI
        # The dashboard runs only with ray[default] (the cluster files install it, the test's
        # venv may lack it: then there is nothing to reach).
        if dashboard_dependency_error() is None:
            assert _through_tunnel(cluster, host, dashboard_port, "/") is not None
        seconds["port forwards"] = time.monotonic() - t

        t = time.monotonic()
        down = _launcher("down", "-y", cluster, timeout=120)  # (it has no --no-config-cache)
        seconds["ray down"] = time.monotonic() - t
        assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
        assert "stopped this cluster's Ray only" in down.stdout + down.stderr
        time.sleep(1)
        assert processes_of(set(), str(host.root / "ray")) == []  # `ray down` stopped the head
    finally:
        stop = host.home / "clustertune" / "mlflow" / "server.sh"
        if (host.home / "mlflow.pid").exists():
            subprocess.run([str(stop), "--stop", "--pidfile", str(host.home / "mlflow.pid")])
        _forget_launcher_state(name)
        print(f"\nray up test timings (s): {seconds}")
    time.sleep(0.5)
    # Left now: sshd (the fixture stops it) and the launcher's ssh ControlMasters with their
    # relays, which linger 10 s by design (ControlPersist). No Ray, no MLflow, no shell.
    leftovers = [
        " ".join(a.decode() for a in _cmd(p))
        for p in processes_of(set(), str(host.root))
        if p != host.sshd.pid
    ]
    assert all(c.startswith("ssh ") or "proxy.py" in c for c in leftovers), leftovers


def _through_tunnel(cluster: str, host: SshHost, remote_port: int, path: str) -> int | None:
    """HTTP status of GET `path` on the head's 127.0.0.1:`remote_port`, through `ray dashboard
    --port LOCAL --remote-port REMOTE` (an ssh -L tunnel, like `ray attach -p`); None if none came."""
    local = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    tunnel = subprocess.Popen(
        [str(RAY), "dashboard", cluster, "--port", str(local), "--remote-port", str(remote_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the CLI and its ssh: one group to stop
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and tunnel.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}{path}", timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:  # an answer all the same (e.g. 401: token auth)
                return e.code
            except OSError:
                time.sleep(0.5)
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tunnel.pid, signal.SIGTERM)
        tunnel.wait(timeout=10)
        # The tunnel's remote side is `while true; do sleep 86400; done` in the private HOME.
        for pid in processes_of(set(), str(host.home)):
            if b"86400" in b"".join(_cmd(pid)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def _forget_launcher_state(cluster_name: str) -> None:
    """Remove what the launcher keeps on the client for this cluster (all named by it)."""
    tmp = Path(tempfile.gettempdir())
    for suffix in (".state", ".lock"):  # the on-prem provider's node list and its lock
        (tmp / "ray" / f"cluster-{cluster_name}{suffix}").unlink(missing_ok=True)
    for cache in tmp.glob("ray-config-*"):  # `ray down`'s config cache
        with contextlib.suppress(OSError):
            if f'"cluster_name": "{cluster_name}"' in cache.read_text():
                cache.unlink()
    # ssh ControlMaster sockets: /tmp/ray_ssh_<user hash>/<cluster hash>/ (command_runner.py)
    user = tmp / f"ray_ssh_{hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]}"
    shutil.rmtree(user / hashlib.sha256(cluster_name.encode()).hexdigest()[:10], ignore_errors=True)
    with contextlib.suppress(OSError):
        user.rmdir()  # only if no other cluster uses it


def _cmd(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") or [b""]
    except OSError:
        return [b""]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
