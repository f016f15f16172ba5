"""Run specs: what one run is, the run id that names it, and how a suite becomes specs.

Hyperparameters resolve in this order, later wins: the method's defaults, the suite's
`[hparams]` (scalars for every method that has the key, tables for the method they name), the
task's `hparams` (same rule), then `--set key=value` and `--set method.key=value`. Every value is
checked against the method's typed settings (`bench.method.Setting`) as it is resolved.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UserError
from .method import Method, get_method
from .suite import Suite, Task

SPEC_VERSION = 2
# The fields of the first run ids (version 1), which records written before version 2 hold.
V1_FIELDS = ("suite", "task", "method", "seed", "stage", "backbone", "checkpoint", "image_size", "hparams")
# Version-1 ids left out the fields added since, at the values every run then had implicitly
# (normalize and interpolation were added as optional fields of version 1), and so do the
# engine settings added since: at these values they change nothing of what those runs did.
V1_DEFAULTS = {"normalize": "backbone", "interpolation": "bicubic"}
V1_HPARAMS = {"lr_schedule": "step", "warmup_start": 0.0, "lr_floor": 0.0, "drop_path": 0.0}


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a run's result; its hash is the run id."""
    suite: str
    task: str
    method: str
    seed: int
    stage: str
    backbone: str
    checkpoint: str | None
    image_size: int
    hparams: dict[str, Any] = field(hash=False)
    normalize: str = "backbone"       # backbone | imagenet | none: the mean/std images are normalised with
    interpolation: str = "bicubic"    # bicubic | bilinear: how images are resized
    # Added with version 2 (None in a record written before): the stage's [train, eval] splits,
    # the data format, the image transform, and the requested precision.
    splits: tuple[str, str] | None = None
    format: str | None = None
    transform: str | None = None
    precision: str | None = None

    @property
    def run_id(self) -> str:
        if self.splits is None:  # a version-1 spec, read from an old record
            return self.v1_run_id
        return _digest({"v": SPEC_VERSION, **self.to_dict()})

    @property
    def v1_run_id(self) -> str:
        """The id version 1 gave this spec: what a record written before version 2 is named."""
        d = {k: v for k, v in self.to_dict().items() if k in V1_FIELDS}
        d["hparams"] = {k: v for k, v in d["hparams"].items() if V1_HPARAMS.get(k, object()) != v}
        for key, legacy in V1_DEFAULTS.items():
            if getattr(self, key) != legacy:
                d[key] = getattr(self, key)
        return _digest({"v": 1, **d})

    @property
    def train_split(self) -> str:
        return self.splits[0]

    @property
    def eval_split(self) -> str:
        return self.splits[1]

    def accepts_v1_record(self, record: dict) -> bool:
        """Whether a record written before version 2, under `v1_run_id`, is this very run: it
        holds no version-2 fields, and the splits it trained and evaluated on (recorded in its
        metrics) and the precision it asked for (always `auto` then) are this spec's. The data
        format and transform came from the same suite file, as they do now."""
        spec, metrics = record.get("spec") or {}, record.get("metrics") or {}
        if not isinstance(spec, dict) or not isinstance(metrics, dict) or spec.get("splits") is not None:
            return False
        return (list(self.splits or ()) == [metrics.get("train_split"), metrics.get("eval_split")]
                and self.precision == "auto")

    def to_dict(self) -> dict[str, Any]:
        # by hand rather than dataclasses.asdict, whose deep recursion dominated reading 10,000
        # records; hparams are copied so that the dict can be changed freely
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["hparams"] = copy.deepcopy(self.hparams)
        if d["splits"] is not None:
            d["splits"] = list(d["splits"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        """A spec from a record or plan (of either version); a malformed one is a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"a spec must be a JSON object, got {type(d).__name__}")
        missing = [k for k in V1_FIELDS if k not in d]
        if missing:
            raise ValueError(f"the spec lacks {', '.join(missing)}")
        kwargs = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if kwargs.get("splits") is not None:
            kwargs["splits"] = tuple(kwargs["splits"])
        for key, kind in (("suite", str), ("task", str), ("method", str), ("stage", str), ("seed", int),
                          ("hparams", dict)):
            if not isinstance(kwargs[key], kind) or isinstance(kwargs[key], bool):
                raise ValueError(f"the spec's {key} is {kwargs[key]!r}, not a {kind.__name__}")
        return cls(**kwargs)


def _digest(d: dict[str, Any]) -> str:
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ overrides
def parse_overrides(items: list[str]) -> list[tuple[str | None, str, str]]:
    """`--set key=value` / `--set method.key=value` -> (method or None, key, raw value)."""
    out = []
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value or method.key=value, e.g. --set lr=0.5")
        key, value = item.split("=", 1)
        key = key.strip()
        method, _, name = key.rpartition(".")
        if not name or (method == "" and "." in key):
            raise UserError(f"--set {item!r}: expected key=value or method.key=value")
        out.append((method or None, name, value))
    return out


def check_overrides(overrides, methods: list[Method]) -> None:
    """Every `--set` must land somewhere: a typo must not silently run the defaults."""
    for scope, key, value in overrides:
        targets = methods
        if scope is not None:
            m = get_method(scope)
            if m.name not in {x.name for x in methods}:
                raise UserError(f"--set {scope}.{key}={value}: method {m.name!r} is not among "
                                f"--methods ({', '.join(x.name for x in methods)})")
            targets = [m]
        if not any(key in m.settings for m in targets):
            known = sorted(set().union(*(m.settings for m in targets)))
            raise UserError(f"--set {key}={value}: no selected method has a hyperparameter {key!r}; "
                            f"known: {', '.join(known)}")


def _layer(hp: dict, layer: dict, method: Method, where: str) -> None:
    """One layer of overrides from a suite file: scalars for every method that has the key,
    tables for the method (or alias) they name; a table's keys must all exist."""
    names = {method.name, *method.aliases}
    for key, value in layer.items():
        if isinstance(value, dict):
            if key not in names:
                continue
            for sub, v in value.items():
                if sub not in method.settings:
                    raise UserError(f"{where}: method {method.name!r} has no hyperparameter {sub!r}; "
                                    f"its hyperparameters: {', '.join(sorted(method.settings))}")
                hp[sub] = v
        elif key in method.settings:
            hp[key] = value


def resolve_hparams(method: Method, suite: Suite, task: Task,
                    overrides: list[tuple[str | None, str, str]]) -> dict[str, Any]:
    hp = method.defaults
    _layer(hp, suite.hparams, method, f"{suite.path} [hparams]")
    hp = method.check_hparams(hp, f"{suite.path} [hparams]", complete=False)
    _layer(hp, task.hparams, method, f"{suite.path} task {task.name!r} hparams")
    hp = method.check_hparams(hp, f"{suite.path} task {task.name!r} hparams", complete=False)
    for scope, key, value in overrides:
        if scope is not None and get_method(scope).name != method.name:
            continue
        if key in hp:
            hp[key] = value
    return method.check_hparams(hp, "--set")


def plan(suite: Suite, methods: list[Method], tasks: list[Task], seeds: list[int], stage: str,
         backbone: str, checkpoint: str | None, overrides: list[str], precision: str = "auto") -> list[RunSpec]:
    if stage not in suite.splits:
        raise UserError(f"suite {suite.name!r} has no {stage!r} stage; its stages: "
                        f"{', '.join(suite.splits)}")
    parsed = parse_overrides(overrides)
    check_overrides(parsed, methods)
    specs = []
    for method in methods:
        for task in tasks:
            hp = resolve_hparams(method, suite, task, parsed)
            for seed in seeds:
                specs.append(RunSpec(suite=suite.name, task=task.name, method=method.name, seed=seed,
                                     stage=stage, backbone=backbone, checkpoint=checkpoint,
                                     image_size=suite.image_size, hparams=hp, normalize=suite.normalize,
                                     interpolation=suite.interpolation, splits=tuple(suite.splits[stage]),
                                     format=suite.format, transform=suite.transform, precision=precision))
    return specs


def with_stage(spec: RunSpec, suite: Suite, stage: str, hparams: dict[str, Any]) -> RunSpec:
    """The same run in another protocol stage (its splits follow), with these hyperparameters."""
    from dataclasses import replace

    return replace(spec, stage=stage, splits=tuple(suite.splits[stage]), hparams=hparams)


def check_suite_settings(suite: Suite) -> None:
    """Every hyperparameter a suite file sets, for every method it names, checked now: a typo or a
    bad value in one method's table must not wait until that method runs. A table must name a
    registered method; a scalar must be a hyperparameter of some registered method."""
    from .method import all_methods

    methods = list(all_methods().values())
    by_name = {n: m for m in methods for n in (m.name, *m.aliases)}
    for name in suite.methods:
        if name not in by_name:
            raise UserError(f"{suite.path}: methods names {name!r}, which is not a registered method; "
                            f"methods: {', '.join(sorted(all_methods()))}")
    layers = [(suite.hparams, f"{suite.path} [hparams]")]
    layers += [(t.hparams, f"{suite.path} task {t.name!r} hparams") for t in suite.tasks]
    for layer, where in layers:
        for key, value in layer.items():
            if isinstance(value, dict):
                if key not in by_name:
                    raise UserError(f"{where}: table {key!r} names no registered method; methods: "
                                    f"{', '.join(sorted(all_methods()))}")
                by_name[key].check_hparams(value, where, complete=False)
            else:
                owners = [m for m in methods if key in m.settings]
                if not owners:
                    raise UserError(f"{where}: {key!r} is a hyperparameter of no registered method")
                for m in owners:
                    m.check_hparams({key: value}, where, complete=False)
    for name, table in suite.grid.items():
        where = f"{suite.path} [grid.{name}]"
        if name not in by_name:
            raise UserError(f"{where}: names no registered method; methods: {', '.join(sorted(all_methods()))}")
        for key, values in table.items():
            for v in values:
                by_name[name].check_hparams({key: v}, where, complete=False)
