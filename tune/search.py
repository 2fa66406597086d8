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
import logging  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
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
    from mlflow import MlflowClient
    from tune.space import SearchSpace
    from tune.tracking import MLflowTrialLogger

REPO_ROOT = Path(_ROOT)
DEFAULT_STORAGE = REPO_ROOT / "ray_results"
SMOKE_SAMPLES = 4
DEFAULT_SAMPLES = 20  # the default space's budget; its wall time is in the README


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
        choices=N.SCHEDULERS,
        default=None,
        help="asha stops trials early on validation reconstruction loss; mo-asha on both "
        "objectives, ranked at rungs G, 3G, 9G, ... of --grace-period (the space's points are "
        "never stopped). Default: the space's `scheduler` (default.yaml: mo-asha, rungs at 60, "
        "180, ... seconds of a trial), else fifo",
    )
    p.add_argument(
        "--time-attr",
        choices=N.TIME_ATTRS,
        default=None,
        help="asha and mo-asha: what rungs count, epochs or seconds since the trial started. "
        "Default: the space's, else epoch",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=None,
        metavar="G",
        help="asha and mo-asha: the first rung, where a trial can first be stopped (rungs at G, "
        "3G, 9G, ... of --time-attr). Default: the space's, else 1 (Ray's ASHA default)",
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
        "--verbose",
        action="store_true",
        help="show Ray Tune's own tables and the workers' output too (they always go to the "
        "search's log file)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny search: smoke space, digits, {SMOKE_SAMPLES} trials",
    )
    return p.parse_args(argv)


@dataclass(frozen=True)
class Settings:
    """The command's arguments once checked and resolved (--smoke's defaults, --resume's saved
    settings, the name, where results go, how many trials). Nothing changes it afterwards."""

    args: argparse.Namespace  # as parsed, for the fields below that simply repeat it
    space: SearchSpace
    num_samples: int
    tracking_uri: str
    name: str
    storage: str  # Tune's storage_path: an absolute local path or a URI
    experiment_dir: str

    def __getattr__(self, key: str):  # s.seed, s.weights, ...: the parsed value
        return getattr(self.__dict__["args"], key)

    @property
    def scheduler(self) -> str:
        """--scheduler, else the space's."""
        return self.args.scheduler or self.space.scheduler

    @property
    def grace_period(self) -> int:
        """--grace-period, else the space's."""
        return self.args.grace_period or self.space.grace_period

    @property
    def time_attr(self) -> str:
        """--time-attr, else the space's."""
        return self.args.time_attr or self.space.time_attr

    def for_dataset(self, name: str) -> Settings:
        """These settings with the space the current one names for data set `name`
        (`dataset_spaces`), if any."""
        space = self.space.for_dataset(name)
        if space is self.space:
            return self
        return replace(self, space=space, num_samples=num_samples(self.args, space))


def scheduler_summary(s: Settings) -> str:
    """'fifo scheduler', or where asha and mo-asha decide: 'mo-asha scheduler (rungs at 60, 180,
    540, ... s)'."""
    from tune.mo_asha import rung_milestones  # both schedulers' rungs (make_scheduler)

    if s.scheduler == "fifo":
        return "fifo scheduler"
    rungs = rung_milestones(s.grace_period)[:3]
    unit = "s" if s.time_attr == N.TIME_TOTAL else "epochs"
    return f"{s.scheduler} scheduler (rungs at {', '.join(map(str, rungs))}, ... {unit})"


def num_samples(args: argparse.Namespace, space: SearchSpace) -> int:
    """Trials to run: --num-samples, or the default, and never more than a points-only space has."""
    n = args.num_samples or (SMOKE_SAMPLES if args.smoke else DEFAULT_SAMPLES)
    return n if space.max_trials is None else min(n, space.max_trials)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of `args` with --smoke's defaults and, for --resume, the RESUMED_SETTINGS the search
    was started with (Tune restores its own state, not our data set, space, seed or weights)."""
    values = dict(vars(args))
    if args.smoke:
        values["space"] = "smoke" if args.space == "default" else args.space
        values["dataset"] = "digits" if args.dataset == "auto" else args.dataset
    if args.resume and args.name:
        text = _read_text(f"{storage_location(args.storage_path, args.name)[1]}/{SETTINGS_FILE}")
        if text is not None:
            saved = json.loads(text)
            values.update({k: v for k, v in saved.items() if k in RESUMED_SETTINGS})
            if "time_attr" not in saved:  # saved before rungs could count seconds
                values["time_attr"] = N.EPOCH
    return argparse.Namespace(**values)


def check_args(args: argparse.Namespace) -> Settings:
    """Everything that can be checked before Ray or MLflow start. Raises UsageError."""
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
    if args.grace_period is not None and args.grace_period < 1:
        raise UsageError(f"--grace-period must be >= 1, got {args.grace_period}")
    if args.max_failures < 0:
        raise UsageError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.resume and not args.name:
        raise UsageError("--resume needs --name (the search to resume)")
    if args.name is not None and (not args.name or "/" in args.name):
        raise UsageError(f"--name {args.name!r}: must be non-empty and contain no '/'")
    if args.time_budget_min is not None and not args.time_budget_min > 0:
        raise UsageError(f"--time-budget-min must be > 0, got {args.time_budget_min}")
    from tune.space import SpaceError, load_space  # imports torch: after the cheap checks

    try:
        space = load_space(args.space)
    except SpaceError as e:
        raise UsageError(str(e)) from None
    if args.time_attr not in (None, space.time_attr) and args.grace_period is None:
        raise UsageError(
            f"--time-attr {args.time_attr}: the space's grace_period counts {space.time_attr}; "
            f"give --grace-period in {args.time_attr} too"
        )
    if args.address is None:  # a local Ray gets at most this machine (start_ray checks Ray's own)
        import torch

        machine = {"cpu": os.cpu_count() or 1, "gpu": torch.cuda.device_count()}
        for kind, has in machine.items():
            asked = getattr(args, f"{kind}s_per_trial")
            if asked > has:
                raise UsageError(
                    f"--{kind}s-per-trial {asked:g}: this machine has {has} {kind.upper()}s"
                )
    n = num_samples(args, space)
    name = args.name or time.strftime("search-%Y%m%d-%H%M%S")
    storage, experiment_dir = storage_location(args.storage_path, name)
    tracking_uri = args.mlflow_uri or default_tracking_uri()
    return Settings(args, space, n, tracking_uri, name, storage, experiment_dir)


# In the experiment directory: what a search was started with that --resume must reuse (Tune
# restores its own state, not our data set, space, seed or winner weights).
SETTINGS_FILE = "clustertune.json"
RESUMED_SETTINGS = (
    "scheduler",  # Tune restores its scheduler; the trainable must report what that one reads
    "grace_period",
    "time_attr",
    "num_samples",  # Tune restores its own; ours says how many were asked
    "space",
    "dataset",
    "data_dir",
    "val_fraction",
    "seed",
    "weights",
    "winner_among",
)


def main(argv: list[str] | None = None) -> int:
    args = resolve_args(parse_args(argv))
    try:
        # The tracking store first, before check_args imports torch: a dead server is reported
        # within 10 seconds of the command.
        check_tracking_uri(args.mlflow_uri or default_tracking_uri())
        s = check_args(args)
        dataset = load_dataset(s.dataset, s.data_dir, val_fraction=s.val_fraction, seed=s.seed)
        if not s.resume:  # a resumed search keeps the space it was started with
            s = s.for_dataset(dataset.name)
        depth = _max_conv_depth(s.space)
        h, w = dataset.image_shape
        if h % 2**depth or w % 2**depth:
            raise UsageError(
                f"{s.space.path}: parameters.conv_depth: up to {depth} stages do not fit "
                f"{dataset.name}'s {h}x{w} images"
            )
    except (UsageError, DatasetError, TrackingError) as e:  # check_args wraps SpaceError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if s.dataset == "auto" and dataset.name != "mnist":
        print(
            "="
            * 78
            + f"\nMNIST is not on disk under {s.data_dir}/MNIST/raw and could not be downloaded:"
            " using scikit-learn's 8x8 digits instead.\nPut MNIST's four IDX files there, or pass "
            "--dataset fashion-mnist (apt-get install dataset-fashion-mnist) or --dataset DIR.\n"
            + "="
            * 78,
            flush=True,
        )
    return run_search(s, dataset)


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


def log_path(s: Settings) -> Path:
    """The search's log file: in the experiment directory, or for remote storage (where a file
    cannot be appended to as it grows) in the system's temporary directory."""
    if "://" in s.experiment_dir:
        return Path(tempfile.gettempdir()) / "clustertune" / s.name / LOG_FILE
    return Path(s.experiment_dir) / LOG_FILE


LOG_FILE = "search.log"


def run_search(s: Settings, dataset) -> int:
    """Start Ray and MLflow, run the Tuner, select and record the winner. Returns the exit code.
    Everything after the first checks runs inside a ConsoleLog (tune/console.py)."""
    from tune.console import ConsoleLog  # heavy imports only once the input is known to be good

    error = _check_experiment_dir(s)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log = log_path(s)
    created = log.parent  # the highest directory the log creates: removed again on bad input
    while not created.parent.exists():
        created = created.parent
    new_dir = not s.resume and not created.exists()
    with ConsoleLog(log, verbose=s.verbose):
        code = _run_logged(s, dataset, log)
    if code == 2 and new_dir:  # bad input found once Ray ran: leave nothing behind
        shutil.rmtree(created, ignore_errors=True)
    return code


def _run_logged(s: Settings, dataset, log: Path) -> int:
    """run_search's steps, inside its ConsoleLog."""
    from tune import report
    from tune.console import say

    error = None
    if not (s.resume and tune_finished(s.experiment_dir)):
        try:
            error = start_ray(s)
        except KeyboardInterrupt:
            say("\nInterrupted before any trial started.", err=True)
            return 130
    if error:
        say(f"error: {error}", err=True)
        return 2
    action = "resuming" if s.resume else "starting"
    say(
        f"Search {s.name} ({action}): {s.num_samples} trials of {s.space.path.name} on "
        f"{dataset.name}, {scheduler_summary(s)}. Log: {log}"
    )
    tracking = open_tracking(s, dataset)
    link = report.ui_link(s.tracking_uri, tracking.experiment_id, tracking.parent_run_id)
    say(f"MLflow: {link}")
    start = time.time()
    results, interrupted = run_tuner(s, dataset, tracking.logger)
    if interrupted:
        return stop_interrupted(s, tracking, results)
    elapsed = time.time() - start
    # From here on MLflow may be down: every result is safe in Ray's experiment directory, the
    # summary is printed anyway, and `--resume` logs whatever is missing once the store is back.
    complete = sync_trials(tracking.logger, results)
    summary, version, complete = summarise(s, dataset, tracking, results, elapsed, complete)
    say(report.format_summary(summary, version, s.model_name, elapsed))
    if not complete:
        say(recovery_hint(s), err=True)
        return 3
    parent = report.run_link(s.tracking_uri, tracking.experiment_id, tracking.parent_run_id)
    say(f"\nOpen these runs in the MLflow UI:\n  {report.ui_command(s.tracking_uri)}")
    say(f"  trials, best silhouette first: {link}\n  the search's run and its note: {parent}")
    return 0 if summary.front is not None and len(summary.front) else 1


def _quiet_tune() -> None:
    """Ray Tune settings this search needs before Tune is imported."""
    # The objectives exist only in a trial's final result (per-epoch results carry the losses),
    # which is all a multi-objective OptunaSearch reads; Ray's documented switch for that:
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune adds a TensorBoard logger to the CSV and JSON ones its result analysis needs; MLflow is
    # this project's UI, and writing event files for every epoch of every trial costs the driver
    # time each trial waits for (tune.report blocks until the driver has taken the result). The
    # two needed ones are passed explicitly (make_tuner).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # After Ctrl-C Tune logs how to resume through its Python API (`Tuner.restore(...)`); this
    # search prints its own command instead.
    logging.getLogger("ray.tune.tune").addFilter(lambda r: "Tuner.restore(" not in r.getMessage())


def _check_experiment_dir(s: Settings) -> str | None:
    """Why the experiment directory does not fit --resume (or a new search), or None."""
    _quiet_tune()
    from ray import tune

    if s.resume and not tune.Tuner.can_restore(s.experiment_dir):
        return f"--resume: no Tune experiment to resume at {s.experiment_dir}"
    if s.resume and _moved_with_trials_to_create(s):
        return (
            f"--resume: {s.experiment_dir} was started at {_first_location(s)} and has trials "
            "left to create, which Ray would put there: move it back and resume it there"
        )
    if not s.resume and _exists(s.experiment_dir):
        return f"--name {s.name}: {s.experiment_dir} exists; pass --resume or another --name"
    return None


def _first_location(s: Settings) -> str | None:
    text = _read_text(f"{s.experiment_dir}/{SETTINGS_FILE}")
    return json.loads(text).get("experiment_dir") if text else None


def _moved_with_trials_to_create(s: Settings) -> bool:
    """Whether the experiment moved since its first start while its searcher has trials left to
    create: Ray 2.60 restores the trials it has at the new place, but creates new ones from the
    experiment spec pickled in its search generator state, under the first start's path. Only
    known for a local experiment directory."""
    first = _first_location(s)
    if first is None or first == s.experiment_dir or "://" in s.experiment_dir:
        return False
    try:
        return not ray_private.searcher_created_all(Path(s.experiment_dir))
    except Exception:  # noqa: BLE001 - an unknown format: let Tune try
        return False


@dataclass(frozen=True)
class Tracking:
    """The search's MLflow side: client, experiment, parent run and the trials' logger."""

    client: MlflowClient
    experiment_id: str
    parent_run_id: str
    logger: MLflowTrialLogger
    reference: tuple[float, float]  # the hypervolume's (silhouette, loss) reference point


def open_tracking(s: Settings, dataset) -> Tracking:
    """The MLflow experiment and the search's parent run (found again on --resume)."""
    from mlflow import MlflowClient
    from tune.store import fail_fast_http, prepare_store
    from tune.tracking import (
        MLflowTrialLogger,
        dataset_input,
        find_search_run,
        get_or_create_experiment,
        start_search_run,
    )

    fail_fast_http()
    prepare_store(s.tracking_uri)
    client = MlflowClient(s.tracking_uri)
    experiment_id = get_or_create_experiment(client, s.experiment, s.tracking_uri)
    parent_run_id = find_search_run(client, experiment_id, s.name) if s.resume else None
    new_parent = parent_run_id is None
    data_input = dataset_input(dataset.summary(), dataset.digest())
    reference = hypervolume_reference(dataset)
    if parent_run_id is None:
        params = {
            "space": str(s.space.path),
            "num_samples": s.num_samples,
            "seed": s.seed,
            "scheduler": s.scheduler,
            "grace_period": s.grace_period,
            "time_attr": s.time_attr,
            "rank_within": list(s.space.rank_within) if s.scheduler == "mo-asha" else [],
            "cpus_per_trial": s.cpus_per_trial,
            "gpus_per_trial": s.gpus_per_trial,
            "max_concurrent": s.max_concurrent,
            "weights": list(s.weights),
            "winner_among": s.winner_among,
            "storage_path": s.storage,
            "hypervolume.reference": list(reference),
            **{f"dataset.{k}": v for k, v in dataset.summary().items()},
        }
        parent_run_id = start_search_run(
            client, experiment_id, s.name, params, s.space.path, dataset=data_input
        )
    else:
        _reopen_interrupted(client, experiment_id, parent_run_id)
    points = list(zip(s.space.point_names, s.space.points, strict=True))
    logger = MLflowTrialLogger(
        s.tracking_uri,
        experiment_id,
        parent_run_id,
        points=points,
        reference=reference,
        dataset=data_input,
        new_parent=new_parent,
    )
    return Tracking(client, experiment_id, parent_run_id, logger, reference)


def hypervolume_reference(dataset) -> tuple[float, float]:
    """(silhouette 0, the loss of reconstructing every image as the mean image): what a
    clustering no better than chance and an autoencoder that learnt nothing score. Fixed by the
    data before the search, so hypervolumes of searches on the same data compare."""
    return 0.0, round(dataset.mean_image_loss(), 6)


def run_tuner(s: Settings, dataset, logger: MLflowTrialLogger):
    """(Tune's ResultGrid, whether Ctrl-C stopped the search). The grid comes from a new or
    restored Tuner, or, when --resume finds every trial done (e.g. after a tracking-server
    outage), from disk without starting Ray; it is None when a second Ctrl-C cut Tune short."""
    from ray import tune

    from tune.console import say

    if s.resume and tune_finished(s.experiment_dir):
        say(f"{s.experiment_dir}: every trial finished; logging what MLflow misses")
        return tune.ResultGrid(tune.ExperimentAnalysis(str(s.experiment_dir))), False
    journal = journal_location(s)
    if not s.resume:
        saved = {key: getattr(s, key) for key in RESUMED_SETTINGS}
        # the space's file and the data set as resolved ("auto" -> a name, a directory: absolute)
        data = dataset.name if dataset.name in DATASETS else dataset.source
        saved.update(space=str(Path(s.space.path).resolve()), dataset=data)
        saved.update(experiment_dir=s.experiment_dir)  # where it started: --resume compares
        _write_text(f"{s.experiment_dir}/{SETTINGS_FILE}", json.dumps(saved, indent=1))
        journal.unlink(missing_ok=True)  # outside the experiment (remote storage): a stale one
    where = (
        "" if _is_local(s.experiment_dir) else " (kept on this machine: --storage-path is remote)"
    )
    say(f"Optuna study {s.name}: {journal}{where}")
    with _SigintSeen() as sigint:
        try:
            results = make_tuner(s, dataset, logger, journal).fit()
        except KeyboardInterrupt:  # a second Ctrl-C: Tune's handler is gone
            results = None
    return results, sigint.seen or results is None


def sync_trials(logger: MLflowTrialLogger, results) -> bool:
    """Log whatever the callback could not (store down, driver restarted); False if MLflow failed."""
    from tune.console import say

    try:
        fixed = logger.sync(results)
        if fixed:
            say(f"MLflow: completed {fixed} trial run(s) from Ray's results")
        return True
    except Exception as e:  # noqa: BLE001 - results are safe in Ray's experiment directory
        _warn_mlflow("sync of the trials", e)
        return False


def summarise(s: Settings, dataset, tracking: Tracking, results, elapsed: float, complete: bool):
    """(summary, registered champion version or None, whether MLflow holds everything)."""
    from tune import report
    from tune.trial_runs import TRIAL_TAG

    version = None
    with tempfile.TemporaryDirectory() as tmp:
        weights = dict(zip(N.OBJECTIVES, s.weights, strict=True))
        named_points = list(zip(s.space.point_names, s.space.points, strict=True))
        summary = report.summarise(
            results,
            Path(tmp),
            weights,
            named_points,
            s.winner_among == "improvements",
            reference=tracking.reference,
        )
        if complete:
            client, parent = tracking.client, tracking.parent_run_id
            try:
                run_ids = {
                    run.data.tags[TRIAL_TAG]: run.info.run_id
                    for run in tracking.logger.runs.child_runs()
                    if TRIAL_TAG in run.data.tags
                }
                report.log_summary(client, parent, summary, tracking.experiment_id, run_ids)
                version = _champion(client, parent, summary, dataset, s, run_ids)
                client.set_tag(parent, "elapsed_s", f"{elapsed:.1f}")
                client.set_terminated(parent, "FINISHED")
            except Exception as e:  # noqa: BLE001 - as above
                complete = False
                _warn_mlflow("logging of the summary", e)
    return summary, version, complete


def recovery_hint(s: Settings) -> str:
    """What to run once the tracking store answers again."""
    return (
        f"\nMLflow misses part of this search ({s.experiment_dir} has all of it). Once "
        f"{redact(s.tracking_uri)} answers again, log the rest with:\n  " + resume_command(s)
    )


def resume_command(s: Settings) -> str:
    """The command that resumes this search, or logs what MLflow misses of it. Tune restores
    its own settings and clustertune.json ours; the trials' resources and where Ray, MLflow and
    the results are come from the command line."""
    command = ["python", "tune/search.py", "--resume", "--name", s.name]
    command += ["--storage-path", str(s.storage)]
    if s.address:
        command += ["--address", s.address]
    command += ["--mlflow-uri", redact(s.tracking_uri)]
    command += ["--experiment", s.experiment, "--model-name", s.model_name]
    defaults = parse_args([])
    for flag in ("--cpus-per-trial", "--gpus-per-trial"):
        key = flag.lstrip("-").replace("-", "_")
        if getattr(s, key) != getattr(defaults, key):
            command += [flag, f"{getattr(s, key):g}"]
    return shlex.join(command)


class _SigintSeen:
    """Whether SIGINT reached this process inside the `with` block.

    Tune's own handler acts on the first Ctrl-C: it stops the trials, saves the experiment (its
    trials as they were, so a restore resumes them) and returns from `fit` as if done. Python's
    wakeup fd shows that the signal came without replacing that handler."""

    seen = False

    def __enter__(self) -> _SigintSeen:
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self._previous)
        try:
            self.seen = signal.SIGINT in os.read(self._read, 4096)
        except BlockingIOError:  # no signal at all
            self.seen = False
        os.close(self._read)
        os.close(self._write)


def stop_interrupted(s: Settings, tracking: Tracking, results) -> int:
    """After Ctrl-C: MLflow keeps what the trials logged, and the parent run and the runs of
    unfinished trials end KILLED; no summary and no champion, since the search is not over (its
    --resume does both). Prints how many trials finished and the command that resumes the
    search. Returns 130, the shell's code for a command ended by SIGINT."""
    from ray import tune

    from tune.console import say

    tracking.logger.close()
    client = tracking.client
    try:
        for run in tracking.logger.runs.child_runs():
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
        client.set_terminated(tracking.parent_run_id, "KILLED")
    except Exception as e:  # noqa: BLE001 - --resume completes MLflow from Ray's records
        _warn_mlflow("marking the search interrupted", e)
    if not tune.Tuner.can_restore(s.experiment_dir):
        say("\nInterrupted before the search saved any state: start it again.", err=True)
        return 130
    done = ""
    if results is not None:  # a trial's final result carries its status
        finished = sum(N.is_final(dict(r.metrics or {})) for r in results)
        done = f" {finished} of {s.num_samples} trials finished;"
    say(
        f"\nInterrupted:{done} no champion registered. Resume the search with:\n  "
        + resume_command(s),
        err=True,
    )
    return 130


def _reopen_interrupted(client: MlflowClient, experiment_id: str, parent_run_id: str) -> None:
    """A resumed search runs again: its parent run and the runs its interruption KILLED."""
    from tune.tracking import PARENT_TAG

    try:
        if client.get_run(parent_run_id).info.status == "KILLED":
            client.update_run(parent_run_id, status="RUNNING")
        killed = client.search_runs(
            [experiment_id],
            f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'KILLED'",
        )
        for run in killed:
            client.update_run(run.info.run_id, status="RUNNING")
    except Exception as e:  # noqa: BLE001 - cosmetic: the runs end right when their trials do
        _warn_mlflow("reopening the interrupted runs", e)


# The Optuna study's journal (optuna-dashboard FILE), in the experiment directory when that is on
# this machine's filesystem.
JOURNAL_FILE = "optuna.journal"


def _is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def journal_location(s: Settings) -> Path:
    """Where the search's Optuna study is journaled. With remote storage (s3://, gs://) the
    journal stays on this machine, under the default storage path; Tune's pickle of the searcher
    carries it anyway, so a resume elsewhere rebuilds it (tune/searcher.py)."""
    if "://" not in s.experiment_dir:
        return Path(s.experiment_dir) / JOURNAL_FILE
    if s.experiment_dir.startswith("file://"):
        path = urllib.parse.urlparse(s.experiment_dir).path
        return Path(urllib.parse.unquote(path)) / JOURNAL_FILE
    return DEFAULT_STORAGE / "optuna-journals" / f"{s.name}.journal"


def make_scheduler(s: Settings):
    """The Tune scheduler of --scheduler (or the space's): FIFO, Ray's ASHA or mo-asha."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tune.mo_asha import MAX_RUNG, REDUCTION_FACTOR, MOASHAScheduler

    if s.scheduler == "mo-asha":
        return MOASHAScheduler(
            points=s.space.points,
            grace_period=s.grace_period,
            rank_within=s.space.rank_within,
            time_attr=s.time_attr,
        )
    if s.scheduler == "asha":
        # Ray's max_t (100 by default) stops every trial that reaches it: unbounded here, as for
        # mo-asha, so that rungs in seconds end no trial; and mo-asha's reduction factor.
        return ASHAScheduler(
            metric=N.VAL_LOSS,
            mode="min",
            time_attr=s.time_attr,
            grace_period=s.grace_period,
            reduction_factor=REDUCTION_FACTOR,
            max_t=MAX_RUNG,
        )
    return FIFOScheduler()


def make_tuner(s: Settings, dataset, logger, journal: Path):
    """The Tuner (Ray started by start_ray): a new one, or the restored --name; its Optuna study
    is journaled at `journal`."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from tune.console import ProgressPrinter
    from tune.mo_asha import MOASHAScheduler, SchedulerState, rung_milestones
    from tune.rungs import Rungs
    from tune.searcher import ClusterSearch, make_searcher
    from tune.tracking import MLflowTrialLogger
    from tune.trial import trainable

    resources = {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial}
    progress = ProgressPrinter(s.num_samples)
    # Only mo-asha reads rung values: other searches do not pay for measuring them.
    rungs = (
        Rungs(rung_milestones(s.grace_period), s.time_attr) if s.scheduler == "mo-asha" else None
    )
    fn = tune.with_resources(tune.with_parameters(trainable, data=dataset, rungs=rungs), resources)
    if s.resume:
        tuner = tune.Tuner.restore(s.experiment_dir, trainable=fn, resume_errored=True)
        # Restore brings back the run config pickled with the experiment, callbacks included: a
        # logger bound to the MLflow URI and parent run of the first start. Ray has no public way
        # to pass new callbacks, so this one (this command's --mlflow-uri) replaces it, and the
        # progress lines count this command's time.
        mine = (MLflowTrialLogger, ProgressPrinter)
        others = [c for c in ray_private.callbacks(tuner) if not isinstance(c, mine)]
        ray_private.set_callbacks(tuner, [*others, logger, progress])
        # The restored searcher would write where the experiment was when first started.
        searcher = ray_private.searcher(tuner)
        if isinstance(searcher, ClusterSearch):
            searcher.keep_journal_at(journal)
    else:
        searcher = make_searcher(s.space, s.seed, journal, s.name)
        callbacks = [CSVLoggerCallback(), JsonLoggerCallback(), logger, progress]
        scheduler = make_scheduler(s)
        if isinstance(scheduler, MOASHAScheduler):
            # first: on resume the restored callbacks keep their order, the logger is swapped
            callbacks.insert(0, SchedulerState(scheduler))
        run_config = tune.RunConfig(
            name=s.name,
            storage_path=s.storage,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        )
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=s.num_samples,
                max_concurrent_trials=s.max_concurrent,
                reuse_actors=True,  # one worker process per slot: torch/numba import once, not per trial
                time_budget_s=s.time_budget_min * 60 if s.time_budget_min else None,
            ),
            run_config=run_config,
        )
    return tuner


def start_ray(s: Settings) -> str | None:
    """Start Ray locally or join --address; then why no trial could ever run with the resources
    asked per trial, or None.

    A trial needs its CPUs and GPUs on one node. Locally, Ray has what this machine gives it and
    nothing more will come. On a cluster with no node big enough now, a placement group of one
    trial's shape waits for the autoscaler: it is removed once a node holds it, and the search
    stops if the autoscaler reports that none of its node types can (also what a cluster without
    an autoscaler config reports at once).
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=s.address, include_dashboard=False, log_to_driver=True)
    need = {"CPU": s.cpus_per_trial, "GPU": s.gpus_per_trial}
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    if any(all(r.get(k, 0) >= v for k, v in need.items()) for r in nodes):
        return None
    flags = {"CPU": "--cpus-per-trial", "GPU": "--gpus-per-trial"}
    short = [k for k in need if not any(r.get(k, 0) >= need[k] for r in nodes)] or list(need)
    asked = " and ".join(f"{flags[k]} {need[k]:g}" for k in short)
    most = {k: max((r.get(k, 0) for r in nodes), default=0) for k in short}
    has = " and ".join(f"{v:g} {k}" + ("" if v == 1 else "s") for k, v in most.items())
    if s.address is None:
        return f"{asked}: the local Ray has {has}"
    return _wait_for_a_node(need, f"{asked}: no node of the cluster has that (at most {has})")


def _wait_for_a_node(need: dict[str, float], why: str) -> str | None:
    """Hold a placement group of one trial's shape until a node takes it (None) or the
    autoscaler declares it infeasible (the error line)."""
    import threading

    from ray.util import placement_group, remove_placement_group

    from tune.console import say

    bundle = {k: v for k, v in need.items() if v}
    # The autoscaler names the request as a dict of floats, e.g. {'CPU': 4.0}.
    shape = [f"'{k}': {float(v)}" for k, v in bundle.items()]
    infeasible = threading.Event()

    def on_event(line: str) -> None:
        if ray_private.INFEASIBLE in line and all(part in line for part in shape):
            infeasible.set()

    stop_watching = ray_private.on_autoscaler_events(on_event)
    pg = placement_group([bundle], strategy="PACK")  # what Tune asks for a trial
    say(f"{why}; waiting for the cluster's autoscaler to add one (Ctrl-C stops)")
    try:
        while not infeasible.is_set():
            if pg.wait(timeout_seconds=1):
                return None
        return f"{why}, and Ray's autoscaler says none of its node types can have it"
    finally:
        stop_watching()
        remove_placement_group(pg)


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
    from tune.console import say

    say(f"warning: MLflow {what} failed: {error_line(e)}", err=True)


# Parent-run tags recording the registered winner, so a repeated --resume registers it only once.
CHAMPION_TRIAL_TAG = "champion.trial_id"
CHAMPION_VERSION_TAG = "champion.version"


def _champion(
    client, parent_run_id: str, summary, dataset, s: Settings, run_ids: dict[str, str]
) -> str | None:
    """Register the winner as `models:/<model-name>@champion` unless this search already did;
    the registered version, or None when there is no winner. The model is logged in the
    winning trial's run (its hyperparameters are the model's), the version says what it is."""
    if summary.winner_dir is None:
        return None
    from tune.champion import log_champion

    best = summary.trials.loc[summary.winner]
    trial_id = str(best["trial_id"])
    tags = client.get_run(parent_run_id).data.tags
    if tags.get(CHAMPION_TRIAL_TAG) == trial_id and CHAMPION_VERSION_TAG in tags:
        return tags[CHAMPION_VERSION_TAG]
    example = dataset.x_val[:5] if len(dataset.x_val) else dataset.x_train[:5]
    description = (
        f"The winner of search {s.name} on {dataset.name}: trial {trial_id} "
        f"({best['run_name']}), validation silhouette {best[N.SILHOUETTE]:.4f}, validation "
        f"reconstruction MSE {best[N.RECON_LOSS]:.5f}, clustered by {best[N.BEST_CLUSTERER]}. "
        "Input: uint8 images [N, H, W]; output: cluster ids. Chosen as the trial "
        f"{summary.rule}."
    )
    version_tags = {
        "search": s.name,
        "trial_id": trial_id,
        "dataset": dataset.name,
        "clusterer": str(best[N.BEST_CLUSTERER]),
        N.SILHOUETTE: f"{best[N.SILHOUETTE]:.4f}",
        N.RECON_LOSS: f"{best[N.RECON_LOSS]:.5f}",
    }
    _, version = log_champion(
        summary.winner_dir,
        run_ids.get(trial_id, parent_run_id),
        s.model_name,
        example,
        s.tracking_uri,
        description=description,
        tags=version_tags,
    )
    client.set_tag(parent_run_id, CHAMPION_TRIAL_TAG, trial_id)
    client.set_tag(parent_run_id, CHAMPION_VERSION_TAG, version)
    return version


if __name__ == "__main__":
    sys.exit(main())
