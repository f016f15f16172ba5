"""Suites: declarative TOML files (suites/*.toml, or any path) validated into `Suite` objects.

A suite names its data format, image size, backbone, default seeds, the splits of each protocol
stage, per-suite and per-task hyperparameter overrides, and its tasks. Anything unexpected in a
file is an error that names the file and the key, never a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from . import tomlfile
from .errors import UserError
from .names import check_name

TRANSFORMS = ("resize", "crop-flip")
NORMALIZATIONS = ("backbone", "imagenet", "none")
INTERPOLATIONS = ("bicubic", "bilinear")
PROTOCOLS = ("fixed", "vtab")
STAGES = ("tune", "final")


@dataclass(frozen=True)
class Task:
    name: str
    group: str
    num_classes: int
    aliases: tuple[str, ...] = ()
    short: str = ""  # the column name papers use (e.g. "dSpr-Loc")
    folder: str = ""
    image_dir: str = ""
    hparams: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def folder_name(self) -> str:
        return self.folder or self.name

    @property
    def label(self) -> str:
        return self.short or self.name


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    format: str
    image_size: int
    backbone: str
    seeds: tuple[int, ...]
    groups: tuple[str, ...]
    splits: dict[str, tuple[str, str]]
    tasks: tuple[Task, ...]
    transform: str = "resize"
    source: str = ""                 # a data source that writes the data (the demo), or none
    methods: tuple[str, ...] = ()    # what `bench run` runs without --methods (empty: every method)
    normalize: str = "backbone"      # backbone: the backbone's own mean/std; imagenet; none (x / 255)
    interpolation: str = "bicubic"
    protocol: str = "fixed"
    hparams: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    split_sizes: dict[str, int] = field(default_factory=dict, hash=False, compare=False)  # `data check` warns on others
    grid: dict[str, dict[str, list]] = field(default_factory=dict, hash=False, compare=False)
    path: str = ""

    def task(self, name: str) -> Task:
        key = name.lower()
        for t in self.tasks:
            if key == t.name.lower() or key in (a.lower() for a in t.aliases):
                return t
        raise UserError(f"unknown task {name!r} in suite {self.name!r}; valid tasks: "
                        f"{', '.join(t.name for t in self.tasks)} (aliases are accepted too)")

    def select_tasks(self, names: list[str] | None) -> list[Task]:
        if not names:
            return list(self.tasks)
        return [self.task(n) for n in names]


# key -> (python type(s), required, description used in messages)
_SUITE_KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, True), "description": (str, False), "format": (str, True),
    "image_size": (int, True), "backbone": (str, True), "seeds": (list, False),
    "groups": (list, False), "splits": (dict, True), "tasks": (list, True),
    "transform": (str, False), "hparams": (dict, False), "protocol": (str, False),
    "grid": (dict, False), "normalize": (str, False), "interpolation": (str, False),
    "source": (str, False), "methods": (list, False), "split_sizes": (dict, False),
}
_TASK_KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, True), "group": (str, True), "num_classes": (int, True),
    "aliases": (list, False), "short": (str, False), "folder": (str, False), "image_dir": (str, False),
    "hparams": (dict, False),
}
_TYPE_NAMES = {str: "a string", int: "an integer", list: "an array", dict: "a table",
               float: "a number"}


def _check_keys(data: dict, schema: dict, where: str, src: str) -> None:
    for key in data:
        if key not in schema:
            raise UserError(f"{src}: unknown key {key!r} in {where}; allowed keys: "
                            f"{', '.join(sorted(schema))}")
    for key, (typ, required) in schema.items():
        if key not in data:
            if required:
                raise UserError(f"{src}: {where} is missing the required key {key!r}")
            continue
        value = data[key]
        # bool is an int in Python; a suite never means True when it says a count
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise UserError(f"{src}: key {key!r} in {where} must be {_TYPE_NAMES[typ]}, "
                            f"got {type(value).__name__} {value!r}")


def _check_hparams(hp: dict, where: str, src: str) -> dict:
    for key, value in hp.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (dict, list)):
                    raise UserError(f"{src}: hyperparameter {key}.{sub} in {where} must be a "
                                    f"scalar, got {type(v).__name__}")
        elif isinstance(value, list):
            raise UserError(f"{src}: hyperparameter {key!r} in {where} must be a scalar or a "
                            "table of one method's values, got an array")
    return hp


def parse_suite(data: dict, src: str) -> Suite:
    from .formats import FORMATS
    from .sources import SOURCES

    _check_keys(data, _SUITE_KEYS, "the top level", src)
    check_name(data["name"], "suite name", src)
    if data["format"] not in FORMATS:
        raise UserError(f"{src}: format {data['format']!r} is not one of {', '.join(FORMATS.names())}")
    source = data.get("source", "")
    if source and source not in SOURCES:
        raise UserError(f"{src}: source {source!r} is not one of {', '.join(SOURCES.names())}")
    if source and SOURCES.get(source).format != data["format"]:
        raise UserError(f"{src}: source {source!r} writes {SOURCES.get(source).format!r} data, "
                        f"but the suite's format is {data['format']!r}")
    methods = data.get("methods", [])
    if not all(isinstance(m, str) and m for m in methods):
        raise UserError(f"{src}: methods must be an array of method names, got {methods!r}")
    transform = data.get("transform", "resize")
    if transform not in TRANSFORMS:
        raise UserError(f"{src}: transform {transform!r} is not one of {', '.join(TRANSFORMS)}")
    normalize = data.get("normalize", "backbone")
    if normalize not in NORMALIZATIONS:
        raise UserError(f"{src}: normalize {normalize!r} is not one of {', '.join(NORMALIZATIONS)}")
    interpolation = data.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"{src}: interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    protocol = data.get("protocol", "fixed")
    if protocol not in PROTOCOLS:
        raise UserError(f"{src}: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    grid = data.get("grid", {})
    for method, table in grid.items():
        if not isinstance(table, dict):
            raise UserError(f"{src}: [grid.{method}] must be a table of hyperparameter = [values]")
        for key, values in table.items():
            if not (isinstance(values, list) and values and all(isinstance(v, (int, float, str)) for v in values)):
                raise UserError(f"{src}: grid.{method}.{key} must be a non-empty array of values, got {values!r}")
    if protocol == "vtab" and "tune" not in data["splits"]:
        raise UserError(f"{src}: protocol 'vtab' needs a tune stage in [splits]")
    if data["image_size"] <= 0:
        raise UserError(f"{src}: image_size must be positive, got {data['image_size']}")
    seeds = data.get("seeds", [42])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"{src}: seeds must be a non-empty array of integers, got {seeds!r}")
    splits = data["splits"]
    for stage, pair in splits.items():
        if stage not in STAGES:
            raise UserError(f"{src}: unknown key {stage!r} in [splits]; allowed keys: {', '.join(STAGES)}")
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise UserError(f"{src}: splits.{stage} must be [train split, eval split], got {pair!r}")
    if "final" not in splits:
        raise UserError(f"{src}: [splits] is missing the required key 'final'")
    split_sizes = data.get("split_sizes", {})
    for split, size in split_sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise UserError(f"{src}: split_sizes.{split} must be a positive integer, got {size!r}")
    groups = data.get("groups", [])
    tasks = []
    seen: dict[str, str] = {}
    for i, t in enumerate(data["tasks"], 1):
        if not isinstance(t, dict):
            raise UserError(f"{src}: [[tasks]] #{i} must be a table")
        where = f"[[tasks]] #{i}" + (f" ({t['name']})" if isinstance(t.get("name"), str) else "")
        _check_keys(t, _TASK_KEYS, where, src)
        check_name(t["name"], "task name", f"{src} {where}")
        if t["num_classes"] < 2:
            raise UserError(f"{src}: num_classes in {where} must be at least 2, got {t['num_classes']}")
        if groups and t["group"] not in groups:
            raise UserError(f"{src}: group {t['group']!r} in {where} is not one of the suite's "
                            f"groups {groups}")
        aliases = t.get("aliases", [])
        if not all(isinstance(a, str) for a in aliases):
            raise UserError(f"{src}: aliases in {where} must be strings")
        for n in [t["name"], *aliases]:
            if seen.get(n.lower(), t["name"]) != t["name"]:
                raise UserError(f"{src}: name or alias {n!r} in {where} is already used by task "
                                f"{seen[n.lower()]!r}")
            seen[n.lower()] = t["name"]
        tasks.append(Task(name=t["name"], group=t["group"], num_classes=t["num_classes"],
                          aliases=tuple(aliases), short=t.get("short", ""), folder=t.get("folder", ""),
                          image_dir=t.get("image_dir", ""),
                          hparams=_check_hparams(t.get("hparams", {}), where, src)))
    if not tasks:
        raise UserError(f"{src}: the suite has no [[tasks]]")
    return Suite(name=data["name"], description=data.get("description", ""), format=data["format"],
                 image_size=data["image_size"], backbone=data["backbone"], seeds=tuple(seeds),
                 groups=tuple(groups) or tuple(dict.fromkeys(t.group for t in tasks)),
                 splits={k: tuple(v) for k, v in splits.items()}, tasks=tuple(tasks),
                 transform=transform, source=source, methods=tuple(methods), normalize=normalize,
                 interpolation=interpolation,
                 protocol=protocol, grid=grid, split_sizes=split_sizes,
                 hparams=_check_hparams(data.get("hparams", {}), "[hparams]", src),
                 path=src)


def builtin_suites() -> dict[str, Path]:
    folder = resources.files("bench.suites")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".toml")}


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name (`demo`, `vtab1k`, `fgvc`) or a suite file by path."""
    builtin = builtin_suites()
    if name_or_path in builtin:
        path = builtin[name_or_path]
    else:
        path = Path(name_or_path).expanduser()
        if not (path.suffix == ".toml" and path.is_file()):
            raise UserError(f"unknown suite {name_or_path!r}; built-in suites: "
                            f"{', '.join(sorted(builtin))}, or pass the path of a suite .toml file")
    try:
        data = tomlfile.loads(path.read_text(encoding="utf-8"))
    except tomlfile.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    return parse_suite(data, str(path))
