"""The one set of metric, tag and parameter names used by trials, Tune, MLflow, selection and tests.

Split-level metrics are "<split>/<name>" and clusterer metrics "<split>/<clusterer>/<metric>",
e.g. "val/recon_loss", "test/kmeans/silhouette". Ray Tune flattens nested result dicts with the
same "/" separator, so these names read the same in Tune's progress table, its result CSVs and
MLflow.
"""

SPLITS = ("train", "val", "test")
CLUSTERERS = ("abo", "kmeans")
CLUSTER_METRICS = ("silhouette", "davies_bouldin", "calinski_harabasz")
LABEL_METRICS = ("nmi", "ari", "acc")  # reporting only: never used for selection

EPOCH = "epoch"
TRAIN_LOSS = "train/recon_loss"  # per epoch: mean training-mode loss; final: eval-mode MSE on train
VAL_LOSS = "val/recon_loss"
TEST_LOSS = "test/recon_loss"
# In a Tune result: [[epoch, train loss, val loss], ...] for every epoch since the trial's previous
# report, the reported one included (a trial reports at most once a second; MLflow gets them all).
EPOCH_LOG = "epoch_log"

# The two objectives: validation silhouette of the better clusterer (up), validation MSE (down).
SILHOUETTE = "val/silhouette"
RECON_LOSS = VAL_LOSS
OBJECTIVES: dict[str, str] = {SILHOUETTE: "max", RECON_LOSS: "min"}

BEST_CLUSTERER = "best_clusterer"  # which clusterer gave SILHOUETTE ("abo" or "kmeans")
DEGENERATE = "degenerate"  # 1.0 when no clusterer gave a valid validation labeling
DEGENERATE_CLUSTERERS = "degenerate_clusterers"  # tag: clusterers whose labeling collapsed
DIVERGED = "diverged"  # 1.0 when training hit a NaN/inf loss
STATUS = "status"  # "ok" | "degenerate" | "diverged"
TRIAL_SECONDS = "time/trial_s"
# Dimension of the space the clusterers saw and their scores were measured in: latent_dim, or
# pca_dim when that is smaller (silhouette, Davies-Bouldin, Calinski-Harabasz depend on it).
CLUSTER_DIM = "cluster_dim"
NODE = "node"  # hostname of the machine that ran the trial


def metric(split: str, name: str, clusterer: str | None = None) -> str:
    """'val/recon_loss' for metric('val', 'recon_loss'); 'val/abo/nmi' with clusterer='abo'."""
    return f"{split}/{clusterer}/{name}" if clusterer else f"{split}/{name}"
