"""Where should IDEC start? KMeans on the codes (dec_init: latent) against KMeans on the trial's
UMAP of them (dec_init: reduced), from the same pre-trained network.

Reads finished trials of a search that ran with `reduction: umap` and no fine-tuning (a Tune
checkpoint folder holding the trial's config.json and model.pt), and for each: scores it as it
is, then fine-tunes a copy with IDEC from each start and scores that, always through the trial's
own reduction and KMeans. Labels are reported only (test NMI). Prints a markdown table for
bench/RESULTS.md.

    .venv/bin/python bench/bench_dec_init.py --dataset fashion-mnist \\
        --gamma 0.026 0.1 RAY_STORAGE/NAME/trainable_.../checkpoint_000005 ...
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.build import build_autoencoder  # noqa: E402
from tune.config import Finetune, TrialConfig  # noqa: E402
from tune.data import load_dataset  # noqa: E402
from tune.finetune import finetune, initial_centers  # noqa: E402
from tune.reduction import apply_reduction, fit_reduction  # noqa: E402
from tune.training import embed, images_to_tensor, reconstruction_loss  # noqa: E402
from tune.trial import CONFIG_FILE, MODEL_FILE, make_clusterers  # noqa: E402

SPLITS = ("train", "val", "test")


def score(model, x, y, cfg: TrialConfig) -> dict[str, float]:
    """The trial's scoring of KMeans after its reduction: validation silhouette where KMeans
    looked and in the latent space, validation loss, test NMI."""
    z = {s: embed(model, x[s]).numpy() for s in SPLITS}
    reducer = fit_reduction(cfg.reduction, cfg.seed, z["train"])
    seen = {s: apply_reduction(reducer, z[s]) for s in SPLITS}
    km = make_clusterers(cfg)["kmeans"].fit(seen["train"])
    val = km.predict(seen["val"])
    return {
        "silhouette": silhouette_score(seen["val"], val),
        "latent": silhouette_score(z["val"], val),
        "loss": reconstruction_loss(model, x["val"]),
        "nmi": normalized_mutual_info_score(y["test"], km.predict(seen["test"])),
    }


def row(name: str, start: str, gamma: str, s: dict[str, float], seconds: float) -> None:
    print(
        f"| {name} | {start} | {gamma} | {s['silhouette']:.3f} | {s['latent']:.3f} | "
        f"{s['loss']:.5f} | {s['nmi']:.3f} | {seconds:.0f} |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials", nargs="+", type=Path, help="checkpoint folders of trials")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--gamma", type=float, nargs="+", default=[0.026, 0.1])
    parser.add_argument("--epochs", type=int, default=3, help="IDEC epochs")
    parser.add_argument("--lr", type=float, default=1.07e-3, help="IDEC's learning rate")
    args = parser.parse_args(argv)
    print(
        "| trial | IDEC start | gamma | val silhouette (seen) | latent | val loss | test NMI | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for folder in args.trials:
        flat = json.loads((folder / CONFIG_FILE).read_text())
        shape = tuple(flat.pop("image_shape"))
        cfg = TrialConfig.from_flat(flat, source=str(folder / CONFIG_FILE))
        if cfg.reduction.kind != "umap" or cfg.finetune is not None:
            sys.exit(f"{folder}: needs a trial with reduction umap and finetune none")
        ds = load_dataset(args.dataset, seed=cfg.seed, download=False)
        x = {s: images_to_tensor(getattr(ds, f"x_{s}")) for s in SPLITS}
        y = {s: getattr(ds, f"y_{s}") for s in SPLITS}
        base = build_autoencoder(cfg.autoencoder, shape)
        base.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu"))
        base.eval()
        name = folder.parent.name.split("_")[1]
        row(name, "(no fine-tuning)", "-", score(base, x, y, cfg), 0)
        z_train = embed(base, x["train"]).numpy()
        for gamma in args.gamma:
            for init in ("latent", "reduced"):
                stage = Finetune(
                    "dec", args.epochs, args.lr, 256, gamma,
                    update_interval=140, tol=0.001, init=init,
                )  # fmt: skip
                t = time.perf_counter()
                centers = initial_centers(stage, z_train, cfg.clustering, cfg.seed, cfg.reduction)
                model = copy.deepcopy(base)
                finetune(model, x["train"], x["val"], centers, stage, seed=cfg.seed)
                seconds = time.perf_counter() - t
                row(name, init, f"{gamma:g}", score(model, x, y, cfg), seconds)
    print(
        f"\nIDEC: {args.epochs} epochs, lr {args.lr:g}, batch 256, update interval 140, tol 0.001"
    )


if __name__ == "__main__":
    main()
