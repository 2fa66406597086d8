"""Tests for tune.space: the shipped space files, the flat-config check and load-time errors."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml

from tune import names as N
from tune.space import SearchSpace, SpaceError, load_space, spaces_dir, validate_config

SHIPPED = sorted(p.stem for p in spaces_dir().glob("*.yaml"))  # every file, whatever is added
BENCH_SPACES = sorted((spaces_dir().parent / "bench" / "spaces").glob("*.yaml"))

# The source documents' configurations, typed out independently of seeds.yaml so a typo there
# is caught (they must match the documents, not merely each other).
DOC1 = {
    "arch": "mlp",
    "mlp_depth": 1,
    "mlp_width_1": 128,
    "mlp_activation": "relu",
    "mlp_batch_norm": False,
    "latent_dim": 64,
    "dropout": 0.0,
    "lr": 0.001,
    "weight_decay": 1e-8,
    "batch_size": 32,
    "epochs": 20,
    "finetune": "none",
    "reduction": "none",
    "n_clusters": 10,
    "abo_lr": 0.1,
    "abo_epochs": 200,
    "abo_batch_size": 32,
    "abo_temperature": 1.0,
    "abo_init": "farthest",
    "kmeans_n_init": 10,
}
DOC2 = {
    "arch": "conv",
    "conv_depth": 2,
    "conv_channels_1": 16,
    "conv_channels_2": 8,
    "latent_dim": 64,
    "dropout": 0.2,
    "lr": 0.001,
    "weight_decay": 0.0,
    "batch_size": 256,
    "epochs": 10,
    "finetune": "none",
    "reduction": "none",
    "n_clusters": 10,
    "abo_lr": 0.1,
    "abo_epochs": 200,
    "abo_batch_size": 32,
    "abo_temperature": 1.0,
    "abo_init": "farthest",
    "kmeans_n_init": 10,
}


# The stages' own keys, added to DOC1 to make a config with that stage.
FT_COMMON = {
    "finetune_epochs": 5,
    "finetune_lr": 1e-3,
    "finetune_batch_size": 256,
    "finetune_gamma": 0.1,
}
FT_DEC = {
    "finetune": "dec",
    **FT_COMMON,
    "dec_update_interval": 140,
    "dec_tol": 0.001,
    "dec_init": "reduced",
}
FT_ABO = {
    "finetune": "abo",
    **FT_COMMON,
    "finetune_temperature_start": 10.0,
    "finetune_temperature_end": 0.1,
}
UMAP = {
    "reduction": "umap",
    "umap_dim": 10,
    "umap_n_neighbors": 20,
    "umap_min_dist": 0.0,
    "umap_fit_size": 10000,
}


def typed(config: dict[str, Any]) -> dict[str, tuple[type, Any]]:
    """Compare values with their types: 0 == 0.0 == False in Python, not in a config."""
    return {k: (type(v), v) for k, v in config.items()}


# ----------------------------------------------------------------------------- shipped spaces


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads(name: str) -> None:
    space = load_space(name)
    assert space.path == spaces_dir() / f"{name}.yaml"
    assert space.description and "\n" not in space.description
    assert len(space.points) == space.num_points == len(space.point_names)


def test_the_five_documented_spaces_ship() -> None:
    assert {"default", "mlp", "conv", "seeds", "smoke"} <= set(SHIPPED)


@pytest.mark.parametrize("path", BENCH_SPACES, ids=lambda p: p.name)
def test_bench_space_loads(path: Path) -> None:
    assert load_space(path).description


def test_shipped_points() -> None:
    assert load_space("seeds").points == [DOC1, DOC2]
    assert load_space("seeds").point_names == ["doc1-mlp", "doc2-conv"]
    assert load_space("default").points == [DOC1, DOC2]
    assert load_space("mlp").points == [DOC1]
    assert load_space("conv").points == [DOC2]
    assert load_space("smoke").points == []
    assert load_space("digits").points == [DOC1, DOC2]
    for point in load_space("default").points:
        assert typed(point) == typed(validate_config(point))


def test_default_hands_digits_to_its_own_space() -> None:
    default = load_space("default")
    assert default.for_dataset("digits").path == spaces_dir() / "digits.yaml"
    assert default.for_dataset("fashion-mnist") is default
    assert default.for_dataset("mnist") is default
    assert load_space("digits").for_dataset("digits").path == spaces_dir() / "digits.yaml"
    assert load_space("smoke").for_dataset("digits").path == spaces_dir() / "smoke.yaml"


def test_seeds_is_a_points_only_space() -> None:
    seeds = load_space("seeds")
    assert seeds.points_only and seeds.max_trials == 2
    assert load_space("default").max_trials is None
    # Its parameters span exactly the two documents' values.
    assert seeds.parameters["batch_size"].choices == (32, 256)
    assert seeds.parameters["n_clusters"].type == "fixed"


@pytest.mark.parametrize("name", ["default", "mlp", "conv", "seeds"])
def test_enqueued_points_come_back_exactly(name: str) -> None:
    """Ray's OptunaSearch enqueues points; define-by-run must then reproduce each one."""
    space = load_space(name)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for point in space.points:
        study.enqueue_trial(point)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an out-of-range enqueued value only warns in Optuna
        for point in space.points:
            trial = study.ask()
            fixed = space.define_by_run(trial)
            config = {**trial.params, **fixed}
            assert typed(config) == typed(point)


def test_ray_optuna_search_runs_points_first() -> None:
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("default")
    searcher = OptunaSearch(
        space=space.define_by_run,
        metric=["val/silhouette", "val/recon_loss"],
        mode=["max", "min"],
        points_to_evaluate=space.points,
        seed=0,
    )
    suggested = [searcher.suggest(f"t{i}") for i in range(6)]
    assert [typed(c) for c in suggested[:2]] == [typed(DOC1), typed(DOC2)]
    for config in suggested[2:]:
        space.contains(config)
        assert typed(validate_config(config)) == typed(config)


@pytest.mark.parametrize("name", SHIPPED)
def test_optuna_configs_are_valid_and_inside(name: str) -> None:
    space = load_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    archs = set()
    for _ in range(60):
        trial = study.ask()
        fixed = space.define_by_run(trial)
        config = {**trial.params, **fixed}
        space.contains(config)
        assert typed(validate_config(config, name)) == typed(config)
        archs.add(config["arch"])
        study.tell(trial, 0.0)
    expected = {"mlp": {"mlp"}, "conv": {"conv"}}.get(name, {"mlp", "conv"})
    assert archs == expected


@pytest.mark.parametrize("name", SHIPPED)
def test_sample_is_valid_and_inside(name: str) -> None:
    space = load_space(name)
    rng = random.Random(1)
    depths = set()
    for _ in range(200):
        config = space.sample(rng)
        space.contains(config)
        validate_config(config)
        depths.add((config["arch"], config.get("mlp_depth", config.get("conv_depth"))))
    if name == "default":
        assert depths == {("mlp", 1), ("mlp", 2), ("conv", 1), ("conv", 2)}


def test_define_by_run_returns_only_active_fixed_values() -> None:
    space = load_space("default")
    study = optuna.create_study()
    study.enqueue_trial(DOC2)
    trial = study.ask()
    fixed = space.define_by_run(trial)
    assert fixed == {"n_clusters": 10, "kmeans_n_init": 10}
    assert not any(k.startswith("mlp_") for k in trial.params)


def test_load_space_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = load_space("conv")
    assert load_space("conv.yaml").points == by_name.points
    assert load_space(spaces_dir() / "conv.yaml").points == by_name.points
    monkeypatch.chdir(spaces_dir().parent)
    assert load_space("search_spaces/conv.yaml").points == by_name.points
    with pytest.raises(SpaceError, match="nope.yaml: no such file.*available: conv, default"):
        load_space("nope")
    with pytest.raises(SpaceError, match="no such file"):
        load_space(tmp_path / "missing.yaml")


def test_yaml_reads_exponents_without_a_dot(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(minimal_space()).replace("0.001", "1e-3"))
    assert "1e-3" in path.read_text()
    assert load_space(path).parameters["lr"].value == 0.001


# --------------------------------------------------------------------------- validate_config


def test_validate_config_normalises() -> None:
    raw = dict(DOC1, mlp_width_1=np.int64(128), mlp_batch_norm=np.bool_(False), lr=1, seed=3)
    raw["abo_batch_size"] = None
    out = validate_config(raw)
    assert typed(out) == typed(dict(DOC1, lr=1.0, seed=3, abo_batch_size=None))
    assert list(out) == list(DOC1) + ["seed"]  # canonical order


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        ({"mlp_widht_1": 3}, "mlp_widht_1", "unknown key (did you mean mlp_width_1?)"),
        ({"epochs": None}, "epochs", "expected an int >= 1, got null"),
        ({"epochs": 0}, "epochs", "expected an int >= 1, got 0"),
        ({"epochs": 2.0}, "epochs", "expected an int >= 1, got float 2.0"),
        ({"batch_size": True}, "batch_size", "got bool true"),
        ({"lr": 0.0}, "lr", "expected a float > 0, got 0.0"),
        ({"lr": "1e-3"}, "lr", "got str '1e-3'"),
        ({"lr": float("nan")}, "lr", "got nan"),
        ({"dropout": 1.0}, "dropout", "expected a float in [0, 1), got 1.0"),
        ({"weight_decay": -1.0}, "weight_decay", "expected a float >= 0, got -1.0"),
        ({"n_clusters": 1}, "n_clusters", "expected an int >= 2, got 1"),
        ({"abo_batch_size": 0}, "abo_batch_size", "expected an int >= 1 or null, got 0"),
        ({"pca_dim": 0}, "pca_dim", "expected an int >= 1, got 0"),
        ({"pca_dim": 8}, "pca_dim", "pca_dim is not used by reduction none"),
        ({"reduction": "pca"}, "pca_dim", "missing required key pca_dim for reduction pca"),
        ({"reduction": "tsne"}, "reduction", "expected one of none, pca, umap, got str 'tsne'"),
        ({"reduction": "DELETE"}, "reduction", "missing required key reduction for arch mlp"),
        ({"finetune": "DELETE"}, "finetune", "missing required key finetune for arch mlp"),
        ({"finetune": "dkm"}, "finetune", "expected one of none, abo, dec, got str 'dkm'"),
        (
            {"finetune": "abo"},
            "finetune_epochs",
            "missing required key finetune_epochs for finetune abo",
        ),
        ({"finetune_gamma": 0.1}, "finetune_gamma", "finetune_gamma is not used by finetune none"),
        ({**FT_DEC, "finetune_gamma": 0.0}, "finetune_gamma", "expected a float > 0, got 0.0"),
        ({**FT_DEC, "dec_tol": 1.0}, "dec_tol", "expected a float in [0, 1), got 1.0"),
        ({**FT_DEC, "dec_init": "umap"}, "dec_init", "expected one of latent, reduced, got str"),
        (
            {**FT_DEC, "dec_init": "DELETE"},
            "dec_init",
            "missing required key dec_init for finetune",
        ),
        ({**FT_ABO, "dec_init": "latent"}, "dec_init", "dec_init is not used by finetune abo"),
        (
            {**FT_DEC, "dec_update_interval": 0},
            "dec_update_interval",
            "expected an int >= 1, got 0",
        ),
        (
            {**FT_DEC, "finetune_temperature_end": 0.1},
            "finetune_temperature_end",
            "finetune_temperature_end is not used by finetune dec",
        ),
        ({**FT_ABO, "finetune_temperature_start": -1.0}, "finetune_temperature_start", "> 0"),
        ({**FT_ABO, "finetune_temperature_end": "DELETE"}, "finetune_temperature_end", "missing"),
        ({**UMAP, "umap_n_neighbors": 1}, "umap_n_neighbors", "expected an int >= 2, got 1"),
        ({**UMAP, "umap_min_dist": -0.1}, "umap_min_dist", "expected a float >= 0, got -0.1"),
        ({**UMAP, "umap_dim": 2.5}, "umap_dim", "expected an int >= 1, got float 2.5"),
        ({**UMAP, "umap_fit_size": "DELETE"}, "umap_fit_size", "missing required key umap_fit"),
        ({"umap_dim": 2}, "umap_dim", "umap_dim is not used by reduction none"),
        ({"mlp_batch_norm": 0}, "mlp_batch_norm", "expected a bool, got int 0"),
        ({"mlp_activation": "swish"}, "mlp_activation", "expected one of relu, leaky_relu"),
        ({"arch": "rnn"}, "arch", "expected one of mlp, conv, got str 'rnn'"),
        ({"mlp_depth": 5}, "mlp_depth", "expected an int in [1, 4], got 5"),
        ({"seed": -1}, "seed", "expected an int in [0, 4294967295], got -1"),
        ({"epochs": "DELETE"}, "epochs", "missing required key epochs for arch mlp"),
        ({"arch": "DELETE"}, "arch", "missing required key arch"),
        ({"mlp_width_1": "DELETE"}, "mlp_width_1", "missing required key mlp_width_1"),
        (
            {"mlp_width_2": 64},
            "mlp_width_2",
            "mlp_width_2 is not used by arch mlp with mlp_depth 1",
        ),
        ({"conv_depth": 1}, "conv_depth", "conv_depth is not used by arch mlp"),
        ({"conv_channels_1": 8}, "conv_channels_1", "conv_channels_1 is not used by arch mlp"),
    ],
)
def test_validate_config_errors(change: dict[str, Any], key: str, reason: str) -> None:
    config = dict(DOC1)
    for k, v in change.items():
        if v == "DELETE":
            config.pop(k, None)  # a stage's key: DELETE stands for leaving it out
        else:
            config[k] = v
    with pytest.raises(SpaceError) as info:
        validate_config(config, "trial 7")
    err = info.value
    assert (err.source, err.key) == ("trial 7", key)
    assert reason in err.reason
    assert str(err) == f"trial 7: {key}: {err.reason}" and "\n" not in str(err)


@pytest.mark.parametrize(
    "stage", [FT_DEC, FT_ABO, UMAP, {**FT_ABO, **UMAP}, {"reduction": "pca", "pca_dim": 8}]
)
def test_validate_config_accepts_each_stage(stage: dict[str, Any]) -> None:
    out = validate_config(dict(DOC1, **stage))
    assert {k: out[k] for k in stage} == stage


def test_validate_config_conv_depth_decides_channels() -> None:
    validate_config(dict(DOC2, conv_depth=3, conv_channels_3=4))
    with pytest.raises(SpaceError, match="conv_channels_3: missing required key conv_channels_3 "):
        validate_config(dict(DOC2, conv_depth=3))


# ------------------------------------------------------------------------------- contains


@pytest.mark.parametrize(
    ("config", "key", "reason"),
    [
        (dict(DOC1, lr=0.5), "lr", "0.5 is outside float [0.0005, 0.005] log"),
        (dict(DOC1, batch_size=48), "batch_size", "48 is outside one of [32, 64, 128, 256]"),
        (dict(DOC1, abo_batch_size=None, n_clusters=9), "n_clusters", "outside fixed 10"),
        (dict(DOC1, conv_depth=1), "conv_depth", "present although its condition (arch = conv)"),
        (dict(DOC1, mlp_width_2=64), "mlp_width_2", "condition (arch = mlp, mlp_depth = 2)"),
        ({k: v for k, v in DOC1.items() if k != "epochs"}, "epochs", "missing; the space samples"),
        (dict(DOC1, mlp_batch_norm=0), "mlp_batch_norm", "0 is outside fixed false"),
    ],
)
def test_contains_rejects(config: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(SpaceError) as info:
        load_space("default").contains(config, where="point")
    assert info.value.key == f"point.{key}"
    assert reason in info.value.reason


def test_contains_accepts_seed_and_null_batch() -> None:
    space = load_space("default")
    space.contains(dict(DOC1, seed=5, abo_batch_size=None))
    with pytest.raises(SpaceError, match="not a parameter of this space"):
        load_space("conv").contains(dict(DOC2, mlp_depth=1))


# --------------------------------------------------------------------------- load-time errors


def minimal_space() -> dict[str, Any]:
    """A small valid space with both families and one conditional layer key each."""
    return {
        "description": "test space",
        "parameters": {
            "arch": {"type": "categorical", "choices": ["mlp", "conv"]},
            "mlp_depth": {"type": "int", "low": 1, "high": 2, "when": {"arch": "mlp"}},
            "mlp_width_1": {
                "type": "int",
                "low": 8,
                "high": 64,
                "log": True,
                "when": {"arch": "mlp"},
            },
            "mlp_width_2": {"type": "int", "low": 8, "high": 64, "when": {"mlp_depth": 2}},
            "mlp_activation": {"type": "fixed", "value": "relu", "when": {"arch": "mlp"}},
            "mlp_batch_norm": {
                "type": "categorical",
                "choices": [True, False],
                "when": {"arch": "mlp"},
            },
            "conv_depth": {"type": "int", "low": 1, "high": 1, "when": {"arch": "conv"}},
            "conv_channels_1": {"type": "int", "low": 4, "high": 8, "when": {"arch": "conv"}},
            "latent_dim": 8,
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "lr": 0.001,
            "weight_decay": {"type": "categorical", "choices": [0.0, 1.0e-8]},
            "batch_size": 32,
            "epochs": {"type": "int", "low": 1, "high": 3},
            "finetune": "none",
            "reduction": "none",
            "n_clusters": 10,
            "abo_lr": 0.1,
            "abo_epochs": 5,
            "abo_batch_size": {"type": "categorical", "choices": [32, None]},
            "abo_temperature": 1.0,
            "abo_init": "farthest",
            "kmeans_n_init": 10,
        },
    }


def write(tmp_path: Path, doc: Any, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def test_minimal_space_is_valid(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, minimal_space()))
    assert isinstance(space, SearchSpace) and space.points == []


def edit(path: str, value: Any) -> dict[str, Any]:
    """minimal_space() with the dotted path set to value ("DELETE" removes it)."""
    doc = minimal_space()
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    if value == "DELETE":
        del node[last]
    else:
        node[last] = value
    return doc


POINT = {
    "name": "p",
    "config": {
        "arch": "conv", "conv_depth": 1, "conv_channels_1": 4, "latent_dim": 8, "dropout": 0.1,
        "lr": 0.001, "weight_decay": 0.0, "batch_size": 32, "epochs": 2, "finetune": "none", "reduction": "none", "n_clusters": 10,
        "abo_lr": 0.1, "abo_epochs": 5, "abo_batch_size": None, "abo_temperature": 1.0, "abo_init": "farthest",
        "kmeans_n_init": 10,
    },
}  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "key", "reason"),
    [
        (edit("colour", "red"), "colour", "unknown top-level key"),
        (edit("description", "DELETE"), "description", "required: one line of text"),
        (edit("parameters", "DELETE"), "parameters", "required"),
        (edit("parameters.mlp_widht_3", 8), "parameters.mlp_widht_3",
         "unknown parameter (did you mean mlp_width_3?)"),
        (edit("parameters.seed", 1), "parameters.seed", "added by the search"),
        (edit("parameters.dropout.step", 0.1), "parameters.dropout.step",
         "unknown field for type float"),
        (edit("parameters.dropout.type", "uniform"), "parameters.dropout.type",
         "unknown type 'uniform'"),
        (edit("parameters.dropout.type", "DELETE"), "parameters.dropout.type",
         "missing field type"),
        (edit("parameters.epochs.low", "abc"), "parameters.epochs.low",
         "expected an int, got str 'abc'"),
        (edit("parameters.epochs.low", 1.5), "parameters.epochs.low", "expected an int"),
        (edit("parameters.epochs.high", "DELETE"), "parameters.epochs.high", "required"),
        (edit("parameters.epochs.low", 5), "parameters.epochs", "low (5) > high (3)"),
        (edit("parameters.epochs.low", 0), "parameters.epochs.low", "expected an int >= 1, got 0"),
        (edit("parameters.dropout.high", 1.0), "parameters.dropout.high",
         "expected a float in [0, 1), got 1.0"),
        (edit("parameters.dropout.log", True), "parameters.dropout.log",
         "log scale needs low > 0"),
        (edit("parameters.dropout.log", "yes please"), "parameters.dropout.log",
         "expected a bool"),
        (edit("parameters.epochs.type", "float"), "parameters.epochs.type",
         "type float does not fit epochs"),
        (edit("parameters.weight_decay.choices", []), "parameters.weight_decay.choices",
         "expected a non-empty list"),
        (edit("parameters.weight_decay.choices", [0.0, 0]), "parameters.weight_decay.choices",
         "duplicate choice 0.0"),
        (edit("parameters.batch_size", [32, 64]), "parameters.batch_size",
         "a list is not a value"),
        (edit("parameters.arch.choices", ["mlp", "rnn"]), "parameters.arch.choices[1]",
         "expected one of mlp, conv, got str 'rnn'"),
        (edit("parameters.arch", "transformer"), "parameters.arch.value",
         "expected one of mlp, conv"),
        (edit("parameters.mlp_depth.when", {"arch": "rnn"}), "parameters.mlp_depth.when.arch",
         "expected one of mlp, conv"),
        (edit("parameters.mlp_depth.when", {"archh": "mlp"}), "parameters.mlp_depth.when.archh",
         "refers to unknown parameter archh (did you mean arch?)"),
        (edit("parameters.mlp_depth.when", {"epochs": 2}), "parameters.mlp_depth.when.epochs",
         "refers to epochs, which comes later"),
        (edit("parameters.epochs.when", {"dropout": 0.1}), "parameters.epochs.when.dropout",
         "a float range"),
        (edit("parameters.mlp_width_2.when", {"mlp_depth": 3}), "parameters.mlp_width_2.when.mlp_depth",
         "3 is not a possible value of mlp_depth (int [1, 2])"),
        (edit("parameters.mlp_width_2.when", {"mlp_depth": []}), "parameters.mlp_width_2.when.mlp_depth",
         "non-empty list"),
        (edit("parameters.conv_channels_1.when", {"arch": "conv", "mlp_depth": 1}),
         "parameters.conv_channels_1.when", "never holds, so conv_channels_1 could never apply"),
        (edit("parameters.epochs", "DELETE"), "parameters.epochs",
         "missing required key epochs for arch mlp"),
        (edit("parameters.conv_channels_1.when", "DELETE"), "parameters.conv_channels_1",
         "conv_channels_1 is not used by arch mlp"),
        (edit("parameters.mlp_width_2.when", {"arch": "mlp"}), "parameters.mlp_width_2",
         "mlp_width_2 is not used by arch mlp with mlp_depth 1"),
        (edit("parameters.mlp_width_1.when", {"arch": "mlp", "mlp_depth": 1}),
         "parameters.mlp_width_1", "missing required key mlp_width_1 for arch mlp with mlp_depth 2"),
        (edit("parameters.conv_depth.high", 2), "parameters.conv_channels_2",
         "missing required key conv_channels_2 for arch conv with conv_depth 2"),
        (edit("parameters.finetune", {"type": "categorical", "choices": ["none", "dec"]}),
         "parameters.finetune_epochs", "missing required key finetune_epochs for finetune dec"),
        (edit("parameters.finetune", "dkm"), "parameters.finetune.value",
         "expected one of none, abo, dec"),
        (edit("parameters.finetune_gamma", 0.1), "parameters.finetune_gamma",
         "finetune_gamma is not used by finetune none"),
        (edit("parameters.reduction", {"type": "categorical", "choices": ["none", "umap"]}),
         "parameters.umap_dim", "missing required key umap_dim for reduction umap"),
        (edit("parameters.umap_min_dist", {"type": "float", "low": -1.0, "high": 0.5}),
         "parameters.umap_min_dist.low", "expected a float >= 0, got -1.0"),
        (edit("parameters.pca_dim", {"type": "categorical", "choices": [None, 8]}),
         "parameters.pca_dim.choices[0]", "expected an int >= 1, got null"),
        (edit("parameters.dec_tol", {"type": "fixed", "value": 0.001, "when": {"finetune": "dec"}}),
         "parameters.dec_tol.when.finetune", "dec is not a possible value of finetune (fixed none)"),
        (edit("points_to_evaluate", [dict(POINT, config=dict(POINT["config"], lr=0.01))]),
         "points_to_evaluate[0]", "point p is outside the space: lr: 0.01 is outside fixed 0.001"),
        (edit("points_to_evaluate", [dict(POINT, config=dict(POINT["config"], lr=0.0))]),
         "points_to_evaluate[0].config.lr", "expected a float > 0"),
        (edit("points_to_evaluate", [dict(POINT, config=dict(POINT["config"], seed=1))]),
         "points_to_evaluate[0].config.seed", "the search adds the seed"),
        (edit("points_to_evaluate", [POINT, POINT]), "points_to_evaluate",
         "duplicate point name 'p'"),
        (edit("points_to_evaluate", [{"config": POINT["config"]}]),
         "points_to_evaluate[0].name", "required"),
        (edit("points_to_evaluate", [3]), "points_to_evaluate[0]", "expected a file name"),
        (edit("points_to_evaluate", "nothere.yaml"), "points_to_evaluate",
         "no such file nothere.yaml (next to this file)"),
        (edit("points_to_evaluate", [{"file": "s.yaml", "names": "p"}]),
         "points_to_evaluate[0].names", "expected a list of point names"),
        (edit("points_to_evaluate", [dict(POINT, colour=1)]), "points_to_evaluate[0].colour",
         "unknown field (allowed: name, config)"),
    ],
)  # fmt: skip
def test_load_errors(tmp_path: Path, doc: dict[str, Any], key: str, reason: str) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    err = info.value
    assert err.key == key, str(err)
    assert reason in err.reason, str(err)
    assert "\n" not in str(err)
    if key:
        assert Path(err.source).resolve() == path.resolve()
        assert str(err) == f"{err.source}: {key}: {err.reason}"


def test_branch_on_another_key_is_named(tmp_path: Path) -> None:
    doc = edit("parameters.batch_size", {"type": "categorical", "choices": [32, 64]})
    doc["parameters"]["epochs"]["when"] = {"batch_size": 64}
    with pytest.raises(SpaceError) as info:
        load_space(write(tmp_path, doc))
    assert info.value.key == "parameters.epochs"
    assert info.value.reason == "missing required key epochs for arch mlp (when batch_size=32)"


def test_yaml_level_errors(tmp_path: Path) -> None:
    with pytest.raises(
        SpaceError, match=r"s.yaml: invalid YAML: expected the node content.* at line 3, column 1"
    ):
        load_space(write(tmp_path, "description: x\nparameters: [\n"))
    with pytest.raises(SpaceError, match=r"invalid YAML: duplicate key 'lr' at line 4"):
        load_space(write(tmp_path, "description: x\nparameters:\n  lr: 0.1\n  lr: 0.2\n"))
    with pytest.raises(SpaceError, match="expected a mapping at the top level"):
        load_space(write(tmp_path, "- 1\n"))


def test_dataset_spaces(tmp_path: Path) -> None:
    write(tmp_path, minimal_space(), "small.yaml")
    space = load_space(
        write(tmp_path, {**minimal_space(), "dataset_spaces": {"digits": "small.yaml"}})
    )
    assert space.dataset_spaces == {"digits": tmp_path / "small.yaml"}
    assert space.for_dataset("digits").path == tmp_path / "small.yaml"
    assert space.for_dataset("mnist") is space
    chained = {**minimal_space(), "dataset_spaces": {"mnist": "s.yaml"}}
    write(tmp_path, chained, "chain.yaml")
    cases = [
        ({"cifar": "small.yaml"}, "dataset_spaces.cifar", "not a data set name (one of mnist"),
        ({"digits": "gone.yaml"}, "dataset_spaces.digits", "gone.yaml: no such file"),
        ({"digits": "../small.yaml"}, "dataset_spaces.digits", "a file name beside this one"),
        ({"digits": "s.yaml"}, "dataset_spaces.digits", "hands the data set back to this file"),
        ({"digits": "chain.yaml"}, "dataset_spaces.digits", "hands the data set back"),
        (["digits"], "dataset_spaces", "expected a mapping of data set: space file"),
    ]
    for value, key, reason in cases:
        with pytest.raises(SpaceError) as info:
            load_space(write(tmp_path, {**minimal_space(), "dataset_spaces": value}))
        assert (info.value.key, info.value.source) == (key, str(tmp_path / "s.yaml"))
        assert reason in info.value.reason, info.value.reason
    write(tmp_path, {**minimal_space(), "dataset_spaces": {"digits": "small.yaml"}}, "mid.yaml")
    with pytest.raises(SpaceError, match="mid.yaml has dataset_spaces of its own"):
        load_space(write(tmp_path, {**minimal_space(), "dataset_spaces": {"digits": "mid.yaml"}}))


def test_a_space_names_its_scheduler(tmp_path: Path) -> None:
    default = load_space("default")
    assert (default.scheduler, default.time_attr, default.grace_period, default.rank_within) == (
        "mo-asha",
        N.TIME_TOTAL,
        60,
        ("finetune",),
    )
    assert (load_space("digits").scheduler, load_space("smoke").scheduler) == ("fifo", "fifo")
    space = load_space(write(tmp_path, {**minimal_space(), "scheduler": {"name": "asha"}}))
    assert (space.scheduler, space.time_attr, space.grace_period) == ("asha", N.EPOCH, 1)
    assert load_space(write(tmp_path, minimal_space())).scheduler == "fifo"
    cases = [
        ({"name": "hyperband"}, "scheduler.name", "is not one of fifo, asha, mo-asha"),
        ({"grace_period": 3}, "scheduler", "expected a mapping with a name"),
        ("mo-asha", "scheduler", "expected a mapping with a name"),
        (
            {"name": "asha", "grace": 3},
            "scheduler.grace",
            "unknown key (known: name, time_attr, grace_period, rank_within)",
        ),
        ({"name": "asha", "rank_within": ["lr"]}, "scheduler.rank_within", "only mo-asha"),
        (
            {"name": "mo-asha", "rank_within": "lr"},
            "scheduler.rank_within",
            "expected a list of parameters, got str 'lr'",
        ),
        (
            {"name": "mo-asha", "rank_within": ["lr", "fine_tune"]},
            "scheduler.rank_within[1]",
            "'fine_tune' is not a parameter of the space",
        ),
        ({"name": "fifo", "grace_period": 3}, "scheduler.grace_period", "fifo stops no trial"),
        ({"name": "fifo", "time_attr": "epoch"}, "scheduler.time_attr", "fifo has no rungs"),
        (
            {"name": "mo-asha", "time_attr": "seconds"},
            "scheduler.time_attr",
            "str 'seconds' is not one of epoch, time_total_s",
        ),
        (
            {"name": "mo-asha", "grace_period": 0},
            "scheduler.grace_period",
            "an int >= 1, got int 0",
        ),
        (
            {"name": "asha", "grace_period": 1.5},
            "scheduler.grace_period",
            "an int >= 1, got float 1.5",
        ),
    ]
    for value, key, reason in cases:
        with pytest.raises(SpaceError) as info:
            load_space(write(tmp_path, {**minimal_space(), "scheduler": value}))
        assert (info.value.key, info.value.source) == (key, str(tmp_path / "s.yaml"))
        assert reason in info.value.reason, info.value.reason


def test_points_files_and_references(tmp_path: Path) -> None:
    write(tmp_path, {"description": "pts", "points": [POINT]}, "pts.yaml")
    pts = load_space(tmp_path / "pts.yaml")
    assert pts.points_only and pts.max_trials == 1 and pts.points[0] == POINT["config"]

    doc = edit("points_to_evaluate", ["pts.yaml", {"file": "pts.yaml", "names": ["p"]}])
    with pytest.raises(SpaceError, match="duplicate point name 'p'"):
        load_space(write(tmp_path, doc))
    space = load_space(write(tmp_path, edit("points_to_evaluate", [{"file": "pts.yaml"}])))
    assert space.point_names == ["p"]
    inline = dict(POINT, name="q")
    space = load_space(write(tmp_path, edit("points_to_evaluate", ["pts.yaml", inline])))
    assert space.point_names == ["p", "q"]

    doc = edit("points_to_evaluate", [{"file": "pts.yaml", "names": ["zz"]}])
    with pytest.raises(SpaceError, match=r"points_to_evaluate\[0\].names\[0\]: no point 'zz'"):
        load_space(write(tmp_path, doc))

    # A point that is valid in its own file but outside the referring space.
    narrow = edit("parameters.dropout.high", 0.05)
    narrow["points_to_evaluate"] = "pts.yaml"
    with pytest.raises(SpaceError, match="point p is outside the space: dropout: 0.1 is outside"):
        load_space(write(tmp_path, narrow))

    loop = edit("points_to_evaluate", "s.yaml")
    with pytest.raises(SpaceError, match="circular reference to s.yaml"):
        load_space(write(tmp_path, loop))

    both = {"description": "x", "points": [POINT], "parameters": {"lr": 0.1}}
    with pytest.raises(SpaceError, match="parameters: a points file"):
        load_space(write(tmp_path, both))
