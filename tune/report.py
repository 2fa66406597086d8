"""End of a search: the trials table, the Pareto front and winner, and the parent run's artifacts."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tune import names as N
from tune import plots
from tune.selection import beats_all, select

SHOW = [
    "trial_id",
    "point",
    "arch",
    N.SILHOUETTE,
    N.RECON_LOSS,
    N.BEST_CLUSTERER,
    N.STATUS,
    "val/kmeans/nmi",
    "val/abo/nmi",
]


@dataclass
class Summary:
    trials: pd.DataFrame  # one row per trial: config columns, final metrics, status
    front: pd.DataFrame | None  # Pareto front, best silhouette first
    winner: Any  # index label in `trials`, or None
    winner_dir: Path | None  # local copy of the winner's final checkpoint
    files: list[Path] = field(default_factory=list)  # the parent run's artifacts, written locally
    rule: str = ""  # how the winner was chosen, for the printed summary


def trials_table(results, points: list[tuple[str, dict]] | None = None) -> pd.DataFrame:
    """One row per trial from a Tune ResultGrid (final result, config, error); `point` names the
    space's points_to_evaluate (e.g. the two documents' configurations) a trial ran."""
    rows = []
    named = points or []
    for r in results:
        config = dict(r.config or {})
        metrics = dict(r.metrics or {})
        row = {"trial_id": metrics.get("trial_id", Path(r.path).name if r.path else "?")}
        row["point"] = next(
            (n for n, p in named if all(config.get(k) == v for k, v in p.items())), ""
        )
        row.update({k: v for k, v in config.items()})
        row.update(
            {
                k: v
                for k, v in metrics.items()
                if "/" in k or k in (N.BEST_CLUSTERER, N.STATUS, N.NODE, N.CLUSTER_DIM)
            }
        )
        if r.error is not None:
            row[N.STATUS] = N.Status.ERROR
        row.setdefault(N.STATUS, N.Status.INCOMPLETE)
        row["checkpoint"] = r.checkpoint.path if r.checkpoint is not None else ""
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(
    results, tmp: Path, weights=None, points=None, prefer_improvements: bool = True
) -> Summary:
    """Select the winner; write all_trials.csv, pareto.csv, pareto_front.png, best_config.yaml
    to `tmp` and copy the winner's checkpoint there. Needs no MLflow (see `log_summary`).

    With `prefer_improvements`, the trials of the space's points (the documents' configurations)
    are the baselines of tune.selection's rule step 5: the winner beats all of them if any front
    trial does. `beats_points` in the table marks the trials that do.
    """
    df = trials_table(results, points)
    front, winner, winner_dir = None, None, None
    df["beats_points"] = False
    rule = "nearest to the ideal point, objectives normalised over the front"
    if len(df) and all(k in df for k in N.OBJECTIVES):
        ok = df[N.STATUS] == N.Status.OK
        is_point = df["point"] != ""
        df["beats_points"] = beats_all(df, df[ok & is_point]) & ok
        try:
            front, winner = select(
                df, weights=weights, exclude=~ok, baseline=is_point if prefer_improvements else None
            )
        except ValueError:  # nothing valid to choose from
            front, winner = None, None
        if front is not None and prefer_improvements and df.loc[front.index, "beats_points"].any():
            names = ", ".join(df.loc[ok & is_point, "point"])
            rule = (
                f"nearest to the ideal point among the front trials that beat every starting "
                f"point ({names}) in both objectives, objectives normalised over the front"
            )
    df["pareto"] = df.index.isin(front.index) if front is not None else False
    df["winner"] = df.index == winner if winner is not None else False
    df.to_csv(tmp / "all_trials.csv", index=False)
    files = [tmp / "all_trials.csv"]
    if front is not None:
        df.loc[front.index].to_csv(tmp / "pareto.csv", index=False)
        plots.pareto_front(df, tmp / "pareto_front.png")
        best = df.loc[winner]
        won = next(r for r in results if (r.metrics or {}).get("trial_id") == best["trial_id"])
        (tmp / BEST_CONFIG).write_text(best_config_yaml(str(best["trial_id"]), won.config))
        files += [tmp / "pareto.csv", tmp / "pareto_front.png", tmp / BEST_CONFIG]
        if won.checkpoint is not None:
            winner_dir = Path(won.checkpoint.to_directory(str(tmp / "winner")))
    return Summary(df, front, winner, winner_dir, files, rule)


BEST_CONFIG = "best_config.yaml"


def best_config_yaml(trial_id: str, config: dict) -> str:
    """The winner's own config as a points-only space (search_spaces/README.md): every key the
    trial read, with its exact type, so `python tune/search.py --space best_config.yaml --seed
    SEED` runs exactly that trial again."""
    from tune.space import SEED_KEY, validate_config

    flat = validate_config(config, source=f"trial {trial_id}")
    seed = flat.pop(SEED_KEY)
    doc = {
        "description": f"The winner of a search (trial {trial_id}). Re-run it with: python "
        f"tune/search.py --space best_config.yaml --seed {seed} --dataset <the same data>",
        "points": [{"name": f"winner-{trial_id}", "config": flat}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def log_summary(client, parent_run_id: str, summary: Summary) -> None:
    """The summary's files as parent-run artifacts; the winner's objectives and id as metrics/tags."""
    for path in summary.files:
        client.log_artifact(parent_run_id, str(path))
    if summary.winner is None:
        return
    best = summary.trials.loc[summary.winner]
    metrics = {f"best/{k}": float(best[k]) for k in N.OBJECTIVES}
    client.log_batch(parent_run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
    client.set_tag(parent_run_id, "winner_trial_id", str(best["trial_id"]))
    client.set_tag(parent_run_id, N.BEST_CLUSTERER, str(best.get(N.BEST_CLUSTERER, "")))


def format_summary(summary: Summary, version: str | None, model_name: str, elapsed: float) -> str:
    """The printed end of a search; `version`: the champion's registered version, if any."""
    df = summary.trials
    counts = df[N.STATUS].value_counts().to_dict()
    lines = [
        f"\n{len(df)} trials in {elapsed:.0f} s: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
    ]
    if summary.front is None:
        lines.append("No finished, non-degenerate trial: no Pareto front.")
        return "\n".join(lines)
    cols = [c for c in SHOW if c in df.columns]
    table = df.loc[summary.front.index, cols].copy()
    table.insert(0, "", ["*" if i == summary.winner else "" for i in table.index])
    lines.append(f"\nPareto front (* = chosen winner: {summary.rule}):")
    lines.append(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if version is not None:
        lines.append(f"\nWinner registered as models:/{model_name}@champion (version {version})")
    return "\n".join(lines)


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}   (the tracking server's own UI)"
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1 --port 5000"


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, value, int(time.time() * 1000), 0)
