"""The README's pictures of what a user sees after a search, re-made after any change.

Runs a search into a temporary MLflow store (a smoke search unless told otherwise), then takes,
with headless Chromium (Debian's `chromium` package), screenshots of: the console at the end,
the MLflow runs view the search prints a link to, the search's parent run with its note, and
the winner's model version; and copies the search's Pareto and hypervolume plots.

    .venv/bin/python docs/screenshots.py                     # smoke search on digits (~2 min)
    .venv/bin/python docs/screenshots.py --search-args "--dataset fashion-mnist --num-samples 20"

Writes docs/images/*.png; exits 2 with one line when Chromium is missing.
"""

from __future__ import annotations

import argparse
import html
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "images"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoot(chrome: str, url: str, path: Path, size: tuple[int, int], wait_ms: int = 20000) -> None:
    """A screenshot of `url` once the page's scripts have had `wait_ms` of (virtual) time."""
    subprocess.run(
        [
            chrome,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    print(f"  {path.relative_to(REPO)}")


def console_page(command: str, text: str, path: Path) -> Path:
    """The console output as a terminal-like HTML page."""
    path.write_text(
        "<html><body style='margin:0;background:#1e1e1e'><pre style='color:#dcdcdc;"
        "font:13px DejaVu Sans Mono,monospace;padding:12px;margin:0'>"
        f"$ python tune/search.py {html.escape(command)}\n{html.escape(text)}</pre></body></html>"
    )
    return path


def wait_until_up(url: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the MLflow UI at {url} did not come up in {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--search-args", default="--smoke", help="flags for tune/search.py")
    args = p.parse_args(argv)
    chrome = browser()
    if chrome is None:
        print("error: no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shots") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp}/mlflow.db"
        command = [sys.executable, str(REPO / "tune" / "search.py"), *shlex.split(args.search_args)]
        command += ["--storage-path", str(tmp / "ray"), "--mlflow-uri", uri, "--name", "readme"]
        print("running:", shlex.join(command[1:]))
        search = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if search.returncode != 0:
            print(search.stdout[-3000:] + search.stderr[-3000:], file=sys.stderr)
            print(f"error: the search exited {search.returncode}", file=sys.stderr)
            return 1
        lines = search.stdout.splitlines()
        runs_url = next(x for x in lines if "best silhouette first:" in x).split(": ", 1)[1]
        parent_url = next(x for x in lines if "run and its note:" in x).split(": ", 1)[1]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        ui = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
            + ["--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp,
        )
        try:
            wait_until_up(base)
            local = "http://127.0.0.1:5000"
            print("writing:")
            page = console_page(args.search_args, search.stdout.rstrip(), tmp / "console.html")
            height = 40 + 17 * (search.stdout.count("\n") + 2)
            shoot(chrome, page.as_uri(), OUT / "console.png", (1400, height), wait_ms=1000)
            shoot(chrome, runs_url.replace(local, base), OUT / "mlflow_runs.png", (1600, 900))
            shoot(chrome, parent_url.replace(local, base), OUT / "parent_note.png", (1600, 1400))
            shoot(chrome, f"{base}/#/models/clustertune", OUT / "model.png", (1600, 700))
        finally:
            ui.terminate()
            ui.wait(30)
        for name in ("pareto_front.png", "hypervolume.png"):
            found = sorted((tmp / "artifacts").rglob(name))
            if found:
                shutil.copy(found[0], OUT / name)
                print(f"  {(OUT / name).relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
