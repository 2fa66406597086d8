"""The one set of metric, tag and parameter names used by trials, Tune, MLflow, selection and tests.

Split-level metrics are "<split>/<name>" and clusterer metrics "<split>/<clusterer>/<metric>",
e.g. "val/recon_loss", "test/kmeans/silhouette". Ray Tune flattens nested result dicts with the
same "/" separator, so these names read the same in Tune's progress table, its result CSVs and
MLflow.
"""

from collections.abc import Mapping
from typing import Any

SPLITS = ("train", "val", "test")
CLUSTERERS = ("abo", "kmeans")
CLUSTER_METRICS = ("silhouette", "davies_bouldin", "calinski_harabasz")
LABEL_METRICS = ("nmi", "ari", "acc")  # reporting only: never used for selection
# Per split and clusterer, beside CLUSTER_METRICS (which are measured in the space the clusterer
# saw): the silhouette of the same labeling in the autoencoder's own latent space (equal to
# "silhouette" when the clusterer saw the codes themselves), and how many clusters it uses.
LATENT_SILHOUETTE = "latent_silhouette"
CLUSTERS_USED = "clusters_used"
# Per split and clusterer: 1.0 when its labeling is degenerate (< 2 clusters or one per sample), so
# its silhouette, Davies-Bouldin and Calinski-Harabasz are NaN. The trial-level flag is DEGENERATE.
CLUSTER_DEGENERATE = "degenerate"

EPOCH = "epoch"
TRAIN_LOSS = "train/recon_loss"  # per epoch: the epoch's mean training-mode loss
# Final only: eval-mode MSE on train after training, as val/ and test/recon_loss are measured. A
# name of its own, so the per-epoch curve does not get a second, different point at its last step.
EVAL_TRAIN_LOSS = "train/eval_recon_loss"
VAL_LOSS = "val/recon_loss"
# Per fine-tuning epoch (tune/finetune.py): the clustering term of the joint loss; the epoch's
# reconstruction term is TRAIN_LOSS, as in pre-training, so one curve runs through both stages.
CLUSTER_LOSS = "train/cluster_loss"
TEST_LOSS = "test/recon_loss"
# In a Tune result: [[epoch, train loss, val loss], ...] for every epoch since the trial's previous
# report, the reported one included (a trial reports at most once a second; MLflow gets them all).
# A fine-tuning epoch has a fourth entry, its CLUSTER_LOSS.
EPOCH_LOG = "epoch_log"

# The two objectives: validation silhouette of the better clusterer (up), validation MSE (down).
SILHOUETTE = "val/silhouette"
RECON_LOSS = VAL_LOSS
OBJECTIVES: dict[str, str] = {SILHOUETTE: "max", RECON_LOSS: "min"}

# Ray Tune schedulers a search can run (`--scheduler`, or a space's top-level `scheduler`).
SCHEDULERS = ("fifo", "asha", "mo-asha")

# Intermediate values of both objectives at the rungs of `--scheduler mo-asha`
# (tune/mo_asha.py), in the per-epoch result of the epoch that reached a rung (and in the final
# result when that is the last epoch).
# RUNG_SILHOUETTE is KMeans (the trial's n_clusters, seeded, few inits) on a fixed, seeded
# subsample of the validation split's codes, after the trial's own reduction fitted on that
# subsample, scored with the exact silhouette on it: a cheap proxy measured before fine-tuning's
# end, so it is never compared with SILHOUETTE. RUNG_RECON_LOSS is VAL_LOSS at that epoch (the
# whole split).
RUNG_SILHOUETTE = "rung/silhouette"
RUNG_RECON_LOSS = "rung/recon_loss"
RUNG_OBJECTIVES: dict[str, str] = {RUNG_SILHOUETTE: "max", RUNG_RECON_LOSS: "min"}
# The rung (scheduler milestone) those values are for: an epoch, or seconds of the trial; with
# rungs in seconds, also the trial's seconds when it measured them (RUNG_AT <= RUNG_CLOCK).
RUNG_AT = "rung/at"
RUNG_CLOCK = "rung/clock_s"
RUNG_KEYS = (*RUNG_OBJECTIVES, RUNG_AT, RUNG_CLOCK)
# What mo-asha's and asha's rungs count (a space's `scheduler.time_attr`, --time-attr): epochs,
# or seconds since the trial started, which weighs a trial's cost. Tune's name for it; mo-asha's
# trials count them on their own clock, which also runs while a report waits for the driver
# (Tune's time_total_s, which Ray's ASHA reads, does not).
TIME_TOTAL = "time_total_s"
TIME_ATTRS = (EPOCH, TIME_TOTAL)

# Which clusterer gave SILHOUETTE ("abo" or "kmeans"): the best validation silhouette among the
# clusterers that use all n_clusters clusters on train; only if none does, among the others (a
# partly collapsed clustering inflates its silhouette and must not win over a full one).
BEST_CLUSTERER = "best_clusterer"
PARTIAL = "partial_clustering"  # 1.0 when SILHOUETTE comes from a clustering with unused clusters
DEGENERATE = "degenerate"  # trial level: 1.0 when no clusterer gave a valid validation labeling
DEGENERATE_CLUSTERERS = "degenerate_clusterers"  # tag: clusterers whose labeling collapsed
DIVERGED = "diverged"  # 1.0 when training hit a NaN/inf loss
STATUS = "status"  # in a trial's final result only: one of Status
TRIAL_SECONDS = "time/trial_s"
# Wall seconds of each stage of a trial: time/<stage>_s (bench/ reads them from results too).
# finetune_init: the fine-tuning stage's starting centres (with dec_init reduced, a UMAP fit),
# a one-off cost kept apart from the stage's epochs.
STAGES = (
    "pretrain",
    "finetune_init",
    "finetune",
    "embed",
    "reduction",
    "abo",
    "kmeans",
    "metrics",
)
# Dimension of the space the clusterers saw and their scores were measured in: latent_dim, pca_dim
# when that is smaller, or umap_dim (silhouette, Davies-Bouldin, Calinski-Harabasz depend on it).
# With finetune abo, ABO's centres were trained in the latent space and it clusters there.
CLUSTER_DIM = "cluster_dim"
NODE = "node"  # in a result: the Ray node id (unique even for nodes on one host), else hostname
# MLflow tags of a trial's run: what it is (ROLES) and whether it is on the search's Pareto front.
ROLE = "role"
ROLES = ("winner", "pareto", "baseline", "trial")
PARETO = "pareto"
# Parent metric after each finished trial (step = trials finished): the hypervolume of the front so
# far, normalised by its reference box (tune/selection.py `hypervolume`).
HYPERVOLUME = "search/hypervolume"
# Tag of a trial the scheduler stopped: the epoch of the last result it reported (its STATUS tag is
# Status.STOPPED).
STOPPED_AT_EPOCH = "stopped_at_epoch"
# ... and the rung it was stopped at (an epoch, or seconds of the trial), when that result had one
STOPPED_AT_RUNG = "stopped_at_rung"


def metric(split: str, name: str, clusterer: str | None = None) -> str:
    """'val/recon_loss' for metric('val', 'recon_loss'); 'val/abo/nmi' with clusterer='abo'."""
    return f"{split}/{clusterer}/{name}" if clusterer else f"{split}/{name}"


def recon_loss(split: str) -> str:
    """The final eval-mode reconstruction MSE of a split: 'val/recon_loss', ...,
    EVAL_TRAIN_LOSS for train."""
    return EVAL_TRAIN_LOSS if split == "train" else metric(split, "recon_loss")


def stage_seconds(stage: str) -> str:
    """'time/pretrain_s' for stage_seconds('pretrain')."""
    return f"time/{stage}_s"


class Status:
    """The values of STATUS. Plain strings, not an Enum: MLflow tags, result JSON and
    all_trials.csv carry exactly these."""

    OK = "ok"
    DIVERGED = "diverged"  # NaN/inf training loss: NaN objectives
    DEGENERATE = "degenerate"  # no valid clustering: NaN silhouette
    # Never in a result: the MLflow tag of a trial Ray saw raise (tune.tracking), and in the trials
    # table (tune.report) that or a trial without a final result.
    ERROR = "error"
    INCOMPLETE = "incomplete"
    # Never in a result either: the MLflow tag of a trial the scheduler stopped early (in the
    # trials table it is INCOMPLETE: it has no final result).
    STOPPED = "stopped"


def is_final(result: Mapping[str, Any]) -> bool:
    """Whether a Tune result (or a row of a results table) is a trial's final one: only that one
    carries a STATUS, as a string (a table's per-epoch rows may hold NaN there)."""
    return isinstance(result.get(STATUS), str)
