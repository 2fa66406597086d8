"""Two-objective hyperparameter search: Ray Tune schedules Optuna-guided trials, MLflow records them.

Each trial trains an autoencoder, clusters its embedding with ABO_clusterer and KMeans and reports
the validation silhouette of the better clusterer (maximised) and the validation reconstruction
loss (minimised). At the end the Pareto front and its chosen winner are printed, logged to the
search's MLflow parent run, and the winner is registered as an MLflow model with alias `champion`.

    python tune/search.py                      # default search (MNIST if available, else digits)
    python tune/search.py --smoke              # seconds: smoke space on digits, 4 trials
    python tune/search.py --dataset fashion-mnist --num-samples 24
    python tune/search.py --address auto --mlflow-uri http://HEAD:5000   # on a Ray cluster
    python tune/search.py --name my-search --resume                      # finish an interrupted one
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# `python tune/search.py` puts tune/ first on sys.path, where our module names (data, metrics, ...)
# could shadow other packages; put the repository root there instead.
_ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = _ROOT
elif _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from tune import names as N  # noqa: E402
from tune import ray_private  # noqa: E402 - imports no Ray itself
from tune.data import DATASETS, DatasetError, default_data_dir, load_dataset  # noqa: E402
from tune.store import (  # noqa: E402 - light: no mlflow/ray/torch import before the checks
    TrackingError,
    check_tracking_uri,
    default_tracking_uri,
    error_line,
    redact,
)

if TYPE_CHECKING:
    from tune.space import SearchSpace

REPO_ROOT = Path(_ROOT)
DEFAULT_STORAGE = REPO_ROOT / "ray_results"
SMOKE_SAMPLES = 4
DEFAULT_SAMPLES = 20  # with the default space: about 30 minutes on Fashion-MNIST, 2 trials at once


class UsageError(Exception):
    """Bad input found before anything started: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with bad input reported as one line (argparse's default adds the whole usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see python tune/search.py --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(
        prog="python tune/search.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--space", default="default", help="search space: a name in search_spaces/ or a YAML path"
    )
    p.add_argument(
        "--dataset",
        default="auto",
        help=f"one of {', '.join(DATASETS)}, or a directory of IDX files; auto = MNIST when on disk "
        "or downloadable, else scikit-learn's digits",
    )
    p.add_argument(
        "--data-dir", default=str(default_data_dir()), help="where datasets are read/downloaded"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=1 / 6,
        help="share of train held out for the objectives",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help=f"trials to run (default: {DEFAULT_SAMPLES}; smoke: {SMOKE_SAMPLES})",
    )
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="stop the search after this many minutes (running trials end as incomplete)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials at once (default: as many as resources allow)",
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per trial")
    p.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (fractions share a GPU)"
    )
    p.add_argument(
        "--address",
        default=None,
        help="join an existing Ray cluster ('auto' or host:port); default: start Ray locally",
    )
    p.add_argument(
        "--mlflow-uri",
        default=None,
        help="MLflow tracking URI (default: sqlite store under mlflow/store/)",
    )
    p.add_argument("--experiment", default="clustertune", help="MLflow experiment name")
    p.add_argument(
        "--model-name", default="clustertune", help="registered model name for the winner"
    )
    p.add_argument(
        "--storage-path",
        default=str(DEFAULT_STORAGE),
        help="Ray Tune results (shared storage on a cluster)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="search name (Tune experiment and MLflow parent run); default: search-<time>",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume the search --name from --storage-path (with its own space, data and seed), "
        "or log what MLflow misses of it",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every trial")
    p.add_argument(
        "--scheduler",
        choices=("fifo", "asha"),
        default="fifo",
        help="asha stops trials early on validation reconstruction loss",
    )
    p.add_argument(
        "--weights",
        type=float,
        nargs=2,
        default=(1.0, 1.0),
        metavar=("W_SIL", "W_RECON"),
        help="winner rule weights",
    )
    p.add_argument(
        "--winner-among",
        choices=("improvements", "front"),
        default="improvements",
        help="improvements: the winner beats every trial of the space's points_to_evaluate (the "
        "documents' configurations) in both objectives whenever some front trial does; front: "
        "the whole front (README: How the winner is chosen)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="retries of a failed trial (from its last checkpoint)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny search: smoke space, digits, {SMOKE_SAMPLES} trials",
    )
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[SearchSpace, int]:
    """Everything that can be checked before Ray or MLflow start. Raises UsageError."""
    if args.smoke:
        args.space = "smoke" if args.space == "default" else args.space
        args.dataset = "digits" if args.dataset == "auto" else args.dataset
    if args.num_samples is not None and args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if not args.cpus_per_trial > 0:
        raise UsageError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    if not args.gpus_per_trial >= 0:
        raise UsageError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if not 0 <= args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if min(args.weights) < 0 or max(args.weights) <= 0 or not all(map(math.isfinite, args.weights)):
        raise UsageError(f"--weights must be >= 0 and not all 0, got {list(args.weights)}")
    if args.max_failures < 0:
        raise UsageError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.resume and not args.name:
        raise UsageError("--resume needs --name (the search to resume)")
    if args.name is not None and (not args.name or "/" in args.name):
        raise UsageError(f"--name {args.name!r}: must be non-empty and contain no '/'")
    from tune.space import SpaceError, load_space  # imports torch: after the cheap checks

    try:
        space = load_space(args.space)
    except SpaceError as e:
        raise UsageError(str(e)) from None
    if args.time_budget_min is not None and not args.time_budget_min > 0:
        raise UsageError(f"--time-budget-min must be > 0, got {args.time_budget_min}")
    n = args.num_samples or (SMOKE_SAMPLES if args.smoke else DEFAULT_SAMPLES)
    if space.max_trials is not None:
        n = min(n, space.max_trials)
    return space, n


# In the experiment directory: what a search was started with that --resume must reuse (Tune
# restores its own state, not our data set, space, seed or winner weights).
SETTINGS_FILE = "clustertune.json"
RESUMED_SETTINGS = (
    "space",
    "dataset",
    "data_dir",
    "val_fraction",
    "seed",
    "weights",
    "winner_among",
)


def resumed_settings(args: argparse.Namespace) -> None:
    """For --resume, replace RESUMED_SETTINGS in `args` by those the search was started with."""
    if not (args.resume and args.name):
        return
    text = _read_text(f"{storage_location(args.storage_path, args.name)[1]}/{SETTINGS_FILE}")
    if text is not None:
        for key, value in json.loads(text).items():
            if key in RESUMED_SETTINGS:
                setattr(args, key, value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    resumed_settings(args)
    try:
        # The tracking store first, before check_args imports torch: a dead server is reported
        # within 10 seconds of the command.
        tracking_uri = args.mlflow_uri or default_tracking_uri()
        check_tracking_uri(tracking_uri)
        space, num_samples = check_args(args)
        dataset = load_dataset(
            args.dataset, args.data_dir, val_fraction=args.val_fraction, seed=args.seed
        )
        depth = _max_conv_depth(space)
        h, w = dataset.image_shape
        if h % 2**depth or w % 2**depth:
            raise UsageError(
                f"{space.path}: parameters.conv_depth: up to {depth} stages do not fit "
                f"{dataset.name}'s {h}x{w} images"
            )
    except (UsageError, DatasetError, TrackingError) as e:  # check_args wraps SpaceError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dataset == "auto" and dataset.name != "mnist":
        print(
            "="
            * 78
            + f"\nMNIST is not on disk under {args.data_dir}/MNIST/raw and could not be downloaded:"
            " using scikit-learn's 8x8 digits instead.\nPut MNIST's four IDX files there, or pass "
            "--dataset fashion-mnist (apt-get install dataset-fashion-mnist) or --dataset DIR.\n"
            + "="
            * 78,
            flush=True,
        )
    return run_search(args, space, num_samples, dataset, tracking_uri)


def _max_conv_depth(space: SearchSpace) -> int:
    depths = [pt.get("conv_depth", 0) for pt in space.points]
    p = space.parameters.get("conv_depth")
    if p is not None:
        depths += [p.high or 0, p.value or 0, *(c for c in p.choices if isinstance(c, int))]
    return int(max(depths, default=0))


def storage_location(storage_path: str, name: str) -> tuple[str, str]:
    """(storage, experiment dir) as Tune wants them: a URI (s3://, gs://, file://: shared storage
    on a cluster) stays as given, a local path becomes absolute (trials run in other directories)."""
    if "://" in storage_path:
        storage = storage_path.rstrip("/")
        return storage, f"{storage}/{name}"
    storage = str(Path(storage_path).resolve())
    return storage, str(Path(storage) / name)


def _fs(location: str):
    """(pyarrow filesystem, path) of an absolute local path or a storage URI, as Tune reads them."""
    from pyarrow.fs import FileSystem

    return FileSystem.from_uri(location)


def _exists(location: str) -> bool:
    from pyarrow.fs import FileType

    fs, path = _fs(location)
    return fs.get_file_info(path).type != FileType.NotFound


def _read_text(location: str) -> str | None:
    """A small file's text; None if it does not exist."""
    from pyarrow.fs import FileType

    fs, path = _fs(location)
    if fs.get_file_info(path).type != FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _write_text(location: str, text: str) -> None:
    """Write a small file, creating its directory."""
    fs, path = _fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def run_search(args, space: SearchSpace, num_samples: int, dataset, tracking_uri: str) -> int:
    """Start Ray and MLflow, run the Tuner, select and record the winner. Returns the exit code."""
    # Heavy imports only once the input is known to be good: bad input fails in about a second.
    from ray import tune

    from mlflow import MlflowClient
    from tune import report
    from tune.store import fail_fast_http, prepare_store
    from tune.tracking import (
        MLflowTrialLogger,
        find_search_run,
        get_or_create_experiment,
        start_search_run,
    )

    # The objectives exist only in a trial's final result (per-epoch results carry the losses), which
    # is all a multi-objective OptunaSearch reads; Ray's documented switch for that:
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune adds a TensorBoard logger to the CSV and JSON ones its result analysis needs; MLflow is
    # this project's UI, and writing event files for every epoch of every trial costs the driver
    # time each trial waits for (tune.report blocks until the driver has taken the result). The
    # two needed ones are passed explicitly (make_tuner).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    name = args.name or time.strftime("search-%Y%m%d-%H%M%S")
    storage, experiment_dir = storage_location(args.storage_path, name)
    if args.resume and not tune.Tuner.can_restore(experiment_dir):
        print(f"error: --resume: no Tune experiment to resume at {experiment_dir}", file=sys.stderr)
        return 2
    if not args.resume and _exists(experiment_dir):
        print(
            f"error: --name {name}: {experiment_dir} exists; pass --resume or another --name",
            file=sys.stderr,
        )
        return 2

    fail_fast_http()
    prepare_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, args.experiment, tracking_uri)
    parent_run_id = find_search_run(client, experiment_id, name) if args.resume else None
    if parent_run_id is None:
        params = {
            "space": str(space.path),
            "num_samples": num_samples,
            "seed": args.seed,
            "scheduler": args.scheduler,
            "cpus_per_trial": args.cpus_per_trial,
            "gpus_per_trial": args.gpus_per_trial,
            "max_concurrent": args.max_concurrent,
            "weights": list(args.weights),
            "winner_among": args.winner_among,
            "storage_path": storage,
            **{f"dataset.{k}": v for k, v in dataset.summary().items()},
        }
        parent_run_id = start_search_run(client, experiment_id, name, params, space.path)

    logger = MLflowTrialLogger(tracking_uri, experiment_id, parent_run_id)
    start = time.time()
    if args.resume and tune_finished(experiment_dir):
        # Nothing left for Tune to run (e.g. resumed after a tracking-server outage): read the
        # results from disk and complete MLflow below, without starting Ray.
        print(f"{experiment_dir}: every trial finished; logging what MLflow misses", flush=True)
        results = tune.ResultGrid(tune.ExperimentAnalysis(str(experiment_dir)))
    else:
        if not args.resume:
            settings = {key: getattr(args, key) for key in RESUMED_SETTINGS}
            # the space's file and the data set as resolved ("auto" -> a name, a directory: absolute)
            data = dataset.name if dataset.name in DATASETS else dataset.source
            settings.update(space=str(Path(space.path).resolve()), dataset=data)
            _write_text(f"{experiment_dir}/{SETTINGS_FILE}", json.dumps(settings, indent=1))
        tuner = make_tuner(args, space, num_samples, dataset, name, storage, logger)
        results = tuner.fit()
    elapsed = time.time() - start
    # From here on MLflow may be down: every result is safe in Ray's experiment directory, the
    # summary is printed anyway, and `--resume` logs whatever is missing once the store is back.
    complete = True
    try:  # whatever the callback could not log (store down, driver restarted) is logged now
        fixed = logger.sync(results)
        if fixed:
            print(f"MLflow: completed {fixed} trial run(s) from Ray's results", flush=True)
    except Exception as e:  # noqa: BLE001 - results are safe in Ray's experiment directory
        complete = False
        _warn_mlflow("sync of the trials", e)
    champion = None
    with tempfile.TemporaryDirectory() as tmp:
        weights = dict(zip(N.OBJECTIVES, args.weights, strict=True))
        named_points = list(zip(space.point_names, space.points, strict=True))
        summary = report.summarise(
            results, Path(tmp), weights, named_points, args.winner_among == "improvements"
        )
        if complete:
            try:
                report.log_summary(client, parent_run_id, summary)
                champion = _champion(client, parent_run_id, summary, dataset, args, tracking_uri)
                client.set_tag(parent_run_id, "elapsed_s", f"{elapsed:.1f}")
                client.set_terminated(parent_run_id, "FINISHED")
            except Exception as e:  # noqa: BLE001 - as above
                complete = False
                _warn_mlflow("logging of the summary", e)
    print(report.format_summary(summary, champion, args.model_name, elapsed))
    if not complete:
        print(
            f"\nMLflow misses part of this search ({experiment_dir} has all of it). Once "
            f"{redact(tracking_uri)} answers again, log the rest with:\n  "
            + shlex.join(
                [
                    "python",
                    "tune/search.py",
                    "--resume",
                    "--name",
                    name,
                    "--storage-path",
                    str(storage),
                    "--mlflow-uri",
                    redact(tracking_uri),
                    "--experiment",
                    args.experiment,
                    "--model-name",
                    args.model_name,
                ]
            ),
            file=sys.stderr,
        )
        return 3
    print(f"\nOpen these runs in the MLflow UI:\n  {report.ui_command(tracking_uri)}")
    return 0 if summary.front is not None and len(summary.front) else 1


def make_tuner(args, space: SearchSpace, num_samples: int, dataset, name, storage, logger):
    """Start Ray (or join --address) and build the Tuner: a new one, or the restored --name."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tune.searcher import make_searcher
    from tune.tracking import MLflowTrialLogger
    from tune.trial import trainable

    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False, log_to_driver=True)
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    fn = tune.with_resources(tune.with_parameters(trainable, data=dataset), resources)
    run_config = tune.RunConfig(
        name=name,
        storage_path=storage,
        callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), logger],
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=1,
    )
    if args.resume:
        experiment_dir = storage_location(storage, name)[1]
        tuner = tune.Tuner.restore(experiment_dir, trainable=fn, resume_errored=True)
        # Restore brings back the run config pickled with the experiment, callbacks included: a
        # logger bound to the MLflow URI and parent run of the first start. Ray has no public way
        # to pass new callbacks, so this one (this command's --mlflow-uri) replaces it.
        others = [c for c in ray_private.callbacks(tuner) if not isinstance(c, MLflowTrialLogger)]
        ray_private.set_callbacks(tuner, [*others, logger])
    else:
        searcher = make_searcher(space, args.seed)
        scheduler = (
            ASHAScheduler(metric=N.VAL_LOSS, mode="min", time_attr=N.EPOCH, grace_period=1)
            if args.scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=args.max_concurrent,
                reuse_actors=True,  # one worker process per slot: torch/numba import once, not per trial
                time_budget_s=args.time_budget_min * 60 if args.time_budget_min else None,
            ),
            run_config=run_config,
        )
    return tuner


def tune_finished(experiment_location: str) -> bool:
    """True when Tune would have nothing left to run: the searcher has created all its trials
    and every trial in the saved experiment state TERMINATED. Reads Tune's own state files; any
    surprise in them, or remote storage, means False (then --resume restores the Tuner as usual)."""
    if "://" in experiment_location:
        return False
    experiment_dir = Path(experiment_location)
    try:
        statuses = ray_private.saved_trial_statuses(experiment_dir)
        if not statuses or not ray_private.searcher_created_all(experiment_dir):
            return False
        return all(s == ray_private.TERMINATED for s in statuses.values())
    except Exception:  # noqa: BLE001 - an unknown format: let Tune decide
        return False


def _warn_mlflow(what: str, e: Exception) -> None:
    print(f"warning: MLflow {what} failed: {error_line(e)}", file=sys.stderr)


# Parent-run tags recording the registered winner, so a repeated --resume registers it only once.
CHAMPION_TRIAL_TAG = "champion.trial_id"
CHAMPION_VERSION_TAG = "champion.version"


def _champion(client, parent_run_id: str, summary, dataset, args, tracking_uri: str):
    """Register the winner as `models:/<model-name>@champion` unless this search already did."""
    if summary.winner_dir is None:
        return None
    from tune.champion import log_champion

    trial_id = str(summary.trials.loc[summary.winner, "trial_id"])
    tags = client.get_run(parent_run_id).data.tags
    if tags.get(CHAMPION_TRIAL_TAG) == trial_id and CHAMPION_VERSION_TAG in tags:
        return None, tags[CHAMPION_VERSION_TAG]
    example = dataset.x_val[:5] if len(dataset.x_val) else dataset.x_train[:5]
    champion = log_champion(
        summary.winner_dir, parent_run_id, args.model_name, example, tracking_uri
    )
    client.set_tag(parent_run_id, CHAMPION_TRIAL_TAG, trial_id)
    client.set_tag(parent_run_id, CHAMPION_VERSION_TAG, champion[1])
    return champion


if __name__ == "__main__":
    sys.exit(main())
