"""A trial's configuration as typed objects, built and checked once, at the trial's edge.

Tune, Optuna and MLflow see a trial's config as one flat dict of the keys in tune/space.py's key
table (that is what a search space samples and what a run logs as params). Everything that runs
a trial (models, trial, champion, benchmarks) works on `TrialConfig` instead: built from that
dict by `TrialConfig.from_flat`, which checks it against the same key table first (one-line
errors naming the source and key), so nothing downstream re-casts or defaults a value. The
architecture's own fields are discriminated by `arch`: `autoencoder.net` is an `MLPNet` or a
`ConvNet`, and each stage's settings exist only when the stage runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tune.space import validate_config


@dataclass(frozen=True)
class MLPNet:
    hidden: tuple[int, ...]  # widths of the hidden layers, encoder side
    activation: str
    batch_norm: bool


@dataclass(frozen=True)
class ConvNet:
    channels: tuple[int, ...]  # channels of each conv + pool stage


@dataclass(frozen=True)
class Autoencoder:
    arch: str  # "mlp" | "conv": which of MLPNet / ConvNet `net` is
    net: MLPNet | ConvNet
    latent_dim: int
    dropout: float


@dataclass(frozen=True)
class Training:
    """Pre-training: Adam on the reconstruction loss."""

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int


@dataclass(frozen=True)
class Finetune:
    """The joint fine-tuning stage (tune/finetune.py); None in a TrialConfig when it does not run."""

    kind: str  # "abo" | "dec"
    epochs: int
    lr: float
    batch_size: int
    gamma: float
    temperature_start: float | None = None  # abo
    temperature_end: float | None = None  # abo
    update_interval: int | None = None  # dec
    tol: float | None = None  # dec
    init: str | None = None  # dec: "latent" or "reduced", where the starting KMeans runs

    def temperature(self, epoch: int) -> float:
        """ABO's temperature in 0-based `epoch` of the stage: geometric from start to end."""
        frac = epoch / max(self.epochs - 1, 1)
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** frac


@dataclass(frozen=True)
class Reduction:
    """What the clusterers see (tune/reduction.py): kind "none", "pca" or "umap"."""

    kind: str
    pca_dim: int | None = None
    umap_dim: int | None = None
    umap_n_neighbors: int | None = None
    umap_min_dist: float | None = None
    umap_fit_size: int | None = None


@dataclass(frozen=True)
class Clustering:
    n_clusters: int
    abo_lr: float
    abo_epochs: int
    abo_batch_size: int | None  # None: full batch
    abo_temperature: float
    abo_init: str
    kmeans_n_init: int


@dataclass(frozen=True)
class TrialConfig:
    autoencoder: Autoencoder
    training: Training
    finetune: Finetune | None
    reduction: Reduction
    clustering: Clustering
    seed: int
    flat: Mapping[str, Any]  # the checked flat dict it was built from (what MLflow logs)

    @classmethod
    def from_flat(cls, config: Mapping[str, Any], source: str = "config") -> TrialConfig:
        """Check a flat config (tune.space's key table) and type it. Raises SpaceError
        "<source>: <key>: <reason>". `seed` defaults to 0 for a config outside a search."""
        c = validate_config({"seed": 0, **config}, source)
        depth = c["mlp_depth"] if c["arch"] == "mlp" else c["conv_depth"]
        if c["arch"] == "mlp":
            widths = tuple(c[f"mlp_width_{i}"] for i in range(1, depth + 1))
            net: MLPNet | ConvNet = MLPNet(widths, c["mlp_activation"], c["mlp_batch_norm"])
        else:
            net = ConvNet(tuple(c[f"conv_channels_{i}"] for i in range(1, depth + 1)))
        finetune = None
        if c["finetune"] != "none":
            finetune = Finetune(
                kind=c["finetune"],
                epochs=c["finetune_epochs"],
                lr=c["finetune_lr"],
                batch_size=c["finetune_batch_size"],
                gamma=c["finetune_gamma"],
                temperature_start=c.get("finetune_temperature_start"),
                temperature_end=c.get("finetune_temperature_end"),
                update_interval=c.get("dec_update_interval"),
                tol=c.get("dec_tol"),
                init=c.get("dec_init"),
            )
        reduction_keys = ("pca_dim", "umap_dim", "umap_n_neighbors", "umap_min_dist")
        return cls(
            autoencoder=Autoencoder(c["arch"], net, c["latent_dim"], c["dropout"]),
            training=Training(c["lr"], c["weight_decay"], c["batch_size"], c["epochs"]),
            finetune=finetune,
            reduction=Reduction(
                c["reduction"],
                **{k: c[k] for k in (*reduction_keys, "umap_fit_size") if k in c},
            ),
            clustering=Clustering(
                c["n_clusters"],
                c["abo_lr"],
                c["abo_epochs"],
                c["abo_batch_size"],
                c["abo_temperature"],
                c["abo_init"],
                c["kmeans_n_init"],
            ),
            seed=c["seed"],
            flat=c,
        )

    @property
    def last_epoch(self) -> int:
        """The trial's last epoch if no stage stops early: pre-training, then fine-tuning."""
        return self.training.epochs + (self.finetune.epochs if self.finetune else 0)


def describe(config: Mapping[str, Any]) -> str:
    """A trial's configuration in a few words, e.g. 'conv 16/8 z46 dec umap10'."""
    arch = config.get("arch", "?")
    if arch == "mlp":
        layers = [config.get(f"mlp_width_{i}") for i in range(1, int(config["mlp_depth"]) + 1)]
    elif arch == "conv":
        layers = [config.get(f"conv_channels_{i}") for i in range(1, int(config["conv_depth"]) + 1)]
    else:  # not a trial's config (hand-made results)
        return "?"
    words = [f"{arch} " + ("-" if arch == "mlp" else "/").join(str(w) for w in layers)]
    words.append(f"z{config.get('latent_dim')}")
    if config.get("finetune", "none") != "none":
        words.append(config["finetune"])
    reduction = config.get("reduction", "none")
    if reduction == "pca":
        words.append(f"pca{config['pca_dim']}")
    elif reduction == "umap":
        words.append(f"umap{config['umap_dim']}")
    return " ".join(words)


def point_name(config: Mapping[str, Any], points: list[tuple[str, Mapping[str, Any]]]) -> str:
    """The name of the space's point (e.g. a document's configuration) that `config` runs,
    or "" when it is a sampled one."""
    return next((n for n, p in points if all(config.get(k) == v for k, v in p.items())), "")
