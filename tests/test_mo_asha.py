"""`--scheduler mo-asha` (tune/mo_asha.py, tune/rungs.py): the rule on hand-made rung results
driven through the scheduler's Tune hooks, the rung silhouette against scikit-learn, and real
searches read back through Ray's records and the MLflow client."""

from __future__ import annotations

import math
import pickle
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    Hold,
    optuna_study,
    run_search,
    search_runs,
    trial_results,
    wait_for,
)
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from mlflow import MlflowClient
from models.build import build_autoencoder
from tune import names as N
from tune import ray_private
from tune.config import Reduction, TrialConfig
from tune.data import load_dataset
from tune.mo_asha import (
    MOASHAScheduler,
    SchedulerState,
    continues,
    crowding_distance,
    nondominated_fronts,
    rung_costs,
    rung_milestones,
)
from tune.rungs import SAMPLE_SIZE, Rungs, rung_labels, rung_sample, with_rung_values
from tune.training import embed, images_to_tensor
from tune.trial import run_trial

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


@dataclass
class FakeTrial:
    """What a TrialScheduler reads of a Ray Tune Trial."""

    trial_id: str
    config: dict = field(default_factory=dict)
    status: str = "RUNNING"


def rung(epoch: int, silhouette: float, loss: float) -> dict:
    """A per-epoch result at a rung epoch, as tune/trial.py reports it."""
    return {
        N.EPOCH: epoch,
        N.VAL_LOSS: loss,
        N.RUNG_SILHOUETTE: silhouette,
        N.RUNG_RECON_LOSS: loss,
        N.RUNG_AT: epoch,
    }


BASELINE = {"arch": "mlp", "lr": 0.003}  # a space's point: the trials with these values


class Driver:
    """A MOASHAScheduler fed through its hooks as Tune feeds it."""

    def __init__(self, eta: int = 3, points=(BASELINE,)) -> None:
        self.scheduler = MOASHAScheduler(points=points, reduction_factor=eta)
        self.trials: dict[str, FakeTrial] = {}

    def trial(self, trial_id: str, baseline: bool = False) -> FakeTrial:
        if trial_id not in self.trials:
            config = {**BASELINE, "seed": 0} if baseline else {"arch": "conv", "seed": 0}
            self.trials[trial_id] = FakeTrial(trial_id, config)
            self.scheduler.on_trial_add(None, self.trials[trial_id])
        return self.trials[trial_id]

    def result(self, trial_id: str, epoch: int, sil: float, loss: float, **kw) -> str:
        return self.scheduler.on_trial_result(
            None, self.trial(trial_id, **kw), rung(epoch, sil, loss)
        )


# --------------------------------------------------------------------------- the rule


def test_rungs_are_grace_period_times_powers_of_eta():
    assert rung_milestones(1, 3, 30) == (1, 3, 9, 27)
    assert rung_milestones(2, 2, 16) == (2, 4, 8, 16)
    assert MOASHAScheduler().rungs[:4] == (1, 3, 9, 27)
    with pytest.raises(ValueError):
        rung_milestones(1, 1)


def test_fronts_are_peeled_in_order():
    # costs (lower is better): a and b trade off; c is dominated by a only; d by everybody; e = a
    costs = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 1.5], [2.0, 2.0], [0.0, 1.0]])
    assert [list(f) for f in nondominated_fronts(costs)] == [[0, 1, 4], [2], [3]]


def test_crowding_distance_is_nsga2s():
    # a front of 4 (costs: lower is better in both); interior points sum their normalised gaps
    front = np.array([[0.0, 10.0], [1.0, 9.0], [2.0, 8.0], [10.0, 0.0]])
    d = crowding_distance(front)
    assert d[0] == d[3] == math.inf
    assert d[1] == pytest.approx(2 / 10 + 2 / 10)
    assert d[2] == pytest.approx(9 / 10 + 9 / 10)
    assert (crowding_distance(front[:2]) == math.inf).all()
    # equal rows share their point's distance: neither is ahead of the other
    twice = crowding_distance(np.vstack([front, front[1:2]]))
    assert twice[1] == twice[4] == pytest.approx(d[1])


def test_a_dominated_trial_stops_and_a_non_dominated_one_continues():
    d = Driver()
    assert d.result("a", 1, 0.5, 0.10) == CONTINUE  # the first at a rung: nobody to compare with
    assert d.result("b", 1, 0.4, 0.20) == STOP  # worse in both than a
    assert d.result("c", 1, 0.6, 0.30) == CONTINUE  # better silhouette, worse loss: a trade-off
    assert d.scheduler.stopped == {"b": 1}
    assert set(d.scheduler.recorded[1]) == {"a", "b", "c"}  # a stopped trial's values count too


def test_crowding_distance_breaks_the_tie_inside_a_front():
    """Seven trials on one front (silhouette and loss rising together); with m = 7 recorded a
    newcomer continues if at most (7 - 1) / 3 = 2 are ahead of it. On the same front, one in a
    sparse stretch continues (only the two extremes are ahead) and one in a crowded stretch
    stops (everybody is)."""
    line = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0]
    for t, expected in ((0.75, CONTINUE), (0.15, STOP)):
        d = Driver()
        for i, v in enumerate(line):
            d.result(f"o{i}", 1, v, v)
        others = np.array([rung_costs((v, v)) for v in line])
        assert continues(rung_costs((t, t)), others, 3) == (expected == CONTINUE)
        assert d.result("x", 1, t, t) == expected, t


def test_baselines_are_never_stopped_but_count_in_the_ranking():
    d = Driver(points=[{**BASELINE, "latent_dim": i} for i in range(3)])
    assert d.result("a", 1, 0.5, 0.10) == CONTINUE
    for i in range(3):  # each dominated by a (and each would be stopped if it were not a point)
        trial = FakeTrial(f"p{i}", {**BASELINE, "latent_dim": i, "seed": 0})
        d.scheduler.on_trial_add(None, trial)
        assert d.scheduler.on_trial_result(None, trial, rung(1, 0.1 + i / 100, 0.5)) == CONTINUE
    # dominated by a but not by the points: with m = 4 recorded, 1 may be ahead of it. Without
    # the points' values (m = 1), a alone ahead of it would stop it.
    assert d.result("c", 1, 0.3, 0.3) == CONTINUE
    alone = Driver()
    alone.result("a", 1, 0.5, 0.10)
    assert alone.result("c", 1, 0.3, 0.3) == STOP
    # a point with a NaN value is not stopped either (and not ranked)
    trial = FakeTrial("pnan", {**BASELINE, "latent_dim": 0, "seed": 0})
    assert d.scheduler.on_trial_result(None, trial, rung(1, math.nan, 0.5)) == CONTINUE
    assert "pnan" not in d.scheduler.recorded[1]


def test_decisions_are_asynchronous_and_follow_what_was_known_at_each_arrival():
    """The same rung results in two orders: each decision is the rule applied to the trials
    recorded at that rung before it, whatever happened at other rungs."""
    a, b = (0.5, 0.1), (0.4, 0.2)  # b is dominated by a
    first = Driver()
    assert [first.result("a", 1, *a), first.result("b", 1, *b)] == [CONTINUE, STOP]
    second = Driver()
    assert [second.result("b", 1, *b), second.result("a", 1, *a)] == [CONTINUE, CONTINUE]

    rng = np.random.default_rng(0)
    points = {f"t{i}": (float(s), float(v)) for i, (s, v) in enumerate(rng.random((12, 2)))}
    for order in (list(points), list(reversed(points))):
        d = Driver()
        seen: list[tuple[float, float]] = []
        for trial_id in order:
            others = np.array([rung_costs(v) for v in seen]).reshape(-1, 2)
            expected = CONTINUE if continues(rung_costs(points[trial_id]), others, 3) else STOP
            assert d.result(trial_id, 1, *points[trial_id]) == expected
            seen.append(points[trial_id])

    # a trial ranked at rung 1 is ranked at rung 3 only against rung 3's records: the first there
    # continues although trials dominating it were recorded at rung 1
    d = Driver()
    d.result("a", 1, 0.9, 0.01)
    assert d.result("z", 1, 0.8, 0.02) == STOP
    d.result("y", 1, 0.95, 0.5)
    assert d.result("y", 3, 0.2, 0.9) == CONTINUE
    # a result it already got a decision for (a restarted trial reaching the rung again)
    assert d.result("y", 3, 0.1, 0.99) == CONTINUE and d.scheduler.recorded[3]["y"] == (0.2, 0.9)
    # a stopped trial that comes back (its stop lost to a resume) is stopped again at once
    assert d.scheduler.on_trial_result(None, d.trials["z"], {N.EPOCH: 2}) == STOP


def test_rank_within_ranks_a_trial_only_against_its_own_group():
    """With rank_within [finetune], a trial still to be fine-tuned by IDEC is not stopped by a
    trial that will not be fine-tuned, however much better that one's rung values are; inside
    its group the rule is the same, and a trial's group is the one it was first ranked in."""
    s = MOASHAScheduler(rank_within=["finetune"])

    def result(trial_id: str, finetune: str, sil: float, loss: float, epoch: int = 1) -> str:
        trial = FakeTrial(trial_id, {"arch": "conv", "finetune": finetune, "seed": 0})
        return s.on_trial_result(None, trial, rung(epoch, sil, loss))

    assert result("none1", "none", 0.6, 0.01) == CONTINUE
    assert result("dec1", "dec", 0.5, 0.02) == CONTINUE  # first of its group: nobody to compare
    assert result("dec2", "dec", 0.4, 0.03) == STOP  # dominated by dec1
    assert result("none2", "none", 0.55, 0.015) == STOP  # dominated by none1
    assert result("abo1", "abo", 0.1, 0.9) == CONTINUE
    assert s.groups == {
        "none1": ("none",),
        "dec1": ("dec",),
        "dec2": ("dec",),
        "none2": ("none",),
        "abo1": ("abo",),
    }
    # ranked together, as without rank_within, dec1 would have stopped at once
    together = MOASHAScheduler()
    together.on_trial_result(None, FakeTrial("none1"), rung(1, 0.6, 0.01))
    assert together.on_trial_result(None, FakeTrial("dec1"), rung(1, 0.5, 0.02)) == STOP
    # the groups are part of the state a resume restores
    again = MOASHAScheduler(rank_within=["finetune"])
    again.set_state(pickle.loads(pickle.dumps(s.state())))
    assert again.groups == s.groups
    trial = FakeTrial("dec3", {"arch": "conv", "finetune": "dec", "seed": 0})
    assert again.on_trial_result(None, trial, rung(1, 0.45, 0.025)) == STOP  # behind dec1


def test_nan_rung_values_stop_the_trial_and_are_not_ranked():
    d = Driver()
    assert d.result("a", 1, math.nan, 0.1) == STOP
    assert d.result("b", 1, 0.3, math.inf) == STOP
    assert d.scheduler.recorded[1] == {}
    assert d.result("c", 1, 0.1, 0.9) == CONTINUE  # still the first ranked at the rung


def test_only_rung_results_are_ranked():
    d = Driver()
    d.result("a", 1, 0.9, 0.01)
    t = d.trial("b")
    assert d.scheduler.on_trial_result(None, t, {N.EPOCH: 2, N.VAL_LOSS: 1.0}) == CONTINUE
    # rung values at an epoch that is no rung, or a rung epoch without them: not ranked
    assert d.scheduler.on_trial_result(None, t, rung(2, 0.1, 0.9)) == CONTINUE
    assert d.scheduler.on_trial_result(None, t, {N.EPOCH: 3, N.VAL_LOSS: 1.0}) == CONTINUE
    # a final result at a rung: recorded (it counts for the others), never stopped
    final = {**rung(1, 0.1, 0.9), N.STATUS: N.Status.OK}
    assert d.scheduler.on_trial_result(None, t, final) == CONTINUE
    assert d.scheduler.recorded[1]["b"] == (0.1, 0.9)
    assert d.scheduler.stopped == {}


def test_rungs_in_seconds_are_ranked_at_the_rung_the_trial_names():
    """Counted in seconds, trials reach a rung at different epochs: each is ranked at the rung its
    result names (names.RUNG_AT), whatever its epoch."""
    s = MOASHAScheduler(grace_period=60, time_attr=N.TIME_TOTAL)
    assert s.rungs[:3] == (60, 180, 540)
    a, b, c = (FakeTrial(t, {"arch": "conv", "seed": 0}) for t in "abc")
    assert s.on_trial_result(None, a, {**rung(2, 0.5, 0.1), N.RUNG_AT: 60}) == CONTINUE
    # epoch 9 against epoch 2, at the same spend: dominated, stopped
    assert s.on_trial_result(None, b, {**rung(9, 0.4, 0.2), N.RUNG_AT: 60}) == STOP
    # values for a second that is no rung, or without the rung they are for: not ranked
    assert s.on_trial_result(None, c, {**rung(3, 0.1, 0.9), N.RUNG_AT: 61}) == CONTINUE
    unnamed = rung(3, 0.1, 0.9)
    del unnamed[N.RUNG_AT]
    assert s.on_trial_result(None, c, unnamed) == CONTINUE
    assert (s.stopped, set(s.recorded[60]), set(s.recorded)) == ({"b": 60}, {"a", "b"}, {60})
    assert s.debug_string() == "MO-ASHA: stopped 1; trials ranked at 60 s: 2"
    with pytest.raises(ValueError, match="time_attr"):
        MOASHAScheduler(time_attr="seconds")


def test_fewer_than_eta_trials_at_a_rung_mirror_rays_asha():
    """Ray's ASHA lets the first trial at a rung through and compares every later one with the
    (1 - 1/eta) quantile of those recorded before it, however few: the second trial already
    stops if it is worse than the first. On trials that dominance orders totally (silhouette r,
    loss 1 - r), MO-ASHA's rank rule makes the same decisions when (m - 1) / eta is a whole
    number, and never lets through a trial ASHA would stop (ASHA interpolates between values)."""
    rng = np.random.default_rng(1)
    values = rng.random(14)
    asha = ASHAScheduler(
        time_attr=N.EPOCH, metric="r", mode="max", grace_period=1, reduction_factor=3, max_t=100
    )
    d = Driver()
    for m, r in enumerate(values):
        trial = FakeTrial(f"t{m}")
        asha.on_trial_add(None, trial)
        theirs = asha.on_trial_result(None, trial, {N.EPOCH: 1, "r": float(r)})
        ours = d.result(f"t{m}", 1, float(r), 1.0 - float(r))
        if m == 0:
            assert theirs == ours == CONTINUE
        elif m == 1:  # fewer than eta recorded: compared all the same
            assert theirs == ours == (CONTINUE if r >= values[0] else STOP)
        if (m - 1) % 3 == 0:
            assert ours == theirs, m
        if ours == CONTINUE:
            assert theirs == CONTINUE, m


def test_state_survives_save_and_restore(tmp_path):
    d = Driver()
    d.result("a", 1, 0.5, 0.1)
    d.result("b", 1, 0.4, 0.2)
    path = tmp_path / "scheduler.pkl"
    d.scheduler.save(str(path))
    fresh = MOASHAScheduler(points=[BASELINE])
    fresh.restore(str(path))
    assert fresh.recorded == d.scheduler.recorded and fresh.stopped == {"b": 1}
    # as Tune saves and restores it: through the callback's state
    again = MOASHAScheduler(points=[BASELINE])
    SchedulerState(again).set_state(
        pickle.loads(pickle.dumps(SchedulerState(d.scheduler).get_state()))
    )
    assert again.recorded == d.scheduler.recorded and again.stopped == {"b": 1}
    assert again.on_trial_result(None, FakeTrial("c"), rung(1, 0.3, 0.3)) == STOP


# --------------------------------------------------------------------------- the rung values


def test_the_rung_silhouette_is_the_exact_silhouette_of_the_subsample():
    """On a split larger than the subsample: the rung value is scikit-learn's silhouette of the
    rung's KMeans labels on the codes of that subsample, and the record keeps its own values."""
    cfg = TrialConfig.from_flat(
        {
            "arch": "mlp", "mlp_depth": 1, "mlp_width_1": 16, "mlp_activation": "relu",
            "mlp_batch_norm": False, "latent_dim": 4, "dropout": 0.0, "lr": 0.003,
            "weight_decay": 0.0, "batch_size": 32, "epochs": 1, "finetune": "none",
            "reduction": "none", "n_clusters": 10, "abo_lr": 0.05, "abo_epochs": 2,
            "abo_batch_size": None, "abo_temperature": 1.0, "abo_init": "k-means++",
            "kmeans_n_init": 2,
        }
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_autoencoder(cfg.autoencoder, (8, 8))
    images = np.random.default_rng(0).integers(0, 256, (SAMPLE_SIZE + 1000, 8, 8), dtype=np.uint8)
    x = images_to_tensor(images)
    got = []
    measured = with_rung_values(lambda r, s: got.append(r), Rungs((3,)), model, x, 10, 7)
    record = {"epoch": 3, "train_loss": 0.2, "val_loss": 0.25}
    measured(record, dict)
    measured({"epoch": 4, "train_loss": 0.2, "val_loss": 0.25}, dict)
    assert N.RUNG_SILHOUETTE not in record and N.RUNG_SILHOUETTE not in got[1]
    index = rung_sample(len(x), 7)
    assert len(index) == SAMPLE_SIZE == len(set(index)) and (np.diff(index) > 0).all()
    assert (index == rung_sample(len(x), 7)).all()  # the same points at every rung
    codes = embed(model, x[torch.as_tensor(index)]).numpy()
    exact = silhouette_score(codes.astype(np.float64), rung_labels(codes, 10, 7))
    assert got[0][N.RUNG_SILHOUETTE] == pytest.approx(exact, abs=1e-6)
    assert got[0][N.RUNG_RECON_LOSS] == 0.25
    assert model.training  # embedding for the rung left the model in training mode

    # with the trial's reduction: the codes go through it (fitted on the subsample) first
    pca = Reduction("pca", pca_dim=2)
    got.clear()
    with_rung_values(lambda r, s: got.append(r), Rungs((3,)), model, x, 10, 7, pca)(record, dict)
    reduced = PCA(n_components=2, svd_solver="full").fit_transform(codes).astype(np.float32)
    exact = silhouette_score(reduced.astype(np.float64), rung_labels(reduced, 10, 7))
    assert got[0][N.RUNG_SILHOUETTE] == pytest.approx(exact, abs=1e-6)
    assert got[0][N.RUNG_SILHOUETTE] != pytest.approx(
        silhouette_score(codes, rung_labels(codes, 10, 7))
    )


def test_rungs_in_seconds_are_measured_at_the_first_epoch_past_them():
    """With rungs in seconds, the rung values come at the end of the first epoch at or past a
    rung, for the latest rung passed, with the clock then; a trial resumed from a checkpoint
    measures again only the rungs it had not decided on when the checkpoint was saved."""
    torch.manual_seed(0)
    cfg = TrialConfig.from_flat({**GOOD, "latent_dim": 3})
    model = build_autoencoder(cfg.autoencoder, (8, 8))
    x = images_to_tensor(np.random.default_rng(0).integers(0, 256, (300, 8, 8), dtype=np.uint8))
    rungs = Rungs((60, 180, 540), N.TIME_TOTAL)
    now, got = [0.0], []

    def run(measured, *epochs_at):
        for epoch, seconds in epochs_at:
            now[0] = seconds
            measured({"epoch": epoch, "train_loss": 0.1, "val_loss": 0.2}, dict)
        return [(r["epoch"], r.get(N.RUNG_AT)) for r in got]

    def measuring(rungs):
        return with_rung_values(
            lambda r, s: got.append(r), rungs, model, x, 3, 0, clock=lambda: now[0]
        )

    now[0] = 70.0  # a set-up longer than the first rung: that rung is still measured
    assert run(measuring(rungs), (1, 75), (2, 100), (3, 600)) == [
        (1, 60), (2, None), (3, 540),  # 3 passed 180 and 540: ranked at 540
    ]  # fmt: skip
    assert [r["clock_s"] for r in got] == [75, 100, 600]  # what a checkpoint keeps
    assert [got[i][N.RUNG_CLOCK] for i in (0, 2)] == [75, 600]
    assert all(np.isfinite(got[i][N.RUNG_SILHOUETTE]) for i in (0, 2))
    got.clear()
    assert run(measuring(rungs), (1, 30), (2, 59.9), (3, 60)) == [(1, None), (2, None), (3, 60)]
    got.clear()
    # resumed from a checkpoint whose last decision was at 175 s (saved later, past 180 s): 60
    # was reported then, 180 was not
    assert run(measuring(replace(rungs, decided_until=175.0)), (7, 230), (8, 541)) == [
        (7, 180), (8, 540),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="clock"):
        with_rung_values(lambda r, s: None, rungs, model, x, 3, 0)
    with pytest.raises(ValueError, match="time_attr"):
        Rungs((60,), "seconds")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "unused", val_fraction=1 / 6, seed=0)


GOOD = {  # at epoch 1 its codes separate less than an untrained network's; at epoch 3, more
    "arch": "mlp",
    "mlp_depth": 1,
    "mlp_width_1": 32,
    "mlp_activation": "relu",
    "mlp_batch_norm": False,
    "latent_dim": 2,
    "dropout": 0.0,
    "lr": 0.006,
    "weight_decay": 0.0,
    "batch_size": 32,
    "epochs": 4,
    "finetune": "none",
    "reduction": "none",
    "n_clusters": 10,
    "abo_lr": 0.05,
    "abo_epochs": 3,
    "abo_batch_size": None,
    "abo_temperature": 1.0,
    "abo_init": "k-means++",
    "kmeans_n_init": 2,
}


def test_a_trial_measures_rung_values_at_its_rungs_only(digits):
    """run_trial with rungs, in both stages: rung values at the rung epochs (on the model as it
    is then) and nowhere else; without rungs (every scheduler but mo-asha) none at all."""
    config = {
        **GOOD,
        "epochs": 2,
        "finetune": "dec",
        "finetune_epochs": 2,
        "finetune_lr": 1e-3,
        "finetune_batch_size": 64,
        "finetune_gamma": 0.1,
        "dec_update_interval": 10,
        "dec_tol": 0.0,
        "dec_init": "latent",
    }
    cfg = TrialConfig.from_flat(config)
    records, checks = [], []
    x_val = images_to_tensor(digits.x_val)

    def on_epoch(record, state):
        records.append(record)
        if N.RUNG_SILHOUETTE in record:  # the model at this epoch, from its training state
            model = build_autoencoder(cfg.autoencoder, digits.image_shape)
            model.load_state_dict(state()["model"])
            codes = embed(model, x_val[torch.as_tensor(rung_sample(len(x_val), 0))]).numpy()
            labels = rung_labels(codes, 10, 0)
            checks.append(silhouette_score(codes.astype(np.float64), labels))

    run_trial(config, digits, device="cpu", on_epoch=on_epoch, rungs=Rungs((1, 3)))
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    at_rungs = [r for r in records if N.RUNG_SILHOUETTE in r]
    assert [r["epoch"] for r in at_rungs] == [1, 3]  # 3: the first fine-tuning epoch
    assert [r[N.RUNG_SILHOUETTE] for r in at_rungs] == pytest.approx(checks, abs=1e-6)
    assert all(r[N.RUNG_RECON_LOSS] == r["val_loss"] for r in at_rungs)

    records.clear()
    run_trial({**GOOD, "epochs": 2}, digits, device="cpu", on_epoch=on_epoch)
    assert records and not any(N.RUNG_SILHOUETTE in r for r in records)


# --------------------------------------------------------------------------- real searches

# Sampled trials take one full-batch step per epoch (batch_size > the 1197 training images, for
# all but 0.1 % of the range): hardly trained, and all alike. `weak` is one of them, as a point.
SAMPLED = {**GOOD, "batch_size": {"type": "int", "low": 32, "high": 1_000_000}}
WEAK = {**GOOD, "batch_size": 2048}


def write_space(path: Path, parameters: dict, points: list[tuple[str, dict]]) -> Path:
    doc = {
        "description": "mo-asha test space",
        "parameters": parameters,
        "points_to_evaluate": [{"name": n, "config": c} for n, c in points],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def rung_history(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
        for k in N.RUNG_OBJECTIVES
    }


@pytest.mark.slow
def test_a_real_mo_asha_search_stops_trials_and_keeps_them_off_the_front(tmp_path):
    """--smoke --scheduler mo-asha on digits, one trial at a time (a fixed arrival order): the
    points `good` and `weak`, then two sampled trials alike to `weak`. Rungs 1 and 3 (4 epochs).
    At rung 1 `good` has the lower loss and the others the higher silhouette: one front, all go
    on. At rung 3 `good` dominates the others: the sampled trials stop there, `weak` (a point)
    goes on."""
    space = write_space(tmp_path / "space.yaml", SAMPLED, [("good", GOOD), ("weak", WEAK)])
    uri = f"sqlite:///{tmp_path}/m.db"
    args = ["--smoke", "--space", str(space), "--scheduler", "mo-asha", "--num-samples", "4"]
    args += ["--grace-period", "1"]
    args += ["--max-concurrent", "1", "--storage-path", str(tmp_path / "ray"), "--name", "mo"]
    args += ["--mlflow-uri", uri, "--experiment", "mo-asha"]
    out = run_search(*args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]

    # Ray's records: each rung epoch reported on its own (epochs are shorter than the report
    # interval), with its rung values
    results = trial_results(tmp_path / "ray" / "mo")
    assert len(results) == 4
    for rows in results.values():
        assert (
            rows[0]["config"]["batch_size"] in (32, 2048) or rows[0]["config"]["batch_size"] > 1197
        )
        at_rungs = [r[N.EPOCH] for r in rows if N.RUNG_SILHOUETTE in r and not N.is_final(r)]
        assert at_rungs == [1, 3]

    client = MlflowClient(uri)
    parent, kids = search_runs(uri, "mo", experiment="mo-asha")
    assert len(kids) == 4
    assert parent.data.params["grace_period"] == "1"
    points = {
        name: next(k for k in kids if all(k.data.params[p] == str(v) for p, v in cfg.items()))
        for name, cfg in (("good", GOOD), ("weak", WEAK))
    }
    history = {k.info.run_id: rung_history(client, k) for k in kids}
    for run in points.values():  # complete, with both rungs' values at step = epoch
        assert run.data.tags[N.STATUS] == N.Status.OK and run.info.status == "FINISHED"
        assert [s for s, _ in history[run.info.run_id][N.RUNG_SILHOUETTE]] == [1, 3]
    good = dict(history[points["good"].info.run_id][N.RUNG_SILHOUETTE])
    weak = dict(history[points["weak"].info.run_id][N.RUNG_SILHOUETTE])
    assert weak[1] > good[1] and weak[3] < good[3]  # the design above, as measured
    stopped = [k for k in kids if k not in points.values()]
    assert len(stopped) == 2
    for run in stopped:  # its last rung's values, each logged once at step = epoch
        tags = run.data.tags
        assert tags[N.STATUS] == N.Status.STOPPED and run.info.status == "FINISHED"
        assert tags[N.STOPPED_AT_EPOCH] == "3"
        for key in N.RUNG_OBJECTIVES:
            assert [s for s, _ in history[run.info.run_id][key]] == [1, 3]
            assert run.data.metrics[key] == history[run.info.run_id][key][-1][1]
        assert N.SILHOUETTE not in run.data.metrics

    # the parent's tables: stopped trials are incomplete, never on the front
    artifacts = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "a")))
    table = pd.read_csv(artifacts / "all_trials.csv")
    stopped_ids = {r.data.tags["ray.trial_id"] for r in stopped}
    rows = table[table["trial_id"].isin(stopped_ids)]
    assert len(rows) == 2 and (rows[N.STATUS] == N.Status.INCOMPLETE).all()
    assert not rows["pareto"].any() and not rows["winner"].any()
    assert not set(pd.read_csv(artifacts / "pareto.csv")["trial_id"]) & stopped_ids
    assert sorted(table.loc[table["point"].notna(), N.STATUS]) == [N.Status.OK] * 2  # "" reads NaN

    # Optuna was told the stopped trials were pruned
    states = sorted(t.state.name for t in optuna_study(tmp_path / "ray" / "mo").trials)
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]


@pytest.mark.slow
def test_resume_restores_the_rung_records(searches, tmp_path):
    """The point `good` reaches rung 1 and waits at epoch 2 (one trial at a time: nothing else
    started); the driver is killed once Tune's saved state holds good's rung-1 values; --resume
    runs the sampled trial, dominated by good at rung 1. Stopped at epoch 1 only if the records
    came back: a scheduler that forgot them would let it through rung 1 (the first there) and
    stop it at rung 3."""
    good = {**GOOD, "mlp_width_1": 16, "lr": 0.01}  # at rung 1 it dominates the sampled trials
    sampled = {**good, "batch_size": SAMPLED["batch_size"]}
    space = write_space(tmp_path / "space.yaml", sampled, [("good", good)])
    uri = f"sqlite:///{tmp_path}/m.db"
    exp_dir = tmp_path / "ray" / "r"
    where = ["--name", "r", "--storage-path", str(tmp_path / "ray"), "--mlflow-uri", uri]
    where += ["--experiment", "mo-asha"]
    args = ["--space", str(space), "--dataset", "digits", "--scheduler", "mo-asha"]
    args += ["--num-samples", "2", "--max-concurrent", "1", *where]
    hold = Hold(tmp_path / "hold", epoch=2)
    hold.on()
    first = searches(args, "first.log", TUNE_GLOBAL_CHECKPOINT_S="2", **hold.env)
    held = wait_for(lambda: hold.held(), 300, "good held at epoch 2", first)

    def good_recorded_in_saved_state():
        try:
            states = ray_private.saved_callback_states(exp_dir)
        except (EOFError, pickle.UnpicklingError):  # Tune is writing the file: look again
            return False
        return any(set(s.get("recorded", {}).get(1, {})) == held for s in states.values() if s)

    wait_for(good_recorded_in_saved_state, 120, "the rung records in the saved state", first)
    first.kill()
    hold.release()

    second = searches([*where, "--resume"], "second.log")  # mo-asha comes from the first start
    assert second.wait(300) == 0, second.tail()
    _, kids = search_runs(uri, "r", experiment="mo-asha")
    assert len(kids) == 2
    by_trial = {k.data.tags["ray.trial_id"]: k for k in kids}
    (good,) = held
    assert by_trial[good].data.tags[N.STATUS] == N.Status.OK
    (other,) = set(by_trial) - held
    assert by_trial[other].data.tags[N.STATUS] == N.Status.STOPPED
    assert by_trial[other].data.tags[N.STOPPED_AT_EPOCH] == "1"


@pytest.mark.slow
def test_a_real_search_ranks_at_rungs_counted_in_seconds(searches, tmp_path):
    """--time-attr time_total_s --grace-period 1: rungs at 1, 3, 9, ... seconds of a trial. The
    test holds every trial 2 s at epoch 1, one trial at a time, so each is past the 1 s rung by
    the end of epoch 2 whatever the machine's speed. Each reports its rung values at the first
    epoch past a rung, naming the latest rung passed (rung/at), never one beyond its own time;
    MLflow logs rung/at with the values; the search's first line names the rungs."""
    space = write_space(tmp_path / "space.yaml", SAMPLED, [("good", GOOD)])
    uri = f"sqlite:///{tmp_path}/m.db"
    args = ["--space", str(space), "--dataset", "digits", "--scheduler", "mo-asha"]
    args += ["--time-attr", "time_total_s", "--grace-period", "1", "--num-samples", "2"]
    args += ["--max-concurrent", "1", "--name", "s", "--storage-path", str(tmp_path / "ray")]
    args += ["--mlflow-uri", uri, "--experiment", "seconds"]
    hold = Hold(tmp_path / "hold", epoch=1)
    hold.on()
    search = searches(args, "search.log", **hold.env)
    for n in (1, 2):
        held = wait_for(
            lambda n=n: len(hold.held()) >= n and hold.held(), 300, "a held trial", search
        )
        time.sleep(2.0)  # the trial's clock passes the 1 s rung while it waits
        hold.release(*held)
    assert search.wait(300) == 0, search.tail()
    assert "mo-asha scheduler (rungs at 1, 3, 9, ... s)" in search.log.read_text()

    results = trial_results(tmp_path / "ray" / "s")
    assert len(results) == 2
    client = MlflowClient(uri)
    _, kids = search_runs(uri, "s", experiment="seconds")
    runs = {k.data.tags["ray.trial_id"]: k for k in kids}
    for trial_id, rows in results.items():
        at_rungs = [r for r in rows if N.RUNG_AT in r]
        assert at_rungs and min(r[N.EPOCH] for r in at_rungs) <= 2  # past 1 s by epoch 2
        rungs = [r[N.RUNG_AT] for r in at_rungs]
        assert rungs == sorted(set(rungs)) and set(rungs) <= {1, 3, 9, 27, 81}
        for r in at_rungs:  # measured on the trial's clock at or past the rung it names
            assert r[N.RUNG_AT] <= r[N.RUNG_CLOCK] and N.RUNG_SILHOUETTE in r
        for key in (N.RUNG_AT, N.RUNG_CLOCK):
            logged = client.get_metric_history(runs[trial_id].info.run_id, key)
            expect = sorted((r[N.EPOCH], pytest.approx(r[key])) for r in at_rungs)
            assert sorted((m.step, m.value) for m in logged) == expect
