"""The method registry: one decorator, string names, aliases, default hyperparameters.

Built-in methods live in `methods/` (installed as `bench.methods`) and register themselves when
imported. Third-party methods register through the `peftbench.methods` entry-point group or a
file passed with `--plugin path/to/file.py`.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .errors import UserError

# Every method trains through the same engine, so every method has these knobs. Methods override
# the values (e.g. full fine-tuning uses AdamW); suites and `--set` override them per run.
ENGINE_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",          # sgd | adamw
    "lr": 0.1,                   # base learning rate for a batch of `lr_batch_base` images
    "lr_batch_base": 256,        # lr is scaled by batch_size / lr_batch_base (VPT); 0 disables
    "weight_decay": 0.0,         # not applied to 1-D parameters (biases, norms)
    "momentum": 0.9,
    "epochs": 100,
    "warmup_epochs": 10,         # linear warmup, then cosine decay to zero
    "lr_schedule": "step",       # step: the schedule advances every step; epoch: once per epoch (VPT's code)
    "batch_size": 128,
    "eval_batch_size": 256,
}


@dataclass
class Method:
    name: str
    build: Callable[..., nn.Module]
    defaults: dict[str, Any]
    aliases: tuple[str, ...] = ()
    summary: str = ""
    paper: str = ""
    source: str = ""
    # trainable parameters (head included) as the paper's formula gives them, for the contract
    # tests: formula(backbone, num_classes, hparams) -> int
    formula: Callable[..., int] | None = None
    # the paper's hyperparameter grid, for the tune stage: {"lr": [...], "weight_decay": [...]}
    grid: dict[str, list[Any]] | None = None
    # True where the method's features equal the frozen backbone's at initialisation
    identity_at_init: bool = False
    # True where only the head trains, on a frozen backbone kept in eval mode: the engine may
    # then compute the features once and train the head on them (bench/features.py)
    head_only: bool = False
    # "vit": timm VisionTransformers (with the modules the method needs); "any": any timm
    # classifier, since the method touches only the image, the pooled feature or every parameter
    backbones: str = "vit"


_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False


def register_method(name: str, *, defaults: dict[str, Any] | None = None, aliases: tuple[str, ...] = (),
                    summary: str = "", paper: str = "", formula: Callable[..., int] | None = None,
                    grid: dict[str, list[Any]] | None = None, identity_at_init: bool = False,
                    head_only: bool = False, backbones: str = "vit"):
    """Decorate `build(backbone, num_classes, hparams) -> PeftModel` to register a method."""
    if backbones not in ("vit", "any"):
        raise ValueError(f"register_method({name!r}): backbones must be 'vit' or 'any', got {backbones!r}")

    def wrap(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        merged = {**ENGINE_DEFAULTS, **(defaults or {})}
        for key in [name, *aliases]:
            owner = _ALIASES.get(key)
            if owner is not None and _METHODS[owner].build is not build:
                raise ValueError(f"method name {key!r} is already registered by {_METHODS[owner].source}")
        _METHODS[name] = Method(name=name, build=build, defaults=merged, aliases=tuple(aliases),
                                summary=summary or (build.__doc__ or "").strip().split("\n")[0],
                                paper=paper, source=f"{build.__module__}.{build.__qualname__}",
                                formula=formula, grid=grid, identity_at_init=identity_at_init,
                                head_only=head_only, backbones=backbones)
        for key in [name, *aliases]:
            _ALIASES[key] = name
        return build
    return wrap


def load_builtin_methods() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from . import methods as builtin  # noqa: F401 - the package mapped from methods/
    for info in pkgutil.iter_modules(builtin.__path__):
        importlib.import_module(f"bench.methods.{info.name}")
    for ep in entry_points(group="peftbench.methods"):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            raise UserError(f"method plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from None


def load_plugin(path: str) -> None:
    """Import a Python file that registers methods with `register_method`."""
    file = Path(path).expanduser()
    if not file.is_file() or file.suffix != ".py":
        raise UserError(f"--plugin {path}: not a Python file; pass the path of a .py file that "
                        "calls bench.registry.register_method")
    mod_name = f"peftbench_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--plugin {path} failed to import: {type(exc).__name__}: {exc}") from None


def all_methods() -> dict[str, Method]:
    load_builtin_methods()
    return dict(sorted(_METHODS.items()))


def get_method(name: str) -> Method:
    load_builtin_methods()
    canonical = _ALIASES.get(name) or _ALIASES.get(name.lower())
    if canonical is None:
        raise UserError(f"unknown method {name!r}; registered methods: "
                        f"{', '.join(sorted(_METHODS))} ('all' selects every one)")
    return _METHODS[canonical]


def select_methods(spec: str) -> list[Method]:
    """`all`, or a comma-separated list of names and aliases (duplicates dropped, order kept)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--methods is empty; pass a comma-separated list of methods or 'all'")
    if "all" in names:
        return list(all_methods().values())
    chosen: dict[str, Method] = {}
    for n in names:
        m = get_method(n)
        chosen.setdefault(m.name, m)
    return list(chosen.values())
