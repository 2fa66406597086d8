"""Search spaces: YAML files of hyperparameter distributions, and the flat trial config they yield.

A search space is data, not code: `search_spaces/<name>.yaml` (schema in
`search_spaces/README.md`). `load_space` reads and validates a file once, at the edge, so a
mistake fails before Ray starts with one line naming the file, the key path and the reason:

    search_spaces/x.yaml: parameters.lr: low (0.1) > high (0.01)

A trial's config is one flat dict (`arch`, `mlp_*` or `conv_*`, shared autoencoder and clusterer
keys, and the `seed` the search adds). `validate_config` checks such a dict; the key table `KEYS`
below is the only description of those keys, and a space is accepted only if every config it can
produce passes `validate_config`.

`SearchSpace.define_by_run` is the callable handed to Ray's `OptunaSearch`: it suggests every
sampled parameter whose `when` condition holds and returns the fixed ones. Ray enqueues
`points_to_evaluate` with `study.enqueue_trial`, and Optuna's `suggest_*` then return the enqueued
values, so the space's `points` run first, exactly as written.
"""

from __future__ import annotations

import difflib
import math
import numbers
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from models.abo import INITS as ABO_INITS
from tune import names as N

if TYPE_CHECKING:  # optuna is only needed by the caller that owns the study
    import optuna

ARCHS = ("mlp", "conv")
FINETUNES = ("none", "abo", "dec")  # joint fine-tuning stage after pre-training (tune/finetune.py)
REDUCTIONS = ("none", "pca", "umap")  # what the clusterers see (tune/reduction.py)
DEC_INITS = ("latent", "reduced")  # where IDEC's starting KMeans runs (tune/finetune.py)
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh")
DEPTH_KEY = {"mlp": "mlp_depth", "conv": "conv_depth"}
_MAX_DEPTH = {"mlp": 4, "conv": 3}
# Keys that shape which other keys exist; the space check enumerates all their values.
_STRUCTURAL = ("arch", *DEPTH_KEY.values(), "finetune", "reduction")
# Guards the space check against a file whose conditions multiply into a huge tree.
_MAX_BRANCHES = 10_000


class SpaceError(ValueError):
    """A search space file or a trial config is invalid.

    `str(err)` is one line, "<source>: <key path>: <reason>"; the parts are also attributes.
    """

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source, self.key, self.reason = source, key, reason
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")


class _InvalidValueError(Exception):
    """Internal: a value breaks a rule; the caller adds the source and key path."""


@dataclass(frozen=True)
class _Rule:
    """What one flat-config key accepts, and when the key is present at all."""

    kind: str  # "int" | "float" | "bool" | "choice"
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive unless high_open
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    arch: str | None = None  # None: shared by both architectures
    layer: int | None = None  # per-layer key: present iff the arch's depth >= layer
    # (key, values): present iff that key takes one of the values (a stage's own settings)
    stage: tuple[str, tuple[str, ...]] | None = None

    def describe(self) -> str:
        if self.kind == "bool":
            text = "a bool"
        elif self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        else:
            text = f"an {self.kind}" if self.kind == "int" else f"a {self.kind}"
            lo, hi = _plain(self.low), _plain(self.high)
            if self.low is not None and self.high is not None:
                text += (
                    f" in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"
                )
            elif self.low is not None:
                text += f" {'>' if self.low_open else '>='} {lo}"
        return text + (" or null" if self.nullable else "")

    def normalise(self, value: Any) -> Any:
        """The value as its canonical type (int, float, bool, str, None); else raise."""
        if value is None:
            if self.nullable:
                return None
            raise _InvalidValueError(f"expected {self.describe()}, got null")
        if self.kind == "bool":
            if isinstance(value, bool | np.bool_):
                return bool(value)
            raise _InvalidValueError(f"expected {self.describe()}, got {_show(value)}")
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return value
            raise _InvalidValueError(f"expected {self.describe()}, got {_show(value)}")
        # bool is an Integral in Python; a flag where a number belongs is a mistake, not 0/1.
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise _InvalidValueError(f"expected {self.describe()}, got {_show(value)}")
        if self.kind == "int":
            if not isinstance(value, numbers.Integral):
                raise _InvalidValueError(f"expected {self.describe()}, got {_show(value)}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise _InvalidValueError(f"expected {self.describe()}, got {value}")
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        if too_low or too_high:
            raise _InvalidValueError(f"expected {self.describe()}, got {_fmt(value)}")
        return value


def _int(low: int = 1, high: int | None = None, **kw: Any) -> _Rule:
    return _Rule("int", low=low, high=high, **kw)


def _positive_float(**kw: Any) -> _Rule:
    return _Rule("float", low=0.0, low_open=True, **kw)


_FT = ("finetune", ("abo", "dec"))  # keys every fine-tuning stage has


def _build_keys() -> dict[str, _Rule]:
    keys: dict[str, _Rule] = {"arch": _Rule("choice", choices=ARCHS)}
    keys["mlp_depth"] = _int(1, _MAX_DEPTH["mlp"], arch="mlp")
    for i in range(1, _MAX_DEPTH["mlp"] + 1):
        keys[f"mlp_width_{i}"] = _int(arch="mlp", layer=i)
    keys["mlp_activation"] = _Rule("choice", choices=ACTIVATIONS, arch="mlp")
    keys["mlp_batch_norm"] = _Rule("bool", arch="mlp")
    # Whether 2**conv_depth divides the image side depends on the data set, so it is checked
    # where the data is known, not here.
    keys["conv_depth"] = _int(1, _MAX_DEPTH["conv"], arch="conv")
    for i in range(1, _MAX_DEPTH["conv"] + 1):
        keys[f"conv_channels_{i}"] = _int(arch="conv", layer=i)
    keys.update(
        latent_dim=_int(),
        dropout=_Rule("float", low=0.0, high=1.0, high_open=True),
        lr=_positive_float(),
        weight_decay=_Rule("float", low=0.0),
        batch_size=_int(),
        epochs=_int(),
        # Joint fine-tuning of encoder, decoder and centres after pre-training (tune/finetune.py):
        # none, abo (Deep k-Means with ABO's loss) or dec (IDEC).
        finetune=_Rule("choice", choices=FINETUNES),
        finetune_epochs=_int(stage=_FT),
        finetune_lr=_positive_float(stage=_FT),
        finetune_batch_size=_int(stage=_FT),
        finetune_gamma=_positive_float(stage=_FT),  # weight of the clustering loss
        # abo: ABO's softmax temperature, annealed geometrically from start to end over the stage
        finetune_temperature_start=_positive_float(stage=("finetune", ("abo",))),
        finetune_temperature_end=_positive_float(stage=("finetune", ("abo",))),
        # dec: batches between refreshes of the target distribution; stop when fewer than tol
        # of the training labels change between two refreshes
        dec_update_interval=_int(stage=("finetune", ("dec",))),
        dec_tol=_Rule("float", low=0.0, high=1.0, high_open=True, stage=("finetune", ("dec",))),
        # dec: the starting KMeans runs on the codes (IDEC) or on the trial's reduction of them
        dec_init=_Rule("choice", choices=DEC_INITS, stage=("finetune", ("dec",))),
        # What the clusterers see: the codes, their first pca_dim principal components, or a UMAP
        # embedding (fitted on umap_fit_size seeded train codes, applied to everything else).
        reduction=_Rule("choice", choices=REDUCTIONS),
        # pca_dim >= latent_dim keeps every component: a rotation, distances unchanged.
        pca_dim=_int(stage=("reduction", ("pca",))),
        umap_dim=_int(stage=("reduction", ("umap",))),
        umap_n_neighbors=_int(2, stage=("reduction", ("umap",))),
        umap_min_dist=_Rule("float", low=0.0, stage=("reduction", ("umap",))),
        umap_fit_size=_int(stage=("reduction", ("umap",))),
        n_clusters=_int(2),
        abo_lr=_positive_float(),
        abo_epochs=_int(),
        abo_batch_size=_int(nullable=True),  # null = full batch
        abo_temperature=_positive_float(),
        abo_init=_Rule("choice", choices=ABO_INITS),
        kmeans_n_init=_int(),
        seed=_int(0, 2**32 - 1),  # numpy's seed range
    )
    return keys


KEYS: dict[str, _Rule] = _build_keys()
"""Every key a flat trial config may hold, in canonical order, with what it accepts."""

# Added to every trial by the search, so never part of a space or a point.
SEED_KEY = "seed"


def _fmt(value: Any) -> str:
    """A value as quoted in a message: strings quoted, numbers and the rest as Python prints."""
    return repr(value) if isinstance(value, str) else str(value)


def _plain(value: Any) -> str:
    """A value as YAML would spell it (null, true, relu, 1e-08), for ranges and choice lists."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def _show(value: Any) -> str:
    """A value with its YAML-ish type, for 'expected X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return f"bool {str(bool(value)).lower()}"
    if isinstance(value, str):
        return f"str {value!r}"
    if isinstance(value, list | tuple):
        return f"list {list(value)!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps None, bool, numbers and str apart (Python has True == 1 == 1.0)."""

    def kind(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool | np.bool_):
            return "bool"
        return "number" if isinstance(v, numbers.Real) else type(v).__name__

    return kind(a) == kind(b) and bool(a == b)


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _structure_problem(config: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, reason) for the first key that is missing or not allowed given arch and depth."""
    if "arch" not in config:
        return "arch", "missing required key arch"
    arch = config["arch"]
    for key, rule in KEYS.items():
        if rule.arch not in (None, arch):
            if key in config:
                return key, f"{key} is not used by arch {arch}"
        elif key != SEED_KEY and rule.layer is None and rule.stage is None and key not in config:
            return key, f"missing required key {key} for arch {arch}"
    for key, rule in KEYS.items():
        if rule.stage is None:
            continue
        ref, values = rule.stage
        if config[ref] in values and key not in config:
            return key, f"missing required key {key} for {ref} {config[ref]}"
        if config[ref] not in values and key in config:
            return key, f"{key} is not used by {ref} {config[ref]}"
    depth_key = DEPTH_KEY[arch]
    depth = config[depth_key]
    for key, rule in KEYS.items():
        if rule.layer is None or rule.arch != arch:
            continue
        if rule.layer <= depth and key not in config:
            return key, f"missing required key {key} for arch {arch} with {depth_key} {depth}"
        if rule.layer > depth and key in config:
            return key, f"{key} is not used by arch {arch} with {depth_key} {depth}"
    return None


def _checked_config(config: Any, source: str, prefix: str) -> dict[str, Any]:
    """validate_config with a key-path prefix, so a point inside a file names its own path."""
    if not isinstance(config, Mapping):
        raise SpaceError(source, prefix.rstrip("."), f"expected a mapping, got {_show(config)}")
    for key in config:
        if key not in KEYS:
            hint = _did_you_mean(str(key), KEYS)
            raise SpaceError(source, f"{prefix}{key}", f"unknown key{hint}")
    out: dict[str, Any] = {}
    for key, rule in KEYS.items():  # canonical order, whatever order the caller used
        if key in config:
            try:
                out[key] = rule.normalise(config[key])
            except _InvalidValueError as err:
                raise SpaceError(source, f"{prefix}{key}", str(err)) from None
    problem = _structure_problem(out)
    if problem:
        raise SpaceError(source, f"{prefix}{problem[0]}", problem[1])
    return out


def validate_config(config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Check one flat trial config and return a normalised copy in canonical key order.

    Required: `arch`, that architecture's keys (per-layer keys exactly for layers 1..depth) and
    every shared key; `seed` is optional. Numbers become int or float per key (numpy scalars
    included), flags become bool. Raises SpaceError "<source>: <key>: <reason>".
    """
    return _checked_config(config, source, "")


@dataclass(frozen=True)
class Param:
    """One parameter of a space: sampled (int, float, categorical) or fixed, maybe conditional."""

    name: str
    type: str  # "int" | "float" | "categorical" | "fixed"
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    value: Any = None
    # Active only if every named earlier parameter is active and takes one of the listed values.
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether the condition holds, given the values of the active parameters so far."""
        return all(
            ref in values and any(_same(values[ref], v) for v in allowed)
            for ref, allowed in self.when.items()
        )

    def admits(self, value: Any) -> bool:
        if self.type == "fixed":
            return _same(value, self.value)
        if self.type == "categorical":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            return False
        if self.type == "int" and not isinstance(value, numbers.Integral):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.type == "fixed":
            return f"fixed {_plain(self.value)}"
        if self.type == "categorical":
            return "one of [" + ", ".join(_plain(c) for c in self.choices) + "]"
        return f"{self.type} [{_plain(self.low)}, {_plain(self.high)}]" + (
            " log" if self.log else ""
        )

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        raise TypeError(f"{self.name} is fixed; nothing to suggest")

    def draw(self, rng: random.Random) -> Any:
        if self.type == "fixed":
            return self.value
        if self.type == "categorical":
            return rng.choice(self.choices)
        if self.log:
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            x = rng.uniform(self.low, self.high)
        if self.type == "int":
            x = round(x)
        return min(max(x, self.low), self.high)  # exp(log(x)) may overshoot by an ulp

    def example(self) -> Any:
        """Some value the parameter can take."""
        if self.type == "fixed":
            return self.value
        return self.choices[0] if self.type == "categorical" else self.low


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. Build one with `load_space`.

    `points` are full flat configs (no seed), evaluated first and in order: pass them to
    OptunaSearch as `points_to_evaluate`. A points-only file (top-level `points`, no
    `parameters`, e.g. seeds.yaml) is a space whose parameters span just its points; it is worth
    exactly `max_trials` trials.
    """

    path: Path
    description: str
    parameters: dict[str, Param]
    points: list[dict[str, Any]]
    point_names: list[str] = field(default_factory=list)
    points_only: bool = False
    # data set name -> the space to search instead on it (top-level `dataset_spaces`)
    dataset_spaces: dict[str, Path] = field(default_factory=dict)
    # The Ray Tune scheduler that suits this space's budgets (top-level `scheduler`); the
    # command's --scheduler, --time-attr and --grace-period override it.
    scheduler: str = "fifo"
    time_attr: str = N.EPOCH  # what rungs count: names.TIME_ATTRS
    grace_period: int = 1
    # mo-asha ranks a trial only against trials with its values of these keys (tune/mo_asha.py)
    rank_within: tuple[str, ...] = ()

    def for_dataset(self, name: str) -> SearchSpace:
        """The space to search on data set `name`: the file `dataset_spaces` names for it (a space
        sized for another data set), else this one."""
        target = self.dataset_spaces.get(name)
        return self if target is None else _load(target, ())

    @property
    def num_points(self) -> int:
        return len(self.points)

    @property
    def max_trials(self) -> int | None:
        """len(points) for a points-only space (more trials would leave its points), else None."""
        return len(self.points) if self.points_only else None

    def define_by_run(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest each sampled parameter whose condition holds; return the fixed ones.

        Ray's OptunaSearch merges the returned constants with the captured suggestions, so the
        trial's config is `{**trial.params, **returned}`.
        """
        values: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for p in self.parameters.values():
            if not p.is_active(values):
                continue
            if p.type == "fixed":
                values[p.name] = fixed[p.name] = p.value
            else:
                values[p.name] = p.suggest(trial)
        return fixed

    def sample(self, rng: random.Random | None = None) -> dict[str, Any]:
        """A random config from the space (uniform or log-uniform per parameter), without seed."""
        rng = rng or random.Random()
        values: dict[str, Any] = {}
        for p in self.parameters.values():
            if p.is_active(values):
                values[p.name] = p.draw(rng)
        return values

    def contains(self, config: Mapping[str, Any], where: str = "config") -> None:
        """Raise SpaceError "<space file>: <where>.<key>: <reason>" if config is not in the space.

        A `seed` key is ignored: the search adds it to every trial.
        """
        if not isinstance(config, Mapping):
            raise SpaceError(_display(self.path), where, f"expected a mapping, got {_show(config)}")
        problem = _outside(self.parameters, config)
        if problem:
            raise SpaceError(_display(self.path), f"{where}.{problem[0]}", problem[1])


def _outside(params: Mapping[str, Param], config: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, reason) for the first way config lies outside the space, or None."""
    values: dict[str, Any] = {}
    for p in params.values():
        active = p.is_active(values)
        if not active:
            if p.name in config:
                return p.name, f"present although its condition {_when_text(p.when)} does not hold"
            continue
        if p.name not in config:
            return p.name, f"missing; the space samples it ({p.describe()})"
        if not p.admits(config[p.name]):
            return p.name, f"{_plain(config[p.name])} is outside {p.describe()}"
        values[p.name] = config[p.name]
    for key in config:
        if key not in params and key != SEED_KEY:
            return str(key), "not a parameter of this space"
    return None


def _when_text(when: Mapping[str, tuple[Any, ...]]) -> str:
    parts = []
    for ref, allowed in when.items():
        shown = [_plain(v) for v in allowed]
        parts.append(
            f"{ref} {'= ' + shown[0] if len(shown) == 1 else 'in [' + ', '.join(shown) + ']'}"
        )
    return "(" + ", ".join(parts) + ")"


# ---------------------------------------------------------------------------------------------
# Loading


def spaces_dir() -> Path:
    """The repository's `search_spaces/` folder."""
    return Path(__file__).resolve().parent.parent / "search_spaces"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float and rejects duplicate keys.

    YAML 1.1 only reads exponents with a dot (1.0e-3) as floats, so `lr: 1e-3` would be a string;
    and a repeated key would silently replace the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

_TOP_KEYS = (
    "description",
    "parameters",
    "points_to_evaluate",
    "points",
    "dataset_spaces",
    "scheduler",
)
# Data sets a space may hand over to another file (tune/data.py's names; `auto` resolves to one).
_DATASET_NAMES = ("mnist", "fashion-mnist", "digits")
_FIELDS = {
    "int": ("type", "low", "high", "log", "when"),
    "float": ("type", "low", "high", "log", "when"),
    "categorical": ("type", "choices", "when"),
    "fixed": ("type", "value", "when"),
}
# Which spec types fit which kind of key (a bool or a name can only be chosen, not ranged).
_TYPES_FOR_KIND = {
    "int": ("int", "categorical", "fixed"),
    "float": ("float", "categorical", "fixed"),
    "bool": ("categorical", "fixed"),
    "choice": ("categorical", "fixed"),
}


def _resolve(path_or_name: str | Path) -> Path:
    if isinstance(path_or_name, str) and "/" not in path_or_name and "\\" not in path_or_name:
        # A bare name: look in search_spaces/, with or without the .yaml suffix.
        name = path_or_name
        return spaces_dir() / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return Path(path_or_name)


def load_space(path_or_name: str | Path) -> SearchSpace:
    """Read and validate a space file. Raises SpaceError.

    A string without a slash ("default", "default.yaml") is a name in `spaces_dir()`; a string
    with one ("./x.yaml") or a Path is a path.
    """
    return _load(_resolve(path_or_name), ())


def _read_yaml(path: Path) -> Any:
    shown = _display(path)
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in spaces_dir().glob("*.yaml")))
        raise SpaceError(
            shown,
            "",
            f"no such file (a bare name is looked up in {_display(spaces_dir())}/; "
            f"available: {available})",
        )
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceError(shown, "", f"invalid YAML: {problem}{where}") from None


def _load(path: Path, stack: tuple[Path, ...]) -> SearchSpace:
    shown = _display(path)
    raw = _read_yaml(path)
    if not isinstance(raw, Mapping):
        raise SpaceError(shown, "", f"expected a mapping at the top level, got {_show(raw)}")
    for key in raw:
        if key not in _TOP_KEYS:
            hint = _did_you_mean(str(key), _TOP_KEYS)
            raise SpaceError(shown, str(key), f"unknown top-level key{hint}")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
        raise SpaceError(shown, "description", "required: one line of text")

    if "points" in raw:
        for key in ("parameters", "points_to_evaluate"):
            if key in raw:
                raise SpaceError(
                    shown, key, "a points file (top-level `points`) has no parameters of its own"
                )
        named = _parse_points(shown, raw["points"], "points")
        if not named:
            raise SpaceError(shown, "points", "a points file needs at least one point")
        params = _derive_parameters([cfg for _, cfg in named])
        points_only = True
    else:
        if "parameters" not in raw:
            raise SpaceError(shown, "parameters", "required (or `points` for a points file)")
        params = _parse_parameters(shown, raw["parameters"])
        named = _collect_points(path, raw.get("points_to_evaluate"), stack + (path.resolve(),))
        points_only = False

    _check_every_config_valid(shown, params)
    names: set[str] = set()
    key = "points" if points_only else "points_to_evaluate"
    for i, (name, cfg) in enumerate(named):
        if name in names:
            raise SpaceError(shown, key, f"duplicate point name {name!r}")
        names.add(name)
        problem = _outside(params, cfg)
        if problem:
            raise SpaceError(
                shown,
                f"{key}[{i}]",
                f"point {name} is outside the space: {problem[0]}: {problem[1]}",
            )
    return SearchSpace(
        path=path,
        description=description.strip(),
        parameters=params,
        points=[cfg for _, cfg in named],
        point_names=[name for name, _ in named],
        points_only=points_only,
        dataset_spaces=_parse_dataset_spaces(path, raw.get("dataset_spaces"), stack),
        **_parse_scheduler(shown, raw.get("scheduler"), params),
    )


SCHEDULER_KEYS = ("name", "time_attr", "grace_period", "rank_within")


def _parse_scheduler(shown: str, raw: Any, params: Mapping[str, Param]) -> dict[str, Any]:
    """`scheduler: {name: mo-asha, time_attr: time_total_s, grace_period: 60, rank_within:
    [finetune]}` -> SearchSpace's scheduler fields."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or "name" not in raw:
        raise SpaceError(shown, "scheduler", "expected a mapping with a name (and grace_period)")
    for key in raw:
        if key not in SCHEDULER_KEYS:
            raise SpaceError(
                shown, f"scheduler.{key}", f"unknown key (known: {', '.join(SCHEDULER_KEYS)})"
            )
    name = raw["name"]
    if name not in N.SCHEDULERS:
        raise SpaceError(
            shown, "scheduler.name", f"{_show(name)} is not one of {', '.join(N.SCHEDULERS)}"
        )
    out: dict[str, Any] = {"scheduler": name}
    if "time_attr" in raw:
        unit = raw["time_attr"]
        if name == "fifo":
            raise SpaceError(shown, "scheduler.time_attr", "fifo has no rungs")
        if unit not in N.TIME_ATTRS:
            raise SpaceError(
                shown,
                "scheduler.time_attr",
                f"{_show(unit)} is not one of {', '.join(N.TIME_ATTRS)}",
            )
        out["time_attr"] = unit
    if "grace_period" in raw:
        grace = raw["grace_period"]
        if name == "fifo":
            raise SpaceError(shown, "scheduler.grace_period", "fifo stops no trial early")
        if isinstance(grace, bool) or not isinstance(grace, int) or grace < 1:
            raise SpaceError(
                shown, "scheduler.grace_period", f"expected an int >= 1, got {_show(grace)}"
            )
        out["grace_period"] = grace
    if "rank_within" in raw:
        keys = raw["rank_within"]
        if name != "mo-asha":
            raise SpaceError(shown, "scheduler.rank_within", "only mo-asha ranks trials")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise SpaceError(
                shown, "scheduler.rank_within", f"expected a list of parameters, got {_show(keys)}"
            )
        for i, key in enumerate(keys):
            if key not in params:
                raise SpaceError(
                    shown, f"scheduler.rank_within[{i}]", f"{key!r} is not a parameter of the space"
                )
        out["rank_within"] = tuple(keys)
    return out


def _parse_dataset_spaces(path: Path, raw: Any, stack: tuple[Path, ...]) -> dict[str, Path]:
    """`dataset_spaces: {digits: digits.yaml}`: file names beside this one, each a valid space
    without `dataset_spaces` of its own (one hand-over, never a chain)."""
    shown = _display(path)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError(shown, "dataset_spaces", "expected a mapping of data set: space file")
    spaces = {}
    for name, file in raw.items():
        key = f"dataset_spaces.{name}"
        if name not in _DATASET_NAMES:
            raise SpaceError(
                shown, key, f"not a data set name (one of {', '.join(_DATASET_NAMES)})"
            )
        if not isinstance(file, str) or "/" in file or "\\" in file:
            raise SpaceError(shown, key, f"expected a file name beside this one, got {_show(file)}")
        target = path.parent / file
        if target.resolve() == path.resolve() or target.resolve() in stack:
            raise SpaceError(shown, key, f"{file} hands the data set back to this file")
        try:
            other = _load(target, stack + (path.resolve(),))
        except SpaceError as e:
            raise SpaceError(
                shown, key, f"{file}: {e.key + ': ' if e.key else ''}{e.reason}"
            ) from None
        if other.dataset_spaces:
            raise SpaceError(shown, key, f"{file} has dataset_spaces of its own (no chains)")
        spaces[str(name)] = target
    return spaces


def _parse_parameters(shown: str, raw: Any) -> dict[str, Param]:
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError(shown, "parameters", "expected a non-empty mapping of name: spec")
    all_names = [str(n) for n in raw]
    params: dict[str, Param] = {}
    for name, spec in raw.items():
        params[str(name)] = _parse_param(shown, str(name), spec, params, all_names)
    return params


def _parse_param(
    shown: str, name: str, spec: Any, earlier: Mapping[str, Param], all_names: list[str]
) -> Param:
    path = f"parameters.{name}"
    if name == SEED_KEY:
        raise SpaceError(shown, path, "seed is added by the search to every trial; not a parameter")
    if name not in KEYS:
        raise SpaceError(shown, path, f"unknown parameter{_did_you_mean(name, KEYS)}")
    rule = KEYS[name]
    if isinstance(spec, list):
        raise SpaceError(
            shown, path, "a list is not a value; write {type: categorical, choices: [...]}"
        )
    if not isinstance(spec, Mapping):
        spec = {"type": "fixed", "value": spec}  # a plain value is fixed
    kind = spec.get("type")
    if kind not in _FIELDS:
        reason = "missing field type" if kind is None else f"unknown type {_fmt(kind)}"
        raise SpaceError(shown, f"{path}.type", f"{reason} (one of {', '.join(_FIELDS)})")
    for f in spec:
        if f not in _FIELDS[kind]:
            allowed = ", ".join(_FIELDS[kind])
            raise SpaceError(
                shown, f"{path}.{f}", f"unknown field for type {kind} (allowed: {allowed})"
            )
    if kind not in _TYPES_FOR_KIND[rule.kind]:
        raise SpaceError(
            shown, f"{path}.type", f"type {kind} does not fit {name}, {rule.describe()}"
        )

    def value_of(field_name: str, value: Any) -> Any:
        try:
            return rule.normalise(value)
        except _InvalidValueError as err:
            raise SpaceError(shown, f"{path}.{field_name}", str(err)) from None

    fields: dict[str, Any] = {}
    if kind in ("int", "float"):
        for bound in ("low", "high"):
            if bound not in spec:
                raise SpaceError(shown, f"{path}.{bound}", f"required for type {kind}")
            value = spec[bound]
            # A float bound on an int parameter (or a string anywhere) is a type error, even if
            # the key's rule would otherwise accept the number.
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not ok or (kind == "int" and not isinstance(value, numbers.Integral)):
                raise SpaceError(
                    shown,
                    f"{path}.{bound}",
                    f"expected {'an' if kind == 'int' else 'a'} {kind}, got {_show(value)}",
                )
            fields[bound] = value_of(bound, value)
        if fields["low"] > fields["high"]:
            raise SpaceError(shown, path, f"low ({fields['low']}) > high ({fields['high']})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise SpaceError(shown, f"{path}.log", f"expected a bool, got {_show(log)}")
        if log and fields["low"] <= 0:
            raise SpaceError(
                shown, f"{path}.log", f"log scale needs low > 0, got low {fields['low']}"
            )
        fields["log"] = log
    elif kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(shown, f"{path}.choices", "expected a non-empty list")
        normalised: list[Any] = []
        for i, c in enumerate(choices):
            c = value_of(f"choices[{i}]", c)
            if any(_same(c, d) for d in normalised):
                raise SpaceError(shown, f"{path}.choices", f"duplicate choice {_fmt(c)}")
            normalised.append(c)
        fields["choices"] = tuple(normalised)
    else:
        if "value" not in spec:
            raise SpaceError(shown, f"{path}.value", "required for type fixed")
        fields["value"] = value_of("value", spec["value"])

    when = _parse_when(shown, path, spec.get("when"), earlier, all_names) if "when" in spec else {}
    return Param(name=name, type=kind, when=when, **fields)


def _parse_when(
    shown: str, path: str, raw: Any, earlier: Mapping[str, Param], all_names: list[str]
) -> dict[str, tuple[Any, ...]]:
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError(
            shown, f"{path}.when", "expected a non-empty mapping of parameter: value(s)"
        )
    when: dict[str, tuple[Any, ...]] = {}
    for ref, allowed in raw.items():
        ref = str(ref)
        where = f"{path}.when.{ref}"
        if ref not in earlier:
            if ref in all_names:
                reason = f"refers to {ref}, which comes later; parameters are sampled in file order"
            else:
                reason = f"refers to unknown parameter {ref}{_did_you_mean(ref, earlier)}"
            raise SpaceError(shown, where, reason)
        target = earlier[ref]
        if target.type == "float":
            raise SpaceError(
                shown, where, f"{ref} is a float range; a condition needs discrete values"
            )
        values = allowed if isinstance(allowed, list) else [allowed]
        if not values:
            raise SpaceError(shown, where, "expected a value or a non-empty list of values")
        normalised = []
        for v in values:
            try:
                v = KEYS[ref].normalise(v)
            except _InvalidValueError as err:
                raise SpaceError(shown, where, str(err)) from None
            if not target.admits(v):
                raise SpaceError(
                    shown,
                    where,
                    f"{_plain(v)} is not a possible value of {ref} ({target.describe()})",
                )
            normalised.append(v)
        when[ref] = tuple(normalised)
    return when


def _branch_values(p: Param, referenced: Iterable[Any]) -> list[Any]:
    """Values of p that between them meet every condition on p: each value a condition names,
    plus one no condition names (for int ranges, where the rest behave alike)."""
    if p.type == "fixed":
        return [p.value]
    if p.type == "categorical":
        return list(p.choices)
    if p.name in _STRUCTURAL:  # a depth: every value decides which layer keys exist
        return list(range(p.low, p.high + 1))
    named = sorted({v for v in referenced if p.admits(v)})
    other = next((v for v in range(p.low, p.high + 1) if v not in named), None)
    return named + ([] if other is None else [other])


def _check_every_config_valid(shown: str, params: Mapping[str, Param]) -> None:
    """Prove every config the space can produce passes validate_config.

    Values were checked per parameter when parsed (bounds and choices against the key's rule),
    so what remains is structure: which keys are present. That depends only on the parameters
    that conditions or the key table branch on; enumerate their values, and take any value for
    the rest.
    """
    referenced: dict[str, list[Any]] = {name: [] for name in _STRUCTURAL}
    for p in params.values():
        for ref, allowed in p.when.items():
            referenced.setdefault(ref, []).extend(allowed)
    branches: list[dict[str, Any]] = [{}]
    ever_active: set[str] = set()
    for p in params.values():
        grown: list[dict[str, Any]] = []
        for values in branches:
            if not p.is_active(values):
                grown.append(values)
                continue
            ever_active.add(p.name)
            options = (
                _branch_values(p, referenced[p.name]) if p.name in referenced else [p.example()]
            )
            grown.extend({**values, p.name: v} for v in options)
        if len(grown) > _MAX_BRANCHES:
            raise SpaceError(
                shown, "parameters", f"conditions branch into more than {_MAX_BRANCHES} cases"
            )
        branches = grown
    for p in params.values():
        if p.name not in ever_active:
            raise SpaceError(
                shown,
                f"parameters.{p.name}.when",
                f"condition {_when_text(p.when)} never holds, so {p.name} could never apply",
            )
    for values in branches:
        problem = _structure_problem(values)
        if problem:
            key, reason = problem
            extra = [k for k in referenced if k in values and k not in _STRUCTURAL]
            if extra:  # the branch depends on more than arch and depth: say which
                reason += " (when " + ", ".join(f"{k}={_plain(values[k])}" for k in extra) + ")"
            raise SpaceError(shown, f"parameters.{key}", reason)


def _parse_points(shown: str, raw: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(raw, list):
        raise SpaceError(shown, path, "expected a list of {name, config}")
    return [_parse_point(shown, entry, f"{path}[{i}]") for i, entry in enumerate(raw)]


def _parse_point(shown: str, entry: Any, path: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(entry, Mapping):
        raise SpaceError(shown, path, f"expected a mapping {{name, config}}, got {_show(entry)}")
    for f in entry:
        if f not in ("name", "config"):
            raise SpaceError(shown, f"{path}.{f}", "unknown field (allowed: name, config)")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise SpaceError(shown, f"{path}.name", "required: a non-empty string")
    config = entry.get("config")
    if isinstance(config, Mapping) and SEED_KEY in config:
        raise SpaceError(shown, f"{path}.config.seed", "the search adds the seed; a point has none")
    return name, _checked_config(config, shown, f"{path}.config.")


def _collect_points(
    path: Path, raw: Any, stack: tuple[Path, ...]
) -> list[tuple[str, dict[str, Any]]]:
    """points_to_evaluate: a file name or a list of file names, {file, names} and inline points."""
    shown = _display(path)
    if raw is None:
        return []
    entries = raw if isinstance(raw, list) else [raw]
    points: list[tuple[str, dict[str, Any]]] = []
    for i, entry in enumerate(entries):
        where = f"points_to_evaluate[{i}]" if isinstance(raw, list) else "points_to_evaluate"
        if isinstance(entry, Mapping) and "file" not in entry:
            points.append(_parse_point(shown, entry, where))
            continue
        if isinstance(entry, str):
            ref, wanted = entry, None
        elif isinstance(entry, Mapping):
            for f in entry:
                if f not in ("file", "names"):
                    raise SpaceError(shown, f"{where}.{f}", "unknown field (allowed: file, names)")
            ref, wanted = entry["file"], entry.get("names")  # no names: all of the file's points
            if not isinstance(ref, str):
                raise SpaceError(shown, f"{where}.file", f"expected a file name, got {_show(ref)}")
            if wanted is not None and (
                not isinstance(wanted, list) or not all(isinstance(n, str) for n in wanted)
            ):
                raise SpaceError(shown, f"{where}.names", "expected a list of point names")
        else:
            raise SpaceError(
                shown,
                where,
                f"expected a file name, {{file, names}} or {{name, config}}, got {_show(entry)}",
            )
        target = path.parent / ref  # relative to the referring file, wherever it was run from
        if not target.is_file():
            raise SpaceError(shown, where, f"no such file {ref} (next to this file)")
        if target.resolve() in stack:
            raise SpaceError(shown, where, f"circular reference to {ref}")
        other = _load(target, stack)
        available = dict(zip(other.point_names, other.points, strict=True))
        if wanted is None:
            points.extend(available.items())
            continue
        for j, n in enumerate(wanted):
            if n not in available:
                has = ", ".join(available) or "no points"
                raise SpaceError(
                    shown, f"{where}.names[{j}]", f"no point {n!r} in {ref} (it has: {has})"
                )
            points.append((n, available[n]))
    return points


def _derive_parameters(points: list[dict[str, Any]]) -> dict[str, Param]:
    """The smallest space of the key table's shape holding every point: per key, the values the
    points use (fixed if one), under the arch and depth conditions the key table implies."""
    params: dict[str, Param] = {}
    for key, rule in KEYS.items():
        using = [cfg for cfg in points if key in cfg]
        if not using:
            continue
        values: list[Any] = []
        for cfg in using:
            if not any(_same(cfg[key], v) for v in values):
                values.append(cfg[key])
        when: dict[str, tuple[Any, ...]] = {}
        if rule.arch is not None:
            when["arch"] = (rule.arch,)
        if rule.stage is not None:
            when[rule.stage[0]] = tuple(
                v for v in rule.stage[1] if any(cfg[rule.stage[0]] == v for cfg in points)
            )
        if rule.layer is not None:
            depth_key = DEPTH_KEY[rule.arch]
            depths = {cfg[depth_key] for cfg in points if cfg["arch"] == rule.arch}
            when[depth_key] = tuple(sorted(d for d in depths if d >= rule.layer))
        if len(values) == 1:
            params[key] = Param(key, "fixed", value=values[0], when=when)
        else:
            params[key] = Param(key, "categorical", choices=tuple(values), when=when)
    return params
