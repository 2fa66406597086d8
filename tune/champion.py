"""The search winner as one MLflow pyfunc model: images in, cluster ids out.

The model directory is the winning trial's final checkpoint (autoencoder weights, after its
fine-tuning stage if it had one; config; both clusterers' centres; the fitted PCA or UMAP when the
trial reduced the codes); `predict` encodes the images, reduces the codes as the trial did (unless
the winning clusterer worked in the latent space: ABO fine-tuned jointly with the encoder) and
assigns each to the nearest centre of the clusterer that won the trial (`best_clusterer`), which
is what ABO_clusterer.predict and KMeans.predict both do.
"""

from __future__ import annotations

import json
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from packaging.requirements import Requirement

import mlflow
from models.abo import nearest_centre
from models.build import build_autoencoder
from tune import names as N
from tune.config import TrialConfig
from tune.reduction import apply_reduction
from tune.trial import (
    CLUSTERERS_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    REDUCTION_FILE,
    RESULT_FILE,
    clusterer_space,
)


class ClusterModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: uint8 [N, H, W] (or [N, H*W], or floats in [0, 1]) -> int64 cluster ids [N]."""

    def load_context(self, context) -> None:
        d = Path(context.artifacts["trial"])
        flat = json.loads((d / CONFIG_FILE).read_text())
        self.image_shape = tuple(flat.pop("image_shape"))
        self.config = TrialConfig.from_flat(flat, source=str(d / CONFIG_FILE))
        result = json.loads((d / RESULT_FILE).read_text())
        self.clusterer = result.get(N.BEST_CLUSTERER, "kmeans")
        self.centers = np.load(d / CLUSTERERS_FILE)[self.clusterer]
        # The trial's PCA or UMAP of the codes, if the winning clusterer saw them reduced.
        self.reducer = None
        reduced = clusterer_space(self.config, self.clusterer) != "latent"
        if reduced and (d / REDUCTION_FILE).exists():
            self.reducer = joblib.load(d / REDUCTION_FILE)
        self.model = build_autoencoder(self.config.autoencoder, self.image_shape)
        self.model.load_state_dict(torch.load(d / MODEL_FILE, map_location="cpu"))
        self.model.eval()

    # The annotation tells MLflow the input is an array (it validates against the logged signature
    # instead of inferring one from type hints).
    def predict(
        self, context, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        x = np.asarray(model_input)
        images = x.astype(np.float32)
        if x.dtype == np.uint8 or images.max(initial=0.0) > 1.0:
            images /= 255.0
        images = images.reshape(-1, 1, *self.image_shape)
        with torch.no_grad():
            z = self.model.encode(torch.from_numpy(images)).numpy()
        return nearest_centre(apply_reduction(self.reducer, z), self.centers)


# Search-time only: the served model never imports them.
_SEARCH_ONLY = {"ray", "optuna", "torchvision"}


def pip_requirements(repo: Path) -> list[str]:
    """The project's runtime dependencies minus search-only ones, pinned to the installed versions.

    Given explicitly because MLflow's inference (a subprocess that loads the model and watches its
    imports) is slow and gets it wrong: it lists the local `clustertune` package, which no
    index has, and misses torch.
    """
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        name = Requirement(dep).name
        if name.lower() in _SEARCH_ONLY:
            continue
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # not installed: keep the project's own constraint
            pins.append(dep)
    return pins


def log_champion(
    trial_dir: Path,
    run_id: str,
    model_name: str,
    example: np.ndarray,
    tracking_uri: str,
    description: str = "",
    tags: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Log the winner in run `run_id` (the winning trial's: the model page then shows its
    hyperparameters and links to it), register it with `description` and `tags`, and point the
    `champion` alias at it. Returns (model URI, registered version)."""
    from mlflow.models import infer_signature

    repo = Path(__file__).resolve().parent.parent
    config = json.loads((Path(trial_dir) / "config.json").read_text())
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    status = client.get_run(run_id).info.status
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="champion",
            python_model=str(repo / "tune" / "champion_model.py"),  # models from code: no pickle
            artifacts={"trial": str(trial_dir)},
            code_paths=[str(repo / "models"), str(repo / "tune")],
            signature=infer_signature(example, np.zeros(len(example), dtype=np.int64)),
            input_example=example,
            pip_requirements=pip_requirements(repo),
            registered_model_name=model_name,
            params={k: str(v) for k, v in sorted(config.items())},
            tags=tags,
        )
    client.set_terminated(run_id, status)  # start_run reopened the finished trial's run
    version = str(info.registered_model_version)
    client.set_registered_model_alias(model_name, "champion", version)
    if description:
        client.update_model_version(model_name, version, description=description)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(model_name, version, key, value)
    return info.model_uri, version
