"""Hypervolume over wall-clock time: the FIFO scheduler against `--scheduler mo-asha`.

Runs the real search command twice, one after the other, with the same space, data, seed and
concurrency, each into a fresh temporary Ray storage and sqlite MLflow store:

    python tune/search.py --space S --dataset D --num-samples N --seed K --max-concurrent C \\
        --cpus-per-trial 1 --scheduler fifo|mo-asha --storage-path TMP/ray --mlflow-uri sqlite:///TMP/mlflow.db

timing each from the command's start. From each search's Ray experiment directory (every trial's
result.json, whose last line is its final result, or for a trial the scheduler stopped its last
rung result, without a `status`) it builds the hypervolume of the front of the `ok` trials as a
step function of the seconds since that search's command started (Tune's `timestamp` of a
trial's final result, whole seconds), against one reference point for both: the parent runs'
param `hypervolume.reference` (silhouette 0, the mean image's loss; tune/search.py). Stopped,
diverged, degenerate and failed trials add nothing to the front.

It prints and appends to bench/RESULTS.md: each search's wall time, trials finished / stopped /
failed, trials per hour, final hypervolume; when mo-asha first reaches FIFO's final hypervolume
and that time as a ratio of FIFO's wall time (target <= 0.5; "never" if it does not); mo-asha's
hypervolume at FIFO's end time as a ratio of FIFO's final one (target >= 1); the reference point,
the machine, the commands and the git commit. It also draws both curves (hypervolume against
minutes) to bench/scheduler_hypervolume.png.

    .venv/bin/python bench/bench_scheduler.py            # default Fashion-MNIST search, ~35 min each
    .venv/bin/python bench/bench_scheduler.py --quick    # digits, 8 short trials: a check
    .venv/bin/python bench/bench_scheduler.py --space mlp --num-samples 30 --seed 1
    .venv/bin/python bench/bench_scheduler.py --from DIR_FIFO DIR_MOASHA   # analyse, run nothing
    .venv/bin/python bench/bench_scheduler.py --fifo-from DIR_FIFO --time-attr epoch --grace-period 3 \
        --mo-asha-samples 40     # mo-asha only, against an earlier run's FIFO search
    .venv/bin/python bench/bench_scheduler.py --mo-asha-samples 40 --equal-time
                                 # mo-asha gets more trials, and stops at FIFO's wall time

At equal time the comparison is fair only if mo-asha has trials left to run: the trials it stops
early free the time FIFO spends finishing its own, so give it more with --mo-asha-samples.

The temporary directories are kept and printed: `--from` re-analyses (and re-plots) two experiment
directories (TMP/ray/bench-fifo, TMP/ray/bench-mo-asha) without running anything. The run writes
its timing to `bench_scheduler.json` in each experiment directory; for a directory without one
(any other search), time counts from Tune's start (experiment_state's start_time, after Ray's
start-up and data loading) and the wall time ends at the last trial's result, and the reference
point is recomputed from the search's data (clustertune.json) with Dataset.mean_image_loss().
Run it alone on the machine (or say what else ran, --note): both searches share its CPUs with
whatever else runs, and a difference in load between the two runs is a difference in the result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `tune` importable
    sys.path.insert(0, str(ROOT))

from tune import names as N  # noqa: E402 - light: no Ray, MLflow or torch
from tune.provenance import cpu_model  # noqa: E402
from tune.selection import hypervolume  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
CASES = {
    # The README's default search, once per scheduler: the longest case by far.
    "default": {"space": "default", "dataset": "fashion-mnist", "num_samples": 20},
    # A few minutes in all: checks the script end to end, the numbers mean little. The smoke
    # space itself trains too little to beat the reference loss: every hypervolume would be 0.
    "quick": {
        "space": str(ROOT / "bench" / "spaces" / "scheduler_quick.yaml"),
        "dataset": "digits",
        "num_samples": 8,
    },
}
PLOTS = {
    "default": ROOT / "bench" / "scheduler_hypervolume.png",
    "quick": ROOT / "bench" / "scheduler_hypervolume_quick.png",  # git-ignored
}
TIMING_FILE = "bench_scheduler.json"  # written by this script into each experiment directory
TARGET_TIME_RATIO = 0.5  # mo-asha reaches FIFO's final hypervolume in at most half FIFO's time
TARGET_HV_RATIO = 1.0  # and has at least FIFO's final hypervolume when FIFO ends
# Two hypervolumes of the same front can differ in the last bits by summation order; closer than
# this they are equal.
_RTOL = 1e-12

# One trial as the analysis sees it: (Tune's unix timestamp of its last result, its validation
# silhouette, its validation reconstruction loss, its final status or None without a final result).
Row = tuple[float, float, float, str | None]
Steps = list[tuple[float, float]]  # (seconds since the search started, hypervolume from then on)


# --------------------------------------------------------------------------- the pure part


def hypervolume_steps(rows: list[Row], start: float, reference: tuple[float, float]) -> Steps:
    """The hypervolume of the front of the `ok` rows as a right-continuous step function of
    seconds since `start`: [(0, 0), (t1, hv1), ...] with one step per time the front grew (a
    trial that ends without moving the front, or ends not ok, adds no step). Rows ending in the
    same second make one step; a row stamped before `start` counts at 0."""
    steps: Steps = [(0.0, 0.0)]
    points: list[tuple[float, float]] = []
    for stamp, silhouette, loss, status in sorted(rows, key=lambda r: r[0]):
        if status != N.Status.OK:
            continue
        points.append((silhouette, loss))
        hv = hypervolume(points, reference)
        if hv <= steps[-1][1]:
            continue
        t = max(0.0, float(stamp) - start)
        if t == steps[-1][0]:
            steps[-1] = (t, hv)
        else:
            steps.append((t, hv))
    return steps


def value_at(steps: Steps, t: float) -> float:
    """The step function's value at `t` seconds (0 before the first step)."""
    value = 0.0
    for when, hv in steps:
        if when > t:
            break
        value = hv
    return value


def time_to_reach(steps: Steps, target: float) -> float | None:
    """The first time the step function is >= `target` (within rounding), or None if never."""
    for when, hv in steps:
        if hv >= target * (1 - _RTOL):
            return when
    return None


# --------------------------------------------------------------------------- reading a search


@dataclass
class Search:
    """One search's records as this benchmark needs them."""

    scheduler: str
    directory: Path
    start: float  # unix time the command started (or Tune's start, see `timed_from`)
    wall_s: float  # seconds from `start` to the command's end (or to the last trial's result)
    rows: list[Row]  # one per trial with at least one result
    failed: int  # trials Ray saw fail for good (error.txt, no final result)
    reference: tuple[float, float]
    timed_from: str  # "command start" or "Tune's start"
    command: str  # the search command that was run ("" when unknown)
    commit: str  # git commit the search ran at ("" when unknown)

    @property
    def finished(self) -> int:
        return sum(r[3] is not None for r in self.rows)

    @property
    def stopped(self) -> int:
        return len(self.rows) - self.finished

    @property
    def trials_per_hour(self) -> float:
        """Every trial that ended (finished, stopped early or failed) per hour of wall time: the
        rate at which the search got through its trials."""
        return 3600 * (len(self.rows) + self.failed) / self.wall_s if self.wall_s > 0 else math.nan

    def steps(self) -> Steps:
        return hypervolume_steps(self.rows, self.start, self.reference)


def last_result(path: Path) -> dict | None:
    """The last JSON line of a trial's result.json (Tune appends one line per result)."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    return json.loads(lines[-1]) if lines else None


def read_trials(experiment_dir: Path) -> tuple[list[Row], int]:
    """(rows, failed trials) from the trial directories of a Tune experiment directory. A trial
    retried after a failure appends to the same result.json, so its last line is still its end."""
    rows: list[Row] = []
    failed = 0
    for trial_dir in sorted(p.parent for p in experiment_dir.glob("*/params.json")):
        result = last_result(trial_dir / "result.json")
        status = result[N.STATUS] if result and N.is_final(result) else None
        if status is None and (trial_dir / "error.txt").exists():
            failed += 1
            continue
        if result is None:  # never reported: nothing to place in time
            continue
        rows.append(
            (
                float(result["timestamp"]),
                float(result.get(N.SILHOUETTE, math.nan)),
                float(result.get(N.RECON_LOSS, math.nan)),
                status,
            )
        )
    return rows, failed


def tune_start(experiment_dir: Path) -> float:
    """Tune's start time from its experiment state (the earliest, when a search was resumed)."""
    from tune.ray_private import EXPERIMENT_STATE, experiment_start_time

    start = experiment_start_time(experiment_dir)
    if start is None:
        raise SystemExit(f"{experiment_dir}: no {EXPERIMENT_STATE}: not a Tune experiment")
    return start


def reference_from_data(experiment_dir: Path) -> tuple[float, float]:
    """The search's reference point recomputed from its data, as tune/search.py computes it."""
    from tune.data import load_dataset
    from tune.search import SETTINGS_FILE, hypervolume_reference

    # the settings the search started with (every key of RESUMED_SETTINGS is saved)
    saved = json.loads((experiment_dir / SETTINGS_FILE).read_text())
    dataset = load_dataset(
        saved["dataset"],
        saved["data_dir"],
        val_fraction=saved["val_fraction"],
        seed=saved["seed"],
        download=False,
    )
    return hypervolume_reference(dataset)


def reference_from_mlflow(tracking_uri: str, name: str) -> tuple[float, float] | None:
    """The param `hypervolume.reference` the search logged on its parent run, or None."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.`mlflow.runName` = '{name}' and tags.{N.ROLE} = 'search'",
        max_results=1,
    )
    value = runs[0].data.params.get("hypervolume.reference") if runs else None
    if value is None:
        return None
    silhouette, loss = json.loads(value)
    return float(silhouette), float(loss)


def read_search(scheduler: str, experiment_dir: Path) -> Search:
    """A search from its experiment directory: this script's timing file when there is one,
    else Tune's own start time and the reference recomputed from the data."""
    experiment_dir = experiment_dir.resolve()
    rows, failed = read_trials(experiment_dir)
    timing_file = experiment_dir / TIMING_FILE
    if timing_file.exists():
        timing = json.loads(timing_file.read_text())
        start, end = timing["start"], timing["end"]
        reference = tuple(timing["reference"])
        timed_from, command, commit = "command start", timing["command"], timing["commit"]
    else:
        start = tune_start(experiment_dir)
        end = max([r[0] for r in rows], default=start)
        reference = reference_from_data(experiment_dir)
        timed_from, command, commit = "Tune's start", "", ""
    return Search(
        scheduler,
        experiment_dir,
        start,
        end - start,
        rows,
        failed,
        reference,
        timed_from,
        command,
        commit,
    )


# --------------------------------------------------------------------------- running a search


def space_arg(space: str) -> str:
    """--space for the search, which runs in the repository root: a name as it is, a path
    (it has a slash) from here, relative to the root when inside it so the command reads short."""
    if "/" not in space:
        return space
    path = Path(space).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_search(scheduler: str, args: argparse.Namespace, budget_min: float | None = None) -> Path:
    """Run the real search command into a fresh temporary store; its experiment directory (with
    this script's timing file written into it). `budget_min`: the search's --time-budget-min."""
    from tune.provenance import git_commit

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-scheduler-{scheduler}-"))
    samples = args.num_samples
    if scheduler == "mo-asha" and args.mo_asha_samples:
        samples = args.mo_asha_samples
    name = f"bench-{scheduler}"
    tracking_uri = f"sqlite:///{tmp}/mlflow.db"
    cmd = [
        sys.executable,
        str(ROOT / "tune" / "search.py"),
        *("--space", space_arg(args.space), "--dataset", args.dataset),
        *("--num-samples", str(samples), "--seed", str(args.seed)),
        *("--scheduler", scheduler, "--max-concurrent", str(args.max_concurrent)),
        *("--cpus-per-trial", "1", "--storage-path", str(tmp / "ray")),
        *("--mlflow-uri", tracking_uri, "--name", name),
    ]
    if scheduler == "mo-asha" and args.time_attr is not None:
        cmd += ["--time-attr", args.time_attr]
    if scheduler == "mo-asha" and args.grace_period is not None:
        cmd += ["--grace-period", str(args.grace_period)]
    if budget_min is not None:
        cmd += ["--time-budget-min", f"{budget_min:.2f}"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    log = tmp / "search.out"
    print(
        f"[{time.strftime('%H:%M:%S')}] {scheduler}: {shlex.join(cmd)}\n  output: {log}", flush=True
    )
    # time.time(), not perf_counter: the trials' timestamps are unix times on the same clock.
    start = time.time()
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    end = time.time()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"{scheduler} search failed (exit {code}), output in {log}:\n{tail}")
    experiment_dir = tmp / "ray" / name
    reference = reference_from_mlflow(tracking_uri, name)
    if reference is None:
        raise SystemExit(f"{tracking_uri}: no parent run {name} with hypervolume.reference")
    timing = {
        "scheduler": scheduler,
        "start": start,
        "end": end,
        "reference": list(reference),
        "command": shlex.join(["python", "tune/search.py", *cmd[2:]]),
        "commit": git_commit(),
    }
    (experiment_dir / TIMING_FILE).write_text(json.dumps(timing, indent=1) + "\n")
    print(f"  {end - start:.0f} s; experiment directory {experiment_dir}", flush=True)
    return experiment_dir


# --------------------------------------------------------------------------- report


@dataclass
class Comparison:
    """The benchmark's numbers for one FIFO and one mo-asha search."""

    fifo: Search
    moasha: Search
    fifo_final: float
    moasha_final: float
    reach_s: float | None  # when mo-asha first has FIFO's final hypervolume (None: never)
    moasha_at_fifo_end: float  # mo-asha's hypervolume at FIFO's wall time

    @property
    def time_ratio(self) -> float | None:
        return None if self.reach_s is None else self.reach_s / self.fifo.wall_s

    @property
    def hv_ratio(self) -> float:
        return self.moasha_at_fifo_end / self.fifo_final if self.fifo_final > 0 else math.nan


def compare(fifo: Search, moasha: Search) -> Comparison:
    if fifo.reference != moasha.reference:
        raise SystemExit(
            f"the searches have different reference points ({fifo.reference} vs "
            f"{moasha.reference}): not the same data"
        )
    fifo_steps, moasha_steps = fifo.steps(), moasha.steps()
    fifo_final = fifo_steps[-1][1]
    return Comparison(
        fifo,
        moasha,
        fifo_final,
        moasha_steps[-1][1],
        time_to_reach(moasha_steps, fifo_final),
        value_at(moasha_steps, fifo.wall_s),
    )


def _minutes(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 60:.1f} min"


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in rows]
    )


def report_lines(c: Comparison) -> list[str]:
    """The result table and the two target lines (markdown)."""
    header = [
        "scheduler",
        "wall time",
        "trials finished / stopped / failed",
        "trials per hour",
        "final hypervolume",
        "first at FIFO's final hypervolume",
    ]
    rows = []
    for search, final in ((c.fifo, c.fifo_final), (c.moasha, c.moasha_final)):
        reach = time_to_reach(search.steps(), c.fifo_final)
        rows.append(
            [
                search.scheduler,
                _minutes(search.wall_s),
                f"{search.finished} / {search.stopped} / {search.failed}",
                f"{search.trials_per_hour:.1f}",
                f"{final:.4f}",
                _minutes(reach) if c.fifo_final > 0 else "-",
            ]
        )
    sil, loss = c.fifo.reference
    lines = [md_table(header, rows), ""]
    if c.fifo_final <= 0:
        # Nothing to reach: FIFO's front never left the reference box, so no target is measured.
        lines.append(
            "- FIFO's front never beats the reference point in both objectives (hypervolume 0): "
            "no time to reach it; targets not measured"
        )
    elif c.reach_s is None:
        lines.append(
            f"- mo-asha never reaches FIFO's final hypervolume {c.fifo_final:.4f} (its own final: "
            f"{c.moasha_final:.4f}); target: within {TARGET_TIME_RATIO:g}x FIFO's wall time: NOT met"
        )
    else:
        lines.append(
            f"- mo-asha first reaches FIFO's final hypervolume {c.fifo_final:.4f} after "
            f"{_minutes(c.reach_s)} = **{c.time_ratio:.2f}x** FIFO's wall time "
            f"(target <= {TARGET_TIME_RATIO:g}x: {_verdict(c.time_ratio <= TARGET_TIME_RATIO)})"
        )
    if c.fifo_final > 0:
        lines.append(
            f"- mo-asha's hypervolume at FIFO's end ({_minutes(c.fifo.wall_s)}): "
            f"{c.moasha_at_fifo_end:.4f} = **{c.hv_ratio:.3f}x** FIFO's final "
            f"(target >= {TARGET_HV_RATIO:g}x: "
            f"{_verdict(c.hv_ratio >= TARGET_HV_RATIO * (1 - _RTOL))})"
        )
    lines.append(
        f"- Reference point (silhouette, loss) = ({sil:g}, {loss:g}), the same for both searches; "
        f"times from each search's {c.fifo.timed_from}, trial ends in whole seconds (Tune's "
        "`timestamp`); only trials ending `ok` count"
    )
    return lines


def plot(c: Comparison, path: Path) -> None:
    """Both step curves, hypervolume against minutes, each drawn to its search's end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for search, color in ((c.fifo, "tab:blue"), (c.moasha, "tab:orange")):
        steps = search.steps()
        times = [t / 60 for t, _ in steps] + [search.wall_s / 60]
        values = [hv for _, hv in steps] + [steps[-1][1]]
        ax.step(times, values, where="post", color=color, label=search.scheduler)
        ax.plot(times[-1], values[-1], "o", color=color, markersize=4)  # the search's end
    ax.axhline(c.fifo_final, color="tab:blue", linestyle=":", linewidth=1, label="FIFO's final")
    if c.reach_s is not None:
        ax.axvline(c.reach_s / 60, color="tab:orange", linestyle=":", linewidth=1)
    ax.axvline(
        TARGET_TIME_RATIO * c.fifo.wall_s / 60,
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"{TARGET_TIME_RATIO:g} x FIFO's wall time",
    )
    ax.set_xlabel(f"minutes since the search started ({c.fifo.timed_from})")
    ax.set_ylabel("hypervolume")
    ax.set_title("Hypervolume of the ok trials' front (dot: the search's end)", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def section(
    c: Comparison, case: str, plot_path: Path, load: tuple[str, str], note: str, bench_cmd: str
) -> str:
    """The dated RESULTS.md section."""
    # the later search's start: with --fifo-from, FIFO's ran in an earlier benchmark
    last = max(c.fifo.start, c.moasha.start)
    started = dt.datetime.fromtimestamp(last).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    commits = {s.commit for s in (c.fifo, c.moasha) if s.commit}
    if len(commits) > 1:
        commits = {f"{s.scheduler} {s.commit}" for s in (c.fifo, c.moasha) if s.commit}
    picture = os.path.relpath(plot_path, RESULTS.parent)
    lines = [
        "",
        f"## {started} — hypervolume over wall-clock time, FIFO vs mo-asha (bench_scheduler.py, "
        f"{case})",
        "",
        f"Command: `{bench_cmd}`",
        "",
        f"- Machine: {cpu_model()} (`platform.processor()`: "
        f"{platform.processor() or platform.machine()}), {os.cpu_count()} cores",
        f"- Load average (1/5/15 min) at start {load[0]}, at end {load[1]}"
        + (f"; {note}" if note else ""),
        f"- git commit: {', '.join(sorted(commits)) or 'unknown'}",
        *(f"- {s.scheduler}: `{s.command}`" for s in (c.fifo, c.moasha) if s.command),
        "",
        *report_lines(c),
        "",
        f"![hypervolume against minutes]({picture})",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="bench/spaces/scheduler_quick.yaml on digits, 8 trials: a few minutes, a check",
    )
    p.add_argument("--space", help="search space (default: default; --quick: scheduler_quick)")
    p.add_argument("--dataset", help="dataset (default: fashion-mnist; --quick: digits)")
    p.add_argument("--data-dir", help="passed to the search as --data-dir")
    p.add_argument("--num-samples", type=int, help="trials per search (default 20; --quick: 8)")
    p.add_argument(
        "--mo-asha-samples",
        type=int,
        help="mo-asha's trials (default: --num-samples): stopping early leaves it time for more",
    )
    p.add_argument(
        "--time-attr",
        choices=N.TIME_ATTRS,
        default=None,
        help="mo-asha's --time-attr (what rungs count; default: the space's)",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=None,
        help="mo-asha's --grace-period (first rung, in the space's time_attr; default: the "
        "space's, else 1)",
    )
    p.add_argument(
        "--fifo-from",
        type=Path,
        metavar="DIR_FIFO",
        help="take FIFO's search from this experiment directory (an earlier run of this script) "
        "and run mo-asha only",
    )
    p.add_argument(
        "--equal-time",
        action="store_true",
        help="stop mo-asha at FIFO's wall time (search.py --time-budget-min), so that it can be "
        "given more trials (--mo-asha-samples) without running longer than FIFO did",
    )
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once (1 CPU each)")
    p.add_argument("--seed", type=int, default=0, help="the searches' --seed")
    p.add_argument(
        "--from",
        dest="from_dirs",
        nargs=2,
        type=Path,
        metavar=("DIR_FIFO", "DIR_MOASHA"),
        help="analyse these two Tune experiment directories instead of running searches",
    )
    p.add_argument(
        "--plot", type=Path, help="where the PNG goes (default: bench/scheduler_hypervolume.png)"
    )
    p.add_argument("--note", default="", help="what else ran on the machine, for RESULTS.md")
    p.add_argument(
        "--no-write", action="store_true", help="print only; do not append to RESULTS.md"
    )
    args = p.parse_args(argv)
    case = "quick" if args.quick else "default"
    for key, value in CASES[case].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    plot_path = args.plot or PLOTS[case]
    load0 = loadavg()
    if args.from_dirs:
        case = "from existing searches"
        dirs = args.from_dirs
    else:  # one after the other, never together
        fifo_dir = args.fifo_from or run_search("fifo", args)
        budget = read_search("fifo", fifo_dir).wall_s / 60 if args.equal_time else None
        dirs = [fifo_dir, run_search("mo-asha", args, budget)]
    comparison = compare(read_search("fifo", dirs[0]), read_search("mo-asha", dirs[1]))
    plot(comparison, plot_path)
    bench_cmd = shlex.join(
        ["python", "bench/bench_scheduler.py", *(sys.argv[1:] if argv is None else argv)]
    )
    text = section(comparison, case, plot_path, (load0, loadavg()), args.note, bench_cmd)
    print(text)
    print(
        f"plot: {plot_path}\nre-analyse: python bench/bench_scheduler.py --from {dirs[0]} {dirs[1]}"
    )
    if not args.no_write:
        with RESULTS.open("a") as f:
            f.write(text)
        print(f"appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
