"""Tests for tune.selection on hand-made points (silhouette: higher is better; recon: lower)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from tune.selection import OBJECTIVES, beats_all, choose_winner, pareto_front, select

SIL, REC = "val/silhouette", "val/recon_loss"


def frame(rows: dict[object, tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=[SIL, REC])


# A: best silhouette, worst loss; B: the knee; C: best loss, worst silhouette; D: dominated by B.
TRADE_OFF = {"A": (0.9, 1.0), "D": (0.6, 0.5), "B": (0.7, 0.3), "C": (0.2, 0.1)}


def test_objectives_are_the_search_metrics() -> None:
    assert OBJECTIVES == {SIL: "max", REC: "min"}


def test_dominated_point_is_excluded_and_order_kept() -> None:
    front = pareto_front(frame(TRADE_OFF))
    assert list(front.index) == ["A", "B", "C"]
    assert front.loc["B", SIL] == 0.7


def test_non_finite_rows_are_dropped_first() -> None:
    # "E" would dominate everything if its NaN loss were ignored; "F" has an infinite loss.
    rows = dict(TRADE_OFF, E=(1.0, np.nan), F=(0.95, np.inf), G=(-np.inf, 0.0))
    df = frame(rows).astype(object)
    df.loc["H"] = ["oops", 0.0]  # non-numeric counts as missing
    assert list(pareto_front(df).index) == ["A", "B", "C"]


def test_exact_duplicates_are_both_kept_and_the_earlier_wins() -> None:
    df = frame({"x": (0.5, 0.5), "y": (0.5, 0.5), "z": (0.4, 0.6)})
    front = pareto_front(df)
    assert list(front.index) == ["x", "y"]
    assert choose_winner(front) == "x"
    assert select(df.loc[["y", "x", "z"]])[1] == "y"


def test_single_point() -> None:
    df = frame({7: (0.1, 2.0)})
    front, winner = select(df)
    assert list(front.index) == [7] and winner == 7


@pytest.mark.parametrize(
    ("weights", "expected"),
    [(None, "B"), ({SIL: 1, REC: 1}, "B"), ({SIL: 1, REC: 0}, "A"), ({SIL: 0, REC: 1}, "C")],
)
def test_weights_move_the_winner(weights: dict[str, float] | None, expected: str) -> None:
    front = pareto_front(frame(TRADE_OFF))
    assert choose_winner(front, weights=weights) == expected


def test_knee_is_nearest_the_ideal_point() -> None:
    three = {k: v for k, v in TRADE_OFF.items() if k != "D"}
    # Normalised gaps (silhouette, loss): A (0, 1), B (2/7, 2/9), C (1, 0).
    assert choose_winner(frame(three)) == "B"
    # B at loss 0.8 sits at (2/7, 7/9), distance 0.83 < 1: still the winner.
    assert choose_winner(frame(dict(three, B=(0.7, 0.8)))) == "B"
    # B at (0.3, 0.9) sits at (6/7, 8/9), farther than A and C: A and C tie at distance 1,
    # and the first objective (silhouette) breaks the tie in favour of A.
    far = frame(dict(three, B=(0.3, 0.9)))
    assert list(pareto_front(far).index) == ["A", "B", "C"]
    assert choose_winner(far) == "A"


def test_tie_goes_to_the_best_first_objective_not_the_earlier_row() -> None:
    df = frame({"low_sil": (0.0, 0.0), "high_sil": (1.0, 1.0)})
    assert choose_winner(df) == "high_sil"
    flipped = {REC: "min", SIL: "max"}  # loss first: now the low-loss row wins the tie
    assert choose_winner(df, flipped) == "low_sil"


def test_constant_objective_contributes_nothing() -> None:
    df = frame({"a": (0.2, 1.0), "b": (0.8, 1.0), "c": (0.5, 1.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 on the constant column
        assert choose_winner(df) == "b"
        # Weight only on the constant loss: all tie at 0, and silhouette breaks the tie.
        assert choose_winner(df, weights={SIL: 0, REC: 1}) == "b"


def test_exclude_mask() -> None:
    df = frame(TRADE_OFF)
    exclude = pd.Series({"A": False, "B": True, "C": False, "D": False})
    front, winner = select(df, exclude=exclude)
    # Without B, D is no longer dominated and becomes the knee.
    assert list(front.index) == ["A", "D", "C"]
    assert winner == "D"
    with pytest.raises(ValueError, match="every row"):
        select(df, exclude=exclude.drop("A"))
    with pytest.raises(ValueError, match="True or False"):
        select(df, exclude=pd.Series({"A": 0, "B": 2, "C": 0, "D": 0}))


def test_select_sorts_front_by_first_objective_best_first() -> None:
    df = frame({"C": (0.2, 0.1), "A": (0.9, 1.0), "B": (0.7, 0.3)})
    front, winner = select(df)
    assert list(front.index) == ["A", "B", "C"]
    assert winner == "B"
    front, _ = select(df, {REC: "min", SIL: "max"})
    assert list(front.index) == ["C", "B", "A"]


@pytest.mark.parametrize(
    ("objectives", "expected"),
    [
        ({SIL: "max", REC: "min"}, ["p", "q"]),
        ({SIL: "max", REC: "max"}, ["q"]),
        ({SIL: "min", REC: "min"}, ["p"]),
        ({SIL: "min", REC: "max"}, ["p", "q"]),
    ],
)
def test_directions(objectives: dict[str, str], expected: list[str]) -> None:
    df = frame({"p": (1.0, 1.0), "q": (2.0, 2.0)})
    assert list(pareto_front(df, objectives).index) == expected


def test_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        choose_winner(frame({}))
    with pytest.raises(ValueError, match="empty"):
        select(frame({"x": (np.nan, 1.0)}))
    with pytest.raises(ValueError, match="empty"):
        select(frame({"x": (0.5, 1.0)}), exclude=pd.Series({"x": True}))
    assert pareto_front(frame({})).empty


def test_bad_arguments() -> None:
    df = frame(TRADE_OFF)
    with pytest.raises(ValueError, match="missing"):
        choose_winner(df, weights={SIL: 1})
    with pytest.raises(ValueError, match="unknown"):
        choose_winner(df, weights={SIL: 1, REC: 1, "x": 1})
    with pytest.raises(ValueError, match="not all 0"):
        choose_winner(df, weights={SIL: 0, REC: 0})
    with pytest.raises(ValueError, match=">= 0"):
        choose_winner(df, weights={SIL: -1, REC: 1})
    with pytest.raises(ValueError, match="direction"):
        pareto_front(df, {SIL: "maximize"})
    with pytest.raises(KeyError, match="val/ari"):
        pareto_front(df, {"val/ari": "max"})
    with pytest.raises(ValueError, match="NaN"):
        choose_winner(frame({"x": (np.nan, 1.0), "y": (0.5, 0.5)}))


# The Fashion-MNIST default search of 2026-11-23 (bench/RESULTS.md): the knee of the front (K)
# is worse than doc1 in loss; I1 and I2 beat both documents in both objectives.
SEARCH = {
    "hi": (0.3411, 0.0292),
    "K": (0.3372, 0.0104),
    "I1": (0.3236, 0.0073),
    "I2": (0.3195, 0.0072),
    "doc2": (0.2618, 0.0112),
    "doc1": (0.1409, 0.0078),
}
DOCS = pd.Series({k: k.startswith("doc") for k in SEARCH})


def test_beats_all_needs_to_dominate_every_baseline() -> None:
    df = frame(SEARCH)
    beats = beats_all(df, df[DOCS])
    assert list(beats[beats].index) == ["I1", "I2"]
    # K beats doc2 but not doc1 (higher loss); a baseline never beats itself.
    assert not beats["K"] and not beats["doc1"]
    assert not beats_all(df, frame({})).any()  # no baselines: nothing beats them
    nan_base = frame({"b": (np.nan, 0.0)})
    assert not beats_all(df, nan_base).any()  # nor a baseline without finite objectives


def test_winner_comes_from_the_trials_that_beat_every_baseline() -> None:
    df = frame(SEARCH)
    assert select(df)[1] == "K"  # no baselines: the knee of the whole front
    front, winner = select(df, baseline=DOCS)
    assert winner == "I1"  # nearer the ideal than I2 over the whole front's range
    assert list(front.index) == ["hi", "K", "I1", "I2"]
    # Weights still apply among the improving trials.
    assert select(df, weights={SIL: 0, REC: 1}, baseline=DOCS)[1] == "I2"


def test_without_improving_trials_the_whole_front_is_used() -> None:
    df = frame({k: v for k, v in SEARCH.items() if not k.startswith("I")})
    assert select(df, baseline=DOCS.drop(["I1", "I2"]))[1] == "K"


def test_excluded_or_broken_baselines_are_ignored() -> None:
    df = frame(SEARCH)
    # doc1 failed: only doc2 counts, which K beats too, and K is the front's knee.
    exclude = pd.Series({k: k == "doc1" for k in SEARCH})
    assert select(df, exclude=exclude, baseline=DOCS)[1] == "K"
    with pytest.raises(ValueError, match="baseline: needs a True/False value"):
        select(df, baseline=DOCS.drop("doc1"))


def test_hypervolume_of_a_two_point_front():
    """The union of the boxes each point dominates, as a share of the reference box."""
    from tune.selection import hypervolume

    ref = (0.0, 0.04)
    assert hypervolume([], ref) == 0.0
    assert hypervolume([(0.5, 0.02)], ref) == pytest.approx(0.5 * 0.02 / 0.04)
    both = 0.5 * 0.02 + 0.25 * 0.03 - 0.25 * 0.02  # two boxes minus their overlap
    points = [(0.5, 0.02), (0.25, 0.01)]
    assert hypervolume(points, ref) == pytest.approx(both / 0.04)
    # a dominated point, one beyond the reference and NaNs add nothing
    extra = [(0.1, 0.03), (0.9, 0.05), (-0.2, 0.001), (float("nan"), 0.01)]
    assert hypervolume(points + extra, ref) == pytest.approx(both / 0.04)
    assert hypervolume([(1.0, 0.0)], ref) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reference"):
        hypervolume(points, (0.0, 0.0))
