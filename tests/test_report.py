"""The search summary (tune/report.py) on hand-made results: baselines, winner, printed rule."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import pytest

from tune import names as N
from tune import plots, report
from tune.selection import hypervolume
from tune.space import load_space

DOC1, DOC2 = load_space("seeds").points  # the documents' full configurations


@dataclass
class FakeResult:  # the part of ray.tune.Result the summary reads
    config: dict
    metrics: dict
    error: Exception | None = None
    path: str | None = None
    checkpoint: None = None


def result(tid: str, config: dict, sil: float, loss: float, status: str = "ok") -> FakeResult:
    metrics = {"trial_id": tid, N.SILHOUETTE: sil, N.RECON_LOSS: loss, N.STATUS: status}
    return FakeResult({**config, "seed": 0}, metrics)


RESULTS = [
    result("d1", DOC1, 0.14, 0.0078),
    result("d2", DOC2, 0.26, 0.0112),
    result("hi", {**DOC1, "latent_dim": 9}, 0.34, 0.0292),
    result("knee", {**DOC2, "reduction": "pca", "pca_dim": 8, "latent_dim": 52}, 0.337, 0.0104),
    result("imp", {**DOC2, "reduction": "pca", "pca_dim": 8, "latent_dim": 46}, 0.324, 0.0073),
]
POINTS = [("doc1-mlp", DOC1), ("doc2-conv", DOC2)]


@pytest.mark.parametrize(("prefer", "winner"), [(True, "imp"), (False, "knee")])
def test_winner_beats_the_documents_when_a_front_trial_does(tmp_path, prefer, winner):
    s = report.summarise(RESULTS, tmp_path, points=POINTS, prefer_improvements=prefer)
    assert s.trials.loc[s.winner, "trial_id"] == winner
    assert list(s.trials.loc[s.trials["beats_points"], "trial_id"]) == ["imp"]
    assert list(s.trials["point"]) == ["doc1-mlp", "doc2-conv", "", "", ""]
    text = report.format_summary(s, None, "m", 1.0)
    assert ("beat every starting point (doc1-mlp, doc2-conv)" in text) == prefer
    assert (tmp_path / "all_trials.csv").read_text().splitlines()[0].count("beats_points") == 1


def test_failed_documents_are_no_baseline(tmp_path):
    failed = [result("d1", DOC1, float("nan"), float("nan"), "diverged"), *RESULTS[1:]]
    s = report.summarise(failed, tmp_path, points=POINTS)
    # Only doc2 counts, which the knee beats as well, and the knee is nearest the ideal point.
    assert s.trials.loc[s.winner, "trial_id"] == "knee"
    assert "beat every starting point (doc2-conv)" in report.format_summary(s, None, "m", 1.0)


def test_best_config_is_the_winners_own_config_as_a_points_only_space(tmp_path):
    # a winner whose keys differ from the first trial's (depth 2, a null batch size, floats)
    won = {**DOC1, "mlp_depth": 2, "mlp_width_2": 48, "abo_batch_size": None, "seed": 7}
    results = [*RESULTS[:2], FakeResult(won, {"trial_id": "w", N.SILHOUETTE: 0.5,
                                               N.RECON_LOSS: 0.001, N.STATUS: "ok"})]  # fmt: skip
    report.summarise(results, tmp_path, points=POINTS)
    space = load_space(tmp_path / "best_config.yaml")
    assert space.point_names == ["winner-w"]
    expected = {k: v for k, v in won.items() if k != "seed"}
    assert space.points[0] == expected
    types = {k: type(v) for k, v in space.points[0].items()}
    assert types == {k: type(v) for k, v in expected.items()}  # 2 stays an int, 0.0 a float
    assert "--seed 7" in space.description


def test_pareto_plot_names_every_finished_trial_and_marks_each_architecture(tmp_path):
    failed = result("bad", {**DOC2, "latent_dim": 7}, float("nan"), float("nan"), "diverged")
    s = report.summarise([*RESULTS, failed], tmp_path, points=POINTS)
    assert (tmp_path / "pareto_front.png").exists()
    fig = plots.pareto_figure(s.trials)
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.texts]
    # every ok trial once, by its id; the baselines by their point's name as well
    assert sorted(texts) == sorted(["doc1-mlp (d1)", "doc2-conv (d2)", "hi", "knee", "imp"])
    assert [t.get_text() for t in fig.texts] == ["not shown: 1 diverged"]
    lines = {}
    for line in ax.lines:
        lines.setdefault(line.get_gid(), []).append(line)
    markers = {gid: {x.get_marker() for x in ls} for gid, ls in lines.items()}
    assert markers["arch=mlp"] == {"o"} and markers["arch=conv"] == {"s"}
    count = {gid: sum(len(x.get_xdata()) for x in ls) for gid, ls in lines.items()}
    assert count["arch=mlp"] == 2 and count["arch=conv"] == 3  # d1, hi / d2, knee, imp
    win = s.trials.loc[s.winner]
    (star,) = lines["winner"]
    assert star.get_marker() == "*"
    assert list(star.get_xdata()) == [win[N.RECON_LOSS]]
    front = s.trials[s.trials["pareto"]].sort_values(N.RECON_LOSS)
    assert list(lines["front"][0].get_xdata()) == list(front[N.RECON_LOSS])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["mlp (2)", "conv (3)", "Pareto front", f"winner {win['trial_id']}"]
    plt.close(fig)


def test_roles_note_and_hypervolume_history(tmp_path):
    """The winner/pareto/baseline roles, a note naming the winner against the baselines with
    links, and a hypervolume per ended trial in the order they ended."""
    timed = [
        FakeResult(r.config, {**r.metrics, "timestamp": t, "experiment_tag": f"{t}_x"})
        for r, t in zip(RESULTS, (5, 1, 4, 2, 3), strict=True)
    ]
    s = report.summarise(timed, tmp_path, points=POINTS, reference=(0.0, 0.04))
    roles = dict(zip(s.trials["trial_id"], s.trials.apply(report.role, axis=1), strict=True))
    assert roles == {"d1": "baseline", "d2": "baseline", "hi": "pareto", "knee": "pareto",
                     "imp": "winner"}  # fmt: skip
    assert list(s.trials["run_name"])[:2] == ["doc1-mlp (baseline)", "doc2-conv (baseline)"]
    assert s.trials.loc[s.winner, "run_name"].startswith("03 conv")  # Tune's trial number
    # ended in the order d2, knee, imp, hi, d1: the hypervolume after each of them
    ok = [(0.26, 0.0112), (0.337, 0.0104), (0.324, 0.0073), (0.34, 0.0292), (0.14, 0.0078)]
    expected = [hypervolume(ok[:i], (0.0, 0.04)) for i in range(1, 6)]
    assert s.hypervolume == pytest.approx(expected)
    assert (tmp_path / "hypervolume.png").exists() and tmp_path / "hypervolume.png" in s.files
    run_ids = {t: f"run-{t}" for t in s.trials["trial_id"]}
    text = report.note(s, "7", run_ids)
    assert (
        "## Winner: [03 conv" in text
        and "(#/experiments/7/runs/run-imp?workflowType=machine_learning)" in text
    )
    assert "It beats doc1-mlp, doc2-conv in both objectives." in text
    assert (
        "[doc2-conv (baseline)](#/experiments/7/runs/run-d2?workflowType=machine_learning)" in text
    )
    assert f"**{expected[-1]:.4f}**" in text
    front_rows = text.split("### Pareto front")[1].count("\n| ") - 1  # minus the header
    assert front_rows == len(s.front)
