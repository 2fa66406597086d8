"""End of a search: the trials table, the Pareto front and winner, and the parent run's artifacts."""

from __future__ import annotations

import math
import shlex
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.entities import Metric

from tune import names as N
from tune import plots
from tune.config import point_name
from tune.selection import beats_all, hypervolume, select
from tune.trial_runs import run_name, trial_number

SHOW = ["trial_id", "run_name", N.SILHOUETTE, N.RECON_LOSS, N.BEST_CLUSTERER, "test_nmi"]
# The per-trial label scores a user compares (reported, never used to select): those of the
# clusterer whose silhouette is the trial's objective, on test (validation without a test split).
LABEL_COLUMNS = {"test_nmi": "nmi", "test_acc": "acc"}


@dataclass
class Summary:
    trials: pd.DataFrame  # one row per trial: config columns, final metrics, status
    front: pd.DataFrame | None  # Pareto front, best silhouette first
    winner: Any  # index label in `trials`, or None
    winner_dir: Path | None  # local copy of the winner's final checkpoint
    files: list[Path] = field(default_factory=list)  # the parent run's artifacts, written locally
    rule: str = ""  # how the winner was chosen, for the printed summary
    # N.HYPERVOLUME after each ended trial, in the order they ended (empty without a reference)
    hypervolume: list[float] = field(default_factory=list)
    reference: tuple[float, float] | None = None


def trials_table(results, points: list[tuple[str, dict]] | None = None) -> pd.DataFrame:
    """One row per trial from a Tune ResultGrid (final result, config, error); `point` names the
    space's points_to_evaluate (e.g. the two documents' configurations) a trial ran."""
    rows = []
    named = points or []
    for r in results:
        config = dict(r.config or {})
        metrics = dict(r.metrics or {})
        row = {"trial_id": metrics.get("trial_id", Path(r.path).name if r.path else "?")}
        row["point"] = point_name(config, named)
        number = trial_number(metrics.get("experiment_tag"))
        row["run_name"] = run_name(row["trial_id"], config, row["point"], number) if config else ""
        row["ended_at"] = metrics.get("timestamp", math.nan)  # Tune's time of the last result
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
        split = "test" if N.metric("test", "nmi", N.CLUSTERERS[0]) in metrics else "val"
        for column, score in LABEL_COLUMNS.items():
            key = N.metric(split, score, str(row.get(N.BEST_CLUSTERER)))
            row[column] = metrics.get(key, math.nan)
        row["checkpoint"] = r.checkpoint.path if r.checkpoint is not None else ""
        rows.append(row)
    return pd.DataFrame(rows)


def hypervolume_history(df: pd.DataFrame, reference: tuple[float, float]) -> list[float]:
    """N.HYPERVOLUME after each trial, in the order the trials ended (as logged live)."""
    out, points = [], []
    for _, row in df.sort_values("ended_at", kind="stable").iterrows():
        if row[N.STATUS] == N.Status.OK:
            points.append((float(row[N.SILHOUETTE]), float(row[N.RECON_LOSS])))
        out.append(hypervolume(points, reference))
    return out


def summarise(
    results,
    tmp: Path,
    weights=None,
    points=None,
    prefer_improvements: bool = True,
    reference: tuple[float, float] | None = None,
) -> Summary:
    """Select the winner; write all_trials.csv, pareto.csv, pareto_front.png, best_config.yaml
    (and with a hypervolume `reference`, hypervolume.png) to `tmp` and copy the winner's
    checkpoint there. Needs no MLflow (see `log_summary`).

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
    history = []
    if reference is not None and len(df) and all(k in df for k in N.OBJECTIVES):
        history = hypervolume_history(df, reference)
        plots.hypervolume_curve(history, reference, tmp / "hypervolume.png")
        files.append(tmp / "hypervolume.png")
    return Summary(df, front, winner, winner_dir, files, rule, history, reference)


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


def log_summary(
    client,
    parent_run_id: str,
    summary: Summary,
    experiment_id: str | None = None,
    run_ids: dict[str, str] | None = None,
) -> None:
    """The summary in MLflow: the parent's artifacts, Pareto table, hypervolume points the live
    logging missed, winner metrics and Markdown note; each trial run's role, front membership
    and, for the winner, its name. `run_ids`: trial id -> its run."""
    for path in summary.files:
        client.log_artifact(parent_run_id, str(path))
    run_ids = run_ids or {}
    _log_hypervolume(client, parent_run_id, summary.hypervolume)
    df = summary.trials
    for i, row in df.iterrows():
        run_id = run_ids.get(str(row["trial_id"]))
        if run_id is None:
            continue
        client.set_tag(run_id, N.ROLE, role(row))
        client.set_tag(run_id, N.PARETO, "true" if row["pareto"] else "false")
        if i == summary.winner:
            client.set_tag(run_id, "mlflow.runName", f"★ winner {row['run_name']}")
    if summary.winner is None:
        return
    best = df.loc[summary.winner]
    table = df.loc[summary.front.index, [c for c in SHOW if c in df.columns]]
    client.log_table(parent_run_id, data=table.reset_index(drop=True), artifact_file=PARETO_TABLE)
    metrics = {f"best/{k}": float(best[k]) for k in N.OBJECTIVES}
    client.log_batch(parent_run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
    client.set_tag(parent_run_id, "winner_trial_id", str(best["trial_id"]))
    if str(best["trial_id"]) in run_ids:
        client.set_tag(parent_run_id, "winner_run_id", run_ids[str(best["trial_id"])])
    client.set_tag(parent_run_id, N.BEST_CLUSTERER, str(best.get(N.BEST_CLUSTERER, "")))
    client.set_tag(parent_run_id, "mlflow.note.content", note(summary, experiment_id, run_ids))


PARETO_TABLE = "pareto_table.json"  # MLflow's table artifact: the UI shows it as a table


def role(row) -> str:
    """The `role` tag of a trial's run (N.ROLES)."""
    if row["winner"]:
        return "winner"
    if row["pareto"]:
        return "pareto"
    return "baseline" if row["point"] else "trial"


def _log_hypervolume(client, parent_run_id: str, history: list[float]) -> None:
    """The steps of N.HYPERVOLUME the live logging missed (store down, an earlier --resume)."""
    if not history:
        return
    logged = {m.step for m in client.get_metric_history(parent_run_id, N.HYPERVOLUME)}
    now = int(time.time() * 1000)
    missing = [
        Metric(N.HYPERVOLUME, v, now, step)
        for step, v in enumerate(history, start=1)
        if step not in logged
    ]
    if missing:
        client.log_batch(parent_run_id, metrics=missing)


def note(summary: Summary, experiment_id: str | None, run_ids: dict[str, str]) -> str:
    """The parent run's description (MLflow renders it as Markdown): the rule, why the winner
    won, the Pareto front, and the winner against the baselines, with links to their runs."""
    df, best = summary.trials, summary.trials.loc[summary.winner]

    def link(row) -> str:
        name = str(row["run_name"] or row["trial_id"])
        run_id = run_ids.get(str(row["trial_id"]))
        if run_id is None or experiment_id is None:
            return name
        return f"[{name}](#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW})"

    def table(rows: pd.DataFrame) -> list[str]:
        lines = [
            "| trial | silhouette (val) | reconstruction MSE (val) | clusterer | NMI | accuracy |",
            "|---|---|---|---|---|---|",
        ]
        for i, row in rows.iterrows():
            mark = "★ " if i == summary.winner else ""
            lines.append(
                f"| {mark}{link(row)} | {row[N.SILHOUETTE]:.4f} | {row[N.RECON_LOSS]:.5f} | "
                f"{row.get(N.BEST_CLUSTERER, '')} | {_fmt(row.get('test_nmi'))} | "
                f"{_fmt(row.get('test_acc'))} |"
            )
        return lines

    ok = df[N.STATUS] == N.Status.OK
    baselines = df[(df["point"] != "") & ok]
    counts = ", ".join(f"{v} {k}" for k, v in df[N.STATUS].value_counts().items())
    lines = [
        f"## Winner: {link(best)}",
        "",
        f"Chosen as the trial {summary.rule}. Objectives: validation silhouette of the better "
        "clusterer (up) and validation reconstruction MSE (down); NMI and accuracy (test split, "
        "that clusterer) are reported only, never used to select.",
        "",
        f"{len(df)} trials: {counts}.",
    ]
    if summary.hypervolume:
        sil_ref, loss_ref = summary.reference
        lines += [
            "",
            f"Hypervolume of the front: **{summary.hypervolume[-1]:.4f}** (share of the box "
            f"from silhouette {sil_ref:g}, loss {loss_ref:g} (the mean image's MSE) to the "
            "ideal silhouette 1, loss 0; metric `search/hypervolume` per ended trial).",
        ]
    if len(baselines):
        beats = [
            b["point"]
            for _, b in baselines.iterrows()
            if best[N.SILHOUETTE] > b[N.SILHOUETTE] and best[N.RECON_LOSS] < b[N.RECON_LOSS]
        ]
        verdict = (
            f"It beats {', '.join(beats)} in both objectives."
            if beats
            else "It beats no baseline in both objectives: it is a trade-off against them."
        )
        lines += ["", "### Winner against the baselines", "", verdict, ""]
        lines += table(pd.concat([df.loc[[summary.winner]], baselines]))
    lines += ["", "### Pareto front", ""]
    lines += table(df.loc[summary.front.index])
    lines += ["", "Files: `all_trials.csv`, `pareto.csv`, `pareto_front.png`, `best_config.yaml`."]
    return "\n".join(lines)


def _fmt(value) -> str:
    try:
        return f"{float(value):.3f}" if math.isfinite(float(value)) else "-"
    except (TypeError, ValueError):
        return "-"


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
    lines.append(f"\nPareto front (* = chosen winner: {summary.rule}):")
    lines.append(_table(df.loc[summary.front.index], summary.winner))
    baselines = df[(df["point"] != "") & (df[N.STATUS] == N.Status.OK)]
    if len(baselines):
        lines.append(
            "\nThe winner against the baselines (NMI, accuracy: reported, not selected on):"
        )
        lines.append(_table(pd.concat([df.loc[[summary.winner]], baselines]), summary.winner))
    if summary.hypervolume:
        lines.append(
            f"\nHypervolume of the front: {summary.hypervolume[-1]:.4f} "
            f"(reference: silhouette {summary.reference[0]:g}, loss {summary.reference[1]:g})"
        )
    if version is not None:
        lines.append(f"\nWinner registered as models:/{model_name}@champion (version {version})")
    return "\n".join(lines)


def _table(rows: pd.DataFrame, winner) -> str:
    """The printed table of some trials; `*` marks the winner."""
    table = pd.DataFrame(
        {
            "": ["*" if i == winner else "" for i in rows.index],
            "trial": rows["trial_id"],
            "run": rows["run_name"],
            "silhouette": rows[N.SILHOUETTE],
            "loss": rows[N.RECON_LOSS],
            "clusterer": rows.get(N.BEST_CLUSTERER, ""),
            "NMI": rows.get("test_nmi", math.nan),
            "acc": rows.get("test_acc", math.nan),
        }
    )
    return table.to_string(index=False, float_format=lambda x: f"{x:.4f}")


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}   (the tracking server's own UI)"
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1 --port 5000"


def ui_base(tracking_uri: str) -> str:
    """The MLflow UI's address: the tracking server's, or ui_command's local one."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return "http://127.0.0.1:5000"


def ui_link(tracking_uri: str, experiment_id: str, parent_run_id: str) -> str:
    """The runs view of this search's trials, best silhouette first: MLflow's machine-learning
    view (not its GenAI pages), filtered to the children of the search's parent run."""
    query = urllib.parse.urlencode(
        {
            "workflowType": "machine_learning",
            "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            "orderByKey": f"metrics.`{N.SILHOUETTE}`",
            "orderByAsc": "false",
        },
        quote_via=urllib.parse.quote,
    )
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{query}"


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


# MLflow 3's UI shows an experiment's pages in its GenAI layout unless told otherwise.
ML_VIEW = "workflowType=machine_learning"


def _metric(key: str, value: float) -> Metric:
    return Metric(key, value, int(time.time() * 1000), 0)
