"""Core benchmark: clustertune's hot paths against the plain PyTorch / scikit-learn way of doing them.

    .venv/bin/python bench/bench_core.py [--quick] [--only NAME ...]
        [--ref-abo-epochs N] [--wait-quiet SECONDS] [--no-write]

Run on demand, never as a timed test. Every comparison is measured in the same run against its
reference, on this machine; the script prints a table and APPENDS a dated section (machine, versions,
git commit, mode, load average) to bench/RESULTS.md.

Sections (NAME for --only):
  silhouette  exact silhouette of two labelings of a 60,000 x 64 float32 embedding:
              `tune.metrics.silhouette_scores` (both labelings in one call) vs
              `sklearn.metrics.silhouette_score` once per labeling. Target >= 10x.
  abo         the first document's ABO_clusterer (k=10, 200 epochs, batch 32, lr 0.1, T=1) on a
              60,000 x 64 embedding: `models.abo.ABOClusterer` (numba) vs `models.abo.reference_fit`
              (plain autograd loop). The reference is timed over a few epochs and extrapolated
              linearly (labelled in the table); ours runs all 200. Also the max abs difference of
              the centres after 40 Adam steps from the same seed. Target >= 10x.
  ae_epoch    one autoencoder training epoch on 60,000 28x28 images, MLP (doc1) and conv (doc2)
              configs at batch 32 and 256: `tune.training.train_autoencoder` (one tensor on the
              device, index slices, flat-buffer fused Adam) vs DataLoader(shuffle=True) +
              torch.optim.Adam(model.parameters()) + zero_grad/backward/step.
  trial       a whole first-document trial on Fashion-MNIST (60k train / 10k test):
              `tune.trial.run_trial` with the doc1 config of search_spaces/seeds.yaml vs a plain
              implementation of the same steps written below (DataLoader AE training, reference_fit
              ABO, sklearn KMeans(n_init=10), sklearn silhouette/DB/CH per labeling per split).
              Ours runs before the reference and after each of its long stages (AE, ABO,
              metrics), and its times are the mean of those 4 runs, so both pipelines are timed
              over the same stretch of a shared machine's slow and fast spells.
              Per-stage times, total ratio (target >= 8x), and both pipelines' test metrics next
              to the document's reported figures.

--quick shrinks everything (6,000 points, a few epochs) so the whole script runs in about a minute;
use it to check the script works, not for numbers. Timings use time.perf_counter after a warm-up;
the one-off numba compile time is reported separately. CUDA is used when present (the code under
test picks it itself; the references use the same device for the autoencoder).

Shared machines: before each measurement the script waits (up to --wait-quiet seconds) until other
processes leave the CPUs, and the table's "others' load" column records how many cores other
processes kept busy while ours / the reference ran (from /proc/stat). Anything well above 0 means
that row's timings are disturbed: on 2 cores a competing process can slow torch's small-op loops
far more than 2x (OpenMP threads spin while their core is taken).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `tune` and `models` importable
    sys.path.insert(0, str(ROOT))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import sklearn  # noqa: E402
import torch  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from models import abo  # noqa: E402
from models.build import build_autoencoder  # noqa: E402
from tune import names as N  # noqa: E402
from tune.config import TrialConfig  # noqa: E402
from tune.data import DEBIAN_FASHION_MNIST_DIR, DatasetError, load_dataset  # noqa: E402
from tune.metrics import silhouette_scores  # noqa: E402
from tune.provenance import cpu_model, git_commit  # noqa: E402
from tune.space import load_space  # noqa: E402
from tune.training import images_to_tensor, pick_device, train_autoencoder  # noqa: E402
from tune.trial import run_trial  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTIONS = ("silhouette", "abo", "ae_epoch", "trial")
# The first document's reported test figures (MNIST): silhouette / Davies-Bouldin / Calinski-Harabasz.
DOC1_TEST = {"abo": (0.0871, 2.5693, 458.5), "kmeans": (0.0949, 2.5091, 499.0)}


@dataclasses.dataclass
class Mode:
    """Problem sizes for one run of the benchmark."""

    name: str
    n: int  # rows of the synthetic embeddings (silhouette, abo) and images per AE epoch
    abo_epochs: int  # ABO epochs for ours in the abo section
    abo_ref_epochs: int  # ABO epochs actually timed for the reference (then extrapolated)
    trial_train: int | None  # train images in the trial (None: all 60,000)
    trial_test: int | None
    trial_ae_epochs: int | None  # None: the config's 20
    trial_abo_epochs: int | None  # None: the config's 200


FULL = Mode("full", 60_000, 200, 5, None, None, None, None)
QUICK = Mode("quick", 6_000, 20, 2, 6_000, 1_000, 2, 20)


# --------------------------------------------------------------------------- helpers


def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process), from /proc; None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy, int(own[11]) + int(own[12])  # utime + stime, all threads
    except (OSError, IndexError, ValueError):
        return None


class OtherLoad:
    """Average number of cores other processes kept busy between start() and stop()."""

    def __init__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), _cpu_ticks()

    def stop(self) -> float:
        c1, wall = _cpu_ticks(), time.perf_counter() - self.t0
        if self.c0 is None or c1 is None or wall <= 0:
            return math.nan
        return max(0.0, ((c1[0] - self.c0[0]) - (c1[1] - self.c0[1])) / _TICK / wall)


# Other processes' load during every measurement of >= 1 s, for the summary (/proc/stat counts in
# 10 ms ticks, so a shorter call's load is mostly quantisation noise).
LOADS: list[float] = []
QUIET = {"max_wait": 300.0, "threshold": 0.25, "waited": 0.0}  # set from --wait-quiet in main()


def wait_quiet() -> None:
    """Before a measurement, wait (up to QUIET["max_wait"] s) until other processes leave the CPUs.

    On a shared machine a second CPU-bound process does not just halve our speed: torch's OpenMP
    threads spin at barriers while their core is taken, which can slow tiny-op loops tenfold.
    """
    deadline = time.perf_counter() + QUIET["max_wait"]
    t0, announced = time.perf_counter(), False
    while time.perf_counter() < deadline:
        meter = OtherLoad()
        time.sleep(2.0)
        load = meter.stop()
        if not math.isfinite(load) or load < QUIET["threshold"]:
            break
        if not announced:
            log(f"  waiting for a quiet machine (other processes use {load:.1f} cores)")
            announced = True
    QUIET["waited"] += time.perf_counter() - t0


def timed(fn: Callable[[], Any], loads: list[float] | None = None) -> tuple[float, Any]:
    """(seconds, result) of fn(), CUDA-synchronised on both sides; appends others' load to `loads`."""
    if QUIET["max_wait"] > 0:
        wait_quiet()
    sync()
    meter = OtherLoad()
    t0 = time.perf_counter()
    out = fn()
    sync()
    elapsed = time.perf_counter() - t0
    load = meter.stop()
    if elapsed >= 1.0:
        LOADS.append(load)
    if loads is not None:
        loads.append(load)
    return elapsed, out


def fmt_s(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    return f"{s:.3g}" if s < 100 else f"{s:.0f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None or not math.isfinite(r) else f"{r:.1f}x"


def fmt_load(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.2f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in rows]
    )


class Row:
    """One line of the main table: ours vs reference."""

    def __init__(
        self,
        section: str,
        case: str,
        ours: float,
        ref: float,
        target: float | None = None,
        note: str = "",
        load: tuple[float, ...] | None = None,
    ) -> None:
        self.section, self.case, self.ours, self.ref, self.target, self.note = (
            section,
            case,
            ours,
            ref,
            target,
            note,
        )
        self.load = load  # other processes' average CPU load (cores) while ours / the reference ran

    @property
    def ratio(self) -> float:
        return self.ref / self.ours if self.ours > 0 else math.nan

    def cells(self) -> list[str]:
        verdict = "-"
        if self.target is not None:
            verdict = f">= {self.target:g}x: " + ("met" if self.ratio >= self.target else "NOT met")
        load = "-" if self.load is None else " / ".join(fmt_load(v) for v in self.load)
        return [
            self.section,
            self.case,
            fmt_s(self.ours),
            fmt_s(self.ref),
            fmt_ratio(self.ratio),
            verdict,
            load,
            self.note,
        ]


HEADER = ["section", "case", "ours (s)", "reference (s)", "ratio", "target", "others' load", "note"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- machine description


def ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine_lines() -> list[str]:
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), RAM {ram_gib()}",
        f"- CUDA device: {cuda}",
        f"- Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numba {numba.__version__}, scikit-learn {sklearn.__version__}, numpy {np.__version__}",
        f"- git commit: {git_commit()}",
    ]


def loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --------------------------------------------------------------------------- data


def blobs(n: int, d: int = 64, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A clustered float32 embedding (overlapping Gaussian blobs) and its generating labels."""
    X, y = make_blobs(
        n_samples=n, n_features=d, centers=k, cluster_std=4.0, center_box=(-5, 5), random_state=seed
    )
    return X.astype(np.float32), y.astype(np.int64)


def fashion_mnist(val_fraction: float = 0.0):
    """Fashion-MNIST as a tune.data.Dataset (60k train / 10k test), or None if it is not installed."""
    try:
        return load_dataset("fashion-mnist", val_fraction=val_fraction, download=False)
    except DatasetError as e:
        log(f"Fashion-MNIST not available ({e})")
        log(
            f"install it with:  apt-get install dataset-fashion-mnist   (files land in {DEBIAN_FASHION_MNIST_DIR})"
        )
        return None


def doc_config(index: int) -> dict[str, Any]:
    """doc1 (index 0, MLP) or doc2 (index 1, conv) config from search_spaces/seeds.yaml, seed 0."""
    return {**load_space("seeds").points[index], "seed": 0}


# --------------------------------------------------------------------------- 1. silhouette


def bench_silhouette(mode: Mode) -> tuple[list[Row], list[str]]:
    n = mode.n
    X, la = blobs(n)
    # Second labeling: nearest of 10 random data points (a Voronoi partition that cuts across the
    # blobs), so the joint (labeling 1, labeling 2) cells are many: no shortcut from agreement.
    rng = np.random.default_rng(1)
    lb = abo.nearest_centre(X, X[rng.choice(n, 10, replace=False)])
    cells = len(np.unique(la * 10 + lb))
    device = pick_device()
    log(
        f"silhouette: n={n}, d=64, two labelings (k=10, k={len(np.unique(lb))}, {cells} joint cells), device {device}"
    )

    w = min(n, 2000)  # warm-up on a slice
    silhouette_scores(X[:w], [la[:w], lb[:w]])
    silhouette_score(X[:w], la[:w])

    lo, lr_ = [], []
    t_ours, ours = timed(lambda: silhouette_scores(X, [la, lb]), lo)
    log(f"  ours (one call, both labelings): {t_ours:.2f} s  {ours}")
    t_a, ref_a = timed(lambda: silhouette_score(X, la), lr_)
    t_b, ref_b = timed(lambda: silhouette_score(X, lb), lr_)
    t_ref = t_a + t_b
    log(f"  sklearn: {t_a:.2f} s + {t_b:.2f} s  {[ref_a, ref_b]}")
    diff = max(abs(ours[0] - ref_a), abs(ours[1] - ref_b))
    note = (
        f"{n:,}x64, {cells} joint cells; sklearn {t_a:.1f} s + {t_b:.1f} s (load: ours / each sklearn "
        f"call); max abs diff {diff:.1e} (scores {ref_a:.4f}, {ref_b:.4f})"
    )
    return [
        Row("silhouette", f"2 labelings, {device.type}", t_ours, t_ref, 10, note, (lo[0], *lr_))
    ], []


# --------------------------------------------------------------------------- 2. abo


def bench_abo(mode: Mode) -> tuple[list[Row], list[str]]:
    n, epochs, ref_epochs = mode.n, mode.abo_epochs, mode.abo_ref_epochs
    X, _ = blobs(n, seed=2)
    params = dict(n_clusters=10, lr=0.1, batch_size=32, temperature=1.0, random_state=0)
    log(
        f"abo: n={n}, k=10, batch 32, lr 0.1, T=1; ours {epochs} epochs, reference {ref_epochs} measured"
    )

    # One-off numba costs: a cold compile of the same kernel (no cache), and the first call of the
    # module's cached kernel in this process (loaded from models/__pycache__ when present).
    tiny = X[:256]
    cold = numba.njit(cache=False, nogil=True, fastmath=True)(abo._abo_epoch.py_func)
    C0 = tiny[:10].astype(np.float64)
    t_compile, _ = timed(
        lambda: cold(
            tiny,
            np.arange(256),
            C0.copy(),
            np.zeros_like(C0),
            np.zeros_like(C0),
            0,
            0.1,
            1.0,
            32,
            10**9,
        )
    )
    hits0 = sum(abo._abo_epoch.stats.cache_hits.values())
    t_first, _ = timed(lambda: abo.ABOClusterer(epochs=1, **params).fit(tiny))
    hit = sum(abo._abo_epoch.stats.cache_hits.values()) > hits0
    log(
        f"  numba cold compile {t_compile:.2f} s; first call in process {t_first:.2f} s (disk cache hit: {hit})"
    )
    abo.reference_fit(X[:3200], epochs=1, **params)  # warm-up of the autograd path

    lo, lr_ = [], []
    t_ours, est = timed(lambda: abo.ABOClusterer(epochs=epochs, **params).fit(X), lo)
    log(f"  ours {epochs} epochs: {t_ours:.2f} s ({est.n_iter_} steps)")
    t_ref_meas, _ = timed(lambda: abo.reference_fit(X, epochs=ref_epochs, **params), lr_)
    factor = epochs / ref_epochs
    t_ref = t_ref_meas * factor
    log(f"  reference {ref_epochs} epochs: {t_ref_meas:.2f} s -> x{factor:g} = {t_ref:.1f} s")

    steps = 40
    ours40 = abo.ABOClusterer(epochs=1, max_steps=steps, **params).fit(X).cluster_centers_
    ref40, _ = abo.reference_fit(X, epochs=1, max_steps=steps, **params)
    ref40_64, _ = abo.reference_fit(X, epochs=1, max_steps=steps, dtype=torch.float64, **params)
    d32 = float(np.abs(ours40 - ref40).max())
    d64 = float(np.abs(ours40.astype(np.float64) - ref40_64).max())
    scale = float(np.abs(ref40).max())
    log(
        f"  centres after {steps} steps: max abs diff {d32:.2e} (float32 ref), {d64:.2e} (float64 ref); |c|max {scale:.2f}"
    )
    note = (
        f"{n:,}x64; reference: {ref_epochs} epochs measured ({t_ref_meas:.1f} s), x{factor:g}; "
        f"centres after {steps} steps: max abs diff {d32:.1e} vs float32 ref, {d64:.1e} vs float64 ref"
    )
    rows = [Row("abo", f"{epochs} epochs, batch 32", t_ours, t_ref, 10, note, (lo[0], lr_[0]))]
    extra = [
        f"- abo: numba one-off costs (not in the table): cold compile of `_abo_epoch` {t_compile:.2f} s; "
        f"first call in this process {t_first:.2f} s (on-disk cache hit: {hit})."
    ]
    return rows, extra


# --------------------------------------------------------------------------- 3. ae_epoch


def reference_train(
    model: nn.Module, x_cpu: torch.Tensor, device, *, lr, weight_decay, batch_size, epochs, seed
) -> list[float]:
    """The source documents' loop: DataLoader(shuffle=True), Adam(model.parameters()), MSELoss."""
    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(x_cpu), batch_size=batch_size, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    criterion = nn.MSELoss()
    model.train()
    history = []
    for _ in range(epochs):
        running = 0.0
        for (xb,) in loader:
            xb = xb.to(device)
            loss = criterion(model(xb), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item() * len(xb)
        history.append(running / len(x_cpu))
    model.eval()
    return history


def ae_images(n: int) -> np.ndarray:
    ds = fashion_mnist()
    if ds is not None:
        return ds.x_train[:n]
    return np.random.default_rng(0).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def fresh_model(cfg: TrialConfig, device) -> nn.Module:
    torch.manual_seed(0)
    return build_autoencoder(cfg.autoencoder, (28, 28)).to(device)


def bench_ae_epoch(mode: Mode) -> tuple[list[Row], list[str]]:
    device = pick_device()
    images = ae_images(mode.n)
    x_dev = images_to_tensor(images, device)
    x_cpu = images_to_tensor(images, "cpu")
    log(f"ae_epoch: {len(images):,} images, device {device}")
    rows = []
    for label, flat in (("mlp (doc1)", doc_config(0)), ("conv (doc2)", doc_config(1))):
        cfg = TrialConfig.from_flat(flat)
        for bs in (32, 256):
            kw = dict(
                lr=cfg.training.lr, weight_decay=cfg.training.weight_decay, batch_size=bs, seed=0
            )

            warm = bs * 20  # ~20 steps of each path before timing
            train_autoencoder(fresh_model(cfg, device), x_dev[:warm], None, epochs=1, **kw)
            reference_train(fresh_model(cfg, device), x_cpu[:warm], device, epochs=1, **kw)
            m_ours, m_ref = fresh_model(cfg, device), fresh_model(cfg, device)
            ld: list[float] = []
            t_ours, h_ours = timed(
                lambda m=m_ours, kw=kw: train_autoencoder(m, x_dev, None, epochs=1, **kw), ld
            )
            t_ref, h_ref = timed(
                lambda m=m_ref, kw=kw: reference_train(m, x_cpu, device, epochs=1, **kw), ld
            )
            note = f"loss after 1 epoch: ours {h_ours[-1]['train_loss']:.4f}, ref {h_ref[-1]:.4f}"
            log(f"  {label} batch {bs}: ours {t_ours:.2f} s, ref {t_ref:.2f} s ({note})")
            rows.append(
                Row("ae_epoch", f"{label}, batch {bs}", t_ours, t_ref, None, note, (ld[0], ld[1]))
            )
    return rows, []


# --------------------------------------------------------------------------- 4. trial


STAGES = ("setup", "AE train", "embed", "recon loss", "ABO", "KMeans", "metrics")


class StageTimer:
    """Accumulates wall time, and other processes' CPU use, per stage.

    A gated call first waits for a quiet machine (see wait_quiet); the wait is not timed, and is
    summed in `waited` so a caller timing a whole pipeline can take it out.
    """

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.others: dict[str, float] = defaultdict(float)  # core-seconds used by other processes
        self.waited = 0.0

    def wrap(self, stage: str, fn: Callable, gate: bool = False) -> Callable:
        def inner(*a, **k):
            if gate and QUIET["max_wait"] > 0:
                w0 = time.perf_counter()
                wait_quiet()
                self.waited += time.perf_counter() - w0
            sync()
            meter = OtherLoad()
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync()
                elapsed = time.perf_counter() - t0
                self.t[stage] += elapsed
                self.others[stage] += meter.stop() * elapsed

        return inner

    def run(self, stage: str, fn: Callable[[], Any], gate: bool = False) -> Any:
        return self.wrap(stage, fn, gate)()

    def load(self, stage: str | None = None) -> float:
        """Average cores used by other processes during `stage` (None: all stages)."""
        keys = [stage] if stage else list(self.t)
        wall = sum(self.t[k] for k in keys)
        return sum(self.others[k] for k in keys) / wall if wall > 0 else math.nan


# The trial's own stage timings (time/<stage>_s in its result) under this table's stage names;
# ours measures the reconstruction losses inside "embed".
OUR_STAGES = {
    "pretrain": "AE train",
    "embed": "embed",
    "abo": "ABO",
    "kmeans": "KMeans",
    "metrics": "metrics",
}


def run_ours(config: dict[str, Any], dataset) -> tuple[dict[str, Any], StageTimer, float]:
    """tune.trial.run_trial as it runs in a search; its stage times come from its own result."""
    timer = StageTimer()
    if QUIET["max_wait"] > 0:
        wait_quiet()
    sync()
    meter = OtherLoad()
    t0 = time.perf_counter()
    result = run_trial(config, dataset)
    sync()
    total = time.perf_counter() - t0
    load = meter.stop()
    for stage, label in OUR_STAGES.items():
        timer.t[label] = float(result.get(N.stage_seconds(stage), 0.0))
        timer.others[label] = load * timer.t[label]
    timer.t["recon loss"] = 0.0
    timer.t["setup"] = total - sum(timer.t.values())  # model build, tensors, bookkeeping
    return result, timer, total


def mean_of_runs(
    runs: list[tuple[dict[str, Any], StageTimer, float]],
) -> tuple[dict[str, Any], StageTimer, float]:
    """Ours over several runs: the first run's result (a seeded trial gives the same one each
    time), each stage's mean time and others' load, and the mean total."""
    timer = StageTimer()
    for _, st, _ in runs:
        for stage in st.t:
            timer.t[stage] += st.t[stage] / len(runs)
            timer.others[stage] += st.others[stage] / len(runs)
    return runs[0][0], timer, sum(t for _, _, t in runs) / len(runs)


def run_reference(
    config: dict[str, Any],
    dataset,
    ref_abo_epochs: int | None,
    between: Callable[[], None] = lambda: None,
) -> tuple[dict[str, Any], StageTimer, float, str]:
    """The same trial written the plain way: DataLoader training, autograd ABO, sklearn everything.

    `between()` runs (untimed) after the AE training, after ABO and at the end: bench_trial runs
    ours there, so both pipelines are sampled across the same stretch of the machine's time."""
    timer = StageTimer()
    device = pick_device()
    cfg = TrialConfig.from_flat(config)
    seed, bs, c = cfg.seed, cfg.training.batch_size, cfg.clustering
    out: dict[str, Any] = {}

    def setup():
        torch.manual_seed(seed)
        np.random.seed(seed)
        model = build_autoencoder(cfg.autoencoder, dataset.image_shape).to(device)
        xs = {"train": images_to_tensor(dataset.x_train), "test": images_to_tensor(dataset.x_test)}
        return model, xs

    model, xs = timer.run("setup", setup)
    timer.run(
        "AE train",
        lambda: reference_train(
            model,
            xs["train"],
            device,
            lr=cfg.training.lr,
            weight_decay=cfg.training.weight_decay,
            batch_size=bs,
            epochs=cfg.training.epochs,
            seed=seed,
        ),
        gate=True,
    )
    between()

    @torch.no_grad()
    def embed(x):
        model.eval()
        return torch.cat(
            [
                model.encode(xb.to(device)).cpu()
                for (xb,) in DataLoader(TensorDataset(x), batch_size=bs)
            ]
        ).numpy()

    @torch.no_grad()
    def recon(x):
        model.eval()
        crit = nn.MSELoss(reduction="sum")
        total = sum(
            crit(model(xb.to(device)), xb.to(device)).item()
            for (xb,) in DataLoader(TensorDataset(x), batch_size=bs)
        )
        return total / x.numel()

    z = timer.run("embed", lambda: {s: embed(x) for s, x in xs.items()})
    for s, x in xs.items():
        out[f"{s}/recon_loss"] = timer.run("recon loss", lambda x=x: recon(x))

    epochs = c.abo_epochs
    ref_epochs = ref_abo_epochs if ref_abo_epochs else epochs
    abo_kw = dict(
        n_clusters=c.n_clusters,
        lr=c.abo_lr,
        batch_size=c.abo_batch_size,
        temperature=c.abo_temperature,
        init=c.abo_init,
        random_state=seed,
    )
    centres, _ = timer.run(
        "ABO", lambda: abo.reference_fit(z["train"], epochs=ref_epochs, **abo_kw), gate=True
    )
    timer.t["ABO"] *= epochs / ref_epochs  # extrapolated to all epochs when only some were run
    timer.others["ABO"] *= epochs / ref_epochs
    abo_note = (
        f"{ref_epochs} epochs measured"
        if ref_epochs == epochs
        else f"{ref_epochs} epochs measured, x{epochs / ref_epochs:g}"
    )

    @torch.no_grad()
    def abo_labels(zs):  # the document's label rule: argmax of the soft assignment
        net = abo.ABONet(torch.from_numpy(centres), c.abo_temperature)
        return torch.cat(
            [
                net(torch.from_numpy(c))[1].argmax(1)
                for c in np.array_split(zs, max(1, len(zs) // 4096))
            ]
        ).numpy()

    abo_lab = timer.run("ABO", lambda: {s: abo_labels(zz) for s, zz in z.items()})
    between()

    def kmeans():
        km = KMeans(n_clusters=c.n_clusters, n_init=c.kmeans_n_init, random_state=seed)
        km.fit(z["train"])
        return {"train": km.labels_, "test": km.predict(z["test"])}

    km_lab = timer.run("KMeans", kmeans, gate=True)
    labels = {"abo": abo_lab, "kmeans": km_lab}
    y = {"train": dataset.y_train, "test": dataset.y_test}

    def metrics():
        for s in ("train", "test"):
            for name in ("abo", "kmeans"):
                lab = labels[name][s]
                out[f"{s}/{name}/silhouette"] = silhouette_score(z[s], lab)
                out[f"{s}/{name}/davies_bouldin"] = davies_bouldin_score(z[s], lab)
                out[f"{s}/{name}/calinski_harabasz"] = calinski_harabasz_score(z[s], lab)
                out[f"{s}/{name}/nmi"] = normalized_mutual_info_score(y[s], lab)

    timer.run("metrics", metrics, gate=True)
    between()
    return out, timer, sum(timer.t.values()), abo_note


def bench_trial(mode: Mode, ref_abo_epochs: int | None) -> tuple[list[Row], list[str]]:
    dataset = fashion_mnist(val_fraction=0.0)
    if dataset is None:
        log("trial: skipped (no Fashion-MNIST)")
        return [], [
            "- trial: skipped, Fashion-MNIST not installed (`apt-get install dataset-fashion-mnist`)."
        ]
    if mode.trial_train is not None:
        dataset = dataclasses.replace(
            dataset,
            x_train=dataset.x_train[: mode.trial_train],
            y_train=dataset.y_train[: mode.trial_train],
            x_test=dataset.x_test[: mode.trial_test],
            y_test=dataset.y_test[: mode.trial_test],
        )
    config = doc_config(0)
    if mode.trial_ae_epochs is not None:
        config["epochs"] = mode.trial_ae_epochs
    if mode.trial_abo_epochs is not None:
        config["abo_epochs"] = mode.trial_abo_epochs
    if ref_abo_epochs is not None and ref_abo_epochs >= config["abo_epochs"]:
        ref_abo_epochs = None
    log(
        f"trial: {dataset.name} {len(dataset.x_train):,} train / {len(dataset.x_test):,} test, "
        f"AE {config['epochs']} epochs batch {config['batch_size']}, ABO {config['abo_epochs']} epochs, device {pick_device()}"
    )
    # One-off costs (numba's kernel load, torch's first GEMMs and allocations, a first epoch
    # about twice a later one's) are paid here by both pipelines, on a small slice, so that no
    # timed run below carries them.
    small = dataclasses.replace(
        dataset,
        x_train=dataset.x_train[:2048],
        y_train=dataset.y_train[:2048],
        x_test=dataset.x_test[:512],
        y_test=dataset.y_test[:512],
    )
    warm = {**config, "epochs": 1, "abo_epochs": 2}
    run_trial(warm, small)
    run_reference(warm, small, None)

    # This VM has slow spells (2-3x for tens of seconds) that /proc/stat does not show as other
    # processes' load; ours (under a minute) could fall wholly inside or outside one while the
    # reference (minutes) averages over them. So ours runs before the reference and after each of
    # its three long stages, and its time is the mean of those runs: both sample the same stretch.
    runs: list[tuple[dict[str, Any], StageTimer, float]] = []

    def ours_once() -> None:
        runs.append(run_ours(config, dataset))
        log(
            f"  ours, run {len(runs)}: {runs[-1][2]:.1f} s  "
            + ", ".join(f"{k} {v:.1f}" for k, v in runs[-1][1].t.items())
        )

    ours_once()
    ref, st_ref, t_ref, abo_note = run_reference(config, dataset, ref_abo_epochs, ours_once)
    ours, st_ours, t_ours = mean_of_runs(runs)
    log(f"  ours: {t_ours:.1f} s, mean of {len(runs)} runs")
    log(
        f"  reference: {t_ref:.1f} s  "
        + ", ".join(f"{k} {v:.1f}" for k, v in st_ref.t.items())
        + f" (ABO: {abo_note})"
    )
    for timer in (st_ours, st_ref):
        LOADS.extend(timer.load(s) for s in timer.t if s != "setup" and timer.t[s] >= 1.0)

    totals = [t for _, _, t in runs]
    note = (
        f"AE {config['epochs']} ep, ABO {config['abo_epochs']} ep; reference ABO: {abo_note}; "
        f"ours: mean of {len(runs)} runs ({min(totals):.1f}-{max(totals):.1f} s)"
    )
    load_ours = sum(st_ours.others.values()) / max(t_ours - st_ours.t["setup"], 1e-9)
    rows = [
        Row(
            "trial",
            f"doc1 on {dataset.name}, total",
            t_ours,
            t_ref,
            8,
            note,
            (load_ours, st_ref.load()),
        )
    ]
    rows += [
        Row(
            "trial",
            f"  stage: {s}",
            st_ours.t.get(s, 0.0),
            st_ref.t.get(s, 0.0),
            None,
            abo_note if s == "ABO" else "",
            (math.nan if s == "setup" else st_ours.load(s), st_ref.load(s)),
        )
        for s in STAGES
    ]

    metric_rows = []
    for name in ("abo", "kmeans"):
        for i, m in enumerate(("silhouette", "davies_bouldin", "calinski_harabasz")):
            key = f"test/{name}/{m}"
            metric_rows.append(
                [name, m, f"{ours[key]:.4g}", f"{ref[key]:.4g}", f"{DOC1_TEST[name][i]:.4g}"]
            )
        key = f"test/{name}/nmi"
        metric_rows.append([name, "nmi (labels)", f"{ours[key]:.4g}", f"{ref[key]:.4g}", "-"])
    metric_rows.append(
        [
            "-",
            "recon loss (test MSE)",
            f"{ours['test/recon_loss']:.4g}",
            f"{ref['test/recon_loss']:.4g}",
            "-",
        ]
    )
    table = md_table(["clusterer", "test metric", "ours", "reference", "doc1 (MNIST)"], metric_rows)
    print(
        "\nTrial sanity check: final test metrics (ours and reference on Fashion-MNIST; doc1 on MNIST)\n"
        + table
        + "\n"
    )
    extra = [
        "",
        f"Trial sanity check: test metrics of both pipelines on {dataset.name} ({len(dataset.x_test):,} test images), "
        "next to the first document's reported test figures (which were on MNIST, not Fashion-MNIST). "
        "The pipelines share the config and seed but not their random streams (DataLoader vs generator "
        "shuffles), so their numbers agree in kind, not digit for digit."
        + (
            ""
            if ref_abo_epochs is None
            else f" The reference ABO centres come from only {ref_abo_epochs} epochs."
        ),
        "",
        table,
    ]
    return rows, extra


# --------------------------------------------------------------------------- main


def disturbance_note() -> str:
    """How busy other processes kept the machine during the timed calls (the table's 'others' load')."""
    loads = [v for v in LOADS if math.isfinite(v)]
    if not loads:
        return "others' load: not measured"
    peak = max(loads)
    text = (
        f"'others' load' = average number of cores kept busy by OTHER processes while ours / the reference ran "
        f"(from /proc/stat minus this process); peak {peak:.2f} over all measurements of >= 1 s"
    )
    if QUIET["waited"] >= 1:
        text += f"; waited {QUIET['waited']:.0f} s in all for a quiet machine before measurements"
    if peak > 0.25:
        text += f" -- WARNING: the machine was shared (up to {peak:.1f} of {os.cpu_count()} cores), timings are disturbed"
    return text


def append_results(
    mode: Mode,
    args: argparse.Namespace,
    rows: list[Row],
    extra: list[str],
    started: str,
    load0: str,
    wall: float,
) -> None:
    lines = [
        "",
        f"## {started} — bench_core.py, {mode.name} mode",
        "",
        f"Command: `.venv/bin/python bench/bench_core.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" (sections: {', '.join(args.only)})",
        "",
        *machine_lines(),
        f"- load average (1/5/15 min) at start {load0}, at end {loadavg()}; whole run {wall / 60:.1f} min",
        f"- {disturbance_note()}",
        "",
        md_table(HEADER, [r.cells() for r in rows]),
        "",
        *extra,
        "",
    ]
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nEach section is appended by `bench/bench_core.py` (see its docstring); "
            "ratio = reference time / our time, measured in the same run.\n"
        )
    with RESULTS.open("a") as f:
        f.write("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, ~1 minute: checks the script works"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        metavar="NAME",
        help=f"sections to run: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--ref-abo-epochs",
        type=int,
        default=None,
        help="trial: time the reference ABO over this many epochs and extrapolate (default: all of them)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="before each measurement wait up to this long for other processes to leave the CPUs "
        "(default 300; 0 = never wait)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not append to bench/RESULTS.md"
    )
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    QUIET["max_wait"] = args.wait_quiet
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load0 = loadavg()
    t0 = time.perf_counter()
    print("\n".join(machine_lines()) + f"\n- mode: {mode.name}; load average {load0}\n", flush=True)

    rows: list[Row] = []
    extra: list[str] = []
    runners = {
        "silhouette": lambda: bench_silhouette(mode),
        "abo": lambda: bench_abo(mode),
        "ae_epoch": lambda: bench_ae_epoch(mode),
        "trial": lambda: bench_trial(mode, args.ref_abo_epochs),
    }
    for name in SECTIONS:
        if name in args.only:
            r, e = runners[name]()
            rows += r
            extra += e
    wall = time.perf_counter() - t0
    print("\n" + md_table(HEADER, [r.cells() for r in rows]))
    for line in extra:
        if line.startswith("- "):
            print(line)
    print(f"\nload average at end {loadavg()}; whole run {wall / 60:.1f} min\n{disturbance_note()}")
    if not args.no_write:
        append_results(mode, args, rows, extra, started, load0, wall)
        print(f"appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
