"""What the clustering stages buy and cost: fine-tuning (abo, dec) and reduction (PCA, UMAP).

    .venv/bin/python bench/bench_stages.py [--dataset fashion-mnist|digits] [--only table cost]
        [--threads N] [--no-write]

Run on demand, never as a timed test. Appends a dated section to bench/RESULTS.md. Torch runs
one thread unless --threads says otherwise, as a trial of the default search does (1 CPU each).

  table  The stages against the published anchors on the data we have, same split and seed,
         one run each: the two documents' configurations (search_spaces/seeds.yaml), then one
         autoencoder (BASE below) pre-trained once and followed by each stage: AE + KMeans, +abo,
         +dec, +umap, +dec+umap. The stage variants reuse the pre-trained weights through the
         trial's own resume path (a checkpoint taken after the last pre-training epoch), which
         tests/test_finetune.py shows gives exactly the result of a run from scratch. Columns:
         validation silhouette in the space the clusterer saw (the objective) and in the latent
         space, validation reconstruction loss (the other objective), test NMI and accuracy
         (reported only, never used to select), and the stage seconds. The published MNIST
         figures (NOTES.md section 6) are quoted beside them for scale, not re-run.
  cost   Seconds per epoch of the fine-tuning stage against a pre-training epoch of the same
         network at the same batch size, measured in one process with their epochs interleaved
         (target: at most 1.5x), for the first document's MLP and the second's conv network;
         for dec also the part of it spent refreshing the target, and for the MLP the same
         stage forced onto autograd (`finetune(..., closed_form=False)`), what the
         closed-form step replaces; and
         UMAP's one-off cost per worker process: `import umap`, then the first fit + transform
         (numba compiles) against a second one on the same codes, in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `tune` and `models` importable
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_core import RESULTS, OtherLoad, loadavg, machine_lines, md_table  # noqa: E402
from explore_frontier import CLUSTERING  # noqa: E402 - one cheap clustering for explorations

from tune import names as N  # noqa: E402
from tune.config import Clustering, Finetune, TrialConfig  # noqa: E402
from tune.data import load_dataset  # noqa: E402
from tune.finetune import finetune, initial_centers  # noqa: E402
from tune.mlp_step import MLPStep  # noqa: E402
from tune.space import load_space  # noqa: E402
from tune.training import embed, images_to_tensor, train_autoencoder  # noqa: E402
from tune.trial import run_trial  # noqa: E402

# One good autoencoder per data set: a conv net with a 48-d code beats the documents'
# reconstruction on Fashion-MNIST; digits (8x8) gets a small MLP.
BASE = {
    "fashion-mnist": {
        "arch": "conv",
        "conv_depth": 2,
        "conv_channels_1": 16,
        "conv_channels_2": 16,
        "latent_dim": 48,
        "dropout": 0.0,
        "lr": 0.002,
        "weight_decay": 0.0,
        "batch_size": 64,
        "epochs": 12,
    },
    "digits": {
        "arch": "mlp",
        "mlp_depth": 1,
        "mlp_width_1": 64,
        "mlp_activation": "relu",
        "mlp_batch_norm": False,
        "latent_dim": 16,
        "dropout": 0.0,
        "lr": 0.003,
        "weight_decay": 0.0,
        "batch_size": 32,
        "epochs": 30,
    },
}
FT = {"finetune_epochs": 4, "finetune_lr": 5e-4, "finetune_batch_size": 256, "finetune_gamma": 0.1}
ABO = {
    "finetune": "abo",
    **FT,
    "finetune_gamma": 0.01,
    "finetune_temperature_start": 10.0,
    "finetune_temperature_end": 0.1,
}
DEC = {"finetune": "dec", **FT, "dec_update_interval": 140, "dec_tol": 0.001, "dec_init": "latent"}
UMAP = {
    "reduction": "umap",
    "umap_dim": 10,
    "umap_n_neighbors": 20,
    "umap_min_dist": 0.0,
    "umap_fit_size": 10000,
}
NONE = {"finetune": "none", "reduction": "none"}
VARIANTS = {
    "AE + KMeans": NONE,
    "+ abo": {**NONE, **ABO},
    "+ dec": {**NONE, **DEC},
    "+ umap": {**NONE, **UMAP},
    "+ dec + umap": {**NONE, **DEC, **UMAP},
    "+ dec from umap's clusters + umap": {**NONE, **DEC, "dec_init": "reduced", **UMAP},
}
PUBLISHED = (
    "Published on MNIST for scale (NOTES.md section 6, not re-run here): AE + KMeans NMI 0.81, "
    "DEC 0.87, IDEC 0.87, Deep k-Means 0.80, N2D (AE, UMAP, GMM) 0.94; N2D on Fashion-MNIST 0.684."
)
HEADER = [
    "configuration",
    "best clusterer",
    "val silhouette (seen space)",
    "val silhouette (latent)",
    "val recon loss",
    "test NMI",
    "test ACC",
    "clusters used",
    "stage seconds",
]


def row(name: str, r: dict[str, Any]) -> list[str]:
    c = r[N.BEST_CLUSTERER]
    stages = ", ".join(
        f"{s} {r[N.stage_seconds(s)]:.0f}" for s in N.STAGES if r.get(N.stage_seconds(s), 0) >= 0.5
    )
    return [
        name,
        c,
        f"{r[N.SILHOUETTE]:.3f}",
        f"{r[N.metric('val', N.LATENT_SILHOUETTE, c)]:.3f}",
        f"{r[N.RECON_LOSS]:.4f}",
        f"{r[N.metric('test', 'nmi', c)]:.3f}",
        f"{r[N.metric('test', 'acc', c)]:.3f}",
        f"{r[N.metric('train', N.CLUSTERS_USED, c)]:.0f}",
        stages,
    ]


def table(dataset_name: str) -> list[str]:
    ds = load_dataset(dataset_name, seed=0)
    rows = []
    seeds = load_space("seeds")
    for name, point in zip(seeds.point_names, seeds.points, strict=True):
        r = run_trial({**point, "seed": 0}, ds)
        rows.append(row(f"{name} (document)", r))
        print(rows[-1], flush=True)
    base = {**BASE[dataset_name], **CLUSTERING}
    saved = {}

    def keep_last(record, state):
        if record["epoch"] == base["epochs"]:
            saved["state"] = state()

    first = run_trial({**base, **NONE}, ds, on_epoch=keep_last)
    for name, stages in VARIANTS.items():
        r = (
            first
            if name == "AE + KMeans"
            else run_trial({**base, **stages}, ds, resume=saved["state"])
        )
        if name != "AE + KMeans":  # the shared pre-training ran once, in the first run
            r[N.stage_seconds("pretrain")] = first[N.stage_seconds("pretrain")]
        rows.append(row(name, r))
        print(rows[-1], flush=True)
    return [
        f"### Stages on {dataset_name} (`--only table --dataset {dataset_name}`)",
        "",
        f"Autoencoder for the stage rows: `{json.dumps(BASE[dataset_name])}`; abo: "
        f"`{json.dumps(ABO)}`; dec: `{json.dumps(DEC)}`; umap: `{json.dumps(UMAP)}`; "
        "clusterers: KMeans(n_init=10) and ABO_clusterer (k-means++ init, 50 epochs, batch 256). "
        "Labels are reported only, never used to select; one seed each.",
        "",
        md_table(HEADER, rows),
        "",
        PUBLISHED,
        "",
    ]


def stage_cost(ds, config: dict[str, Any], kind: str, rounds: int = 3) -> dict[str, float]:
    """Seconds per epoch, same network and batch size: pre-training ("pre"), fine-tuning ("ft",
    of which "refresh"), and fine-tuning on autograd ("autograd", NaN where the stage uses
    autograd anyway) from the same pre-trained weights, each the median of `rounds` epochs after
    one warm-up epoch; "ratio" and "autograd_ratio" the medians of the per-round ratios;
    "others": cores other processes kept busy.

    The epochs are interleaved (one pre-training epoch, one fine-tuning epoch, one autograd
    epoch, then the next round; each run continues from its own resumable state), so that a slow
    spell of the machine, which can last minutes here, slows all three alike and each ratio
    compares epochs run seconds apart."""
    import copy

    torch.manual_seed(0)
    from models.build import build_autoencoder

    cfg = TrialConfig.from_flat(config)
    model = build_autoencoder(cfg.autoencoder, ds.image_shape)
    x = images_to_tensor(ds.x_train)
    bs = cfg.training.batch_size
    meter = OtherLoad()
    last: dict[str, tuple[dict, dict]] = {}  # run -> (its last epoch's record, its state)

    def keep(run: str):
        return lambda record, state: last.__setitem__(run, (record, state()))

    def pretrain(epochs: int) -> float:
        t = time.perf_counter()
        train_autoencoder(
            model, x, None, lr=1e-3, weight_decay=0.0, batch_size=bs, epochs=epochs, seed=0,
            resume=last["pre"][1] if "pre" in last else None, on_epoch=keep("pre"),
        )  # fmt: skip
        return time.perf_counter() - t

    pretrain(1)  # warm-up; both fine-tuning runs start from these weights
    clustering = Clustering(10, 0.1, 1, None, 1.0, "k-means++", kmeans_n_init=1)
    stage = Finetune(
        kind, 1, 5e-4, bs, 0.1,
        temperature_start=10.0, temperature_end=0.1, update_interval=140, tol=0.0, init="latent",
    )  # fmt: skip
    centers = initial_centers(stage, embed(model, x).numpy(), clustering, seed=0)
    runs = {"ft": copy.deepcopy(model)}
    if MLPStep.for_model(model) is not None:  # the closed-form step: compare it with autograd
        runs["autograd"] = copy.deepcopy(model)

    def tune(run: str, epochs: int) -> float:
        t = time.perf_counter()
        finetune(
            runs[run], x, None, centers, replace(stage, epochs=epochs), seed=0,
            closed_form=run == "ft",
            resume=last[run][1] if run in last else None, on_epoch=keep(run),
        )  # fmt: skip
        return time.perf_counter() - t

    for run in runs:
        tune(run, 1)  # warm-up
    seconds: dict[str, list[float]] = {"pre": [], "ft": [], "autograd": [], "refresh": []}
    for epochs in range(2, rounds + 2):
        seconds["pre"].append(pretrain(epochs))
        for run in runs:
            seconds[run].append(tune(run, epochs))
        seconds["refresh"].append(last["ft"][0].get("refresh_seconds", 0.0))
    out = {key: statistics.median(v) if v else math.nan for key, v in seconds.items()}
    for run, name in (("ft", "ratio"), ("autograd", "autograd_ratio")):
        ratios = [a / b for a, b in zip(seconds[run], seconds["pre"], strict=False)]
        out[name] = statistics.median(ratios) if ratios else math.nan
    out["others"] = meter.stop()
    return out


COST_HEADER = [
    "network",
    "batch",
    "stage",
    "pre-train s/epoch",
    "fine-tune s/epoch",
    "of which refresh",
    "ratio",
    "autograd fine-tune s/epoch",
    "autograd ratio",
    "others' load",
]
UMAP_PROBE = """
import time, numpy as np
t0 = time.perf_counter()
import umap
t1 = time.perf_counter()
z = np.load({codes!r})
def once():
    a = time.perf_counter()
    u = umap.UMAP(n_components=10, n_neighbors=20, min_dist=0.0, random_state=0,
                  transform_seed=0, n_jobs=1).fit(z[:10000])
    b = time.perf_counter()
    u.transform(z)
    return b - a, time.perf_counter() - b
first, second = once(), once()
print({{"import": t1 - t0, "first": first, "second": second}})
"""


def cost(ds) -> list[str]:
    seeds = dict(zip(load_space("seeds").point_names, load_space("seeds").points, strict=True))
    rows = []
    for name, bs in (("doc1-mlp", 32), ("doc1-mlp", 256), ("doc2-conv", 256)):
        config = {**seeds[name], "batch_size": bs}
        for kind in ("abo", "dec"):
            c = stage_cost(ds, config, kind)
            na = not math.isfinite(c["autograd"])
            rows.append(
                [
                    name,
                    str(bs),
                    kind,
                    f"{c['pre']:.2f}",
                    f"{c['ft']:.2f}",
                    f"{c['refresh']:.2f}" if kind == "dec" else "-",
                    f"{c['ratio']:.2f}x",
                    "-" if na else f"{c['autograd']:.2f}",
                    "-" if na else f"{c['autograd_ratio']:.2f}x",
                    f"{c['others']:.1f}",
                ]
            )
            print(rows[-1], flush=True)
    # UMAP's one-off cost per worker: codes of the doc1 network, in a fresh process
    torch.manual_seed(0)
    from models.build import build_autoencoder

    model = build_autoencoder(TrialConfig.from_flat(seeds["doc1-mlp"]).autoencoder, ds.image_shape)
    codes = embed(model, images_to_tensor(ds.x_train)).numpy()
    path = Path("/tmp/clustertune_bench_codes.npy")
    import numpy as np

    np.save(path, codes)
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", UMAP_PROBE.format(codes=str(path))],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    probe = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own subprocess's dict
    path.unlink()
    (f1, t1), (f2, t2) = probe["first"], probe["second"]
    return [
        "### Fine-tuning epoch against a pre-training epoch (`--only cost`)",
        "",
        "Median seconds per epoch of 3 (after one warm-up epoch), same network, same batch size, "
        "the three runs' epochs interleaved (pre-training, fine-tuning, autograd fine-tuning, "
        "then again), each ratio the median of the three rounds' ratios of adjacent epochs; "
        f"one process with {torch.get_num_threads()} torch thread(s), {ds.name} train split "
        f"({len(ds.x_train)} images); fine-tuning = the "
        "stage's joint step (encoder, decoder, centres: closed-form gradients for the plain MLP, "
        "autograd for the conv net) and, for dec, the target refreshes every 140 batches "
        "(encoding all training images; their share of the epoch in its own column). The "
        "autograd columns run the same MLP stage from the same weights with "
        "`closed_form=False`. Target: at most 1.5x. Others' load: cores other processes kept "
        "busy during the row (2 cores here; well above 0 means disturbed timings).",
        "",
        md_table(COST_HEADER, rows),
        "",
        f"UMAP per worker process (one thread, {len(codes)} doc1 codes of 64 dims, fit on 10,000, "
        f"transform all): `import umap` {probe['import']:.1f} s; first fit {f1:.1f} s + transform "
        f"{t1:.1f} s (numba compiling); second fit {f2:.1f} s + transform {t2:.1f} s. The one-off "
        f"compile cost per worker is therefore about {f1 + t1 - f2 - t2:.0f} s (Tune reuses its "
        "worker processes, so a search pays it once per concurrent trial slot).",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=sorted(BASE))
    p.add_argument("--only", nargs="+", default=["table", "cost"], choices=["table", "cost"])
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: what a trial of the default search gets, 1 CPU)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # before machine_lines, which reports it
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load0, t0 = loadavg(), time.perf_counter()
    lines: list[str] = []
    if "table" in args.only:
        lines += table(args.dataset)
    if "cost" in args.only:
        lines += cost(load_dataset(args.dataset, seed=0))
    text = "\n".join(
        [
            "",
            f"## {started} — bench_stages.py on {args.dataset}",
            "",
            f"Command: `.venv/bin/python bench/bench_stages.py {' '.join(sys.argv[1:])}`",
            "",
            *machine_lines(),
            f"- load average at start {load0}, at end {loadavg()}; whole run "
            f"{(time.perf_counter() - t0) / 60:.1f} min",
            "",
            *lines,
        ]
    )
    print(text)
    if not args.no_write:
        with RESULTS.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
