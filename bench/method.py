"""Methods: a registered name, typed settings with defaults, and a function that turns a timm
backbone into the model to train.

Built-in methods live in `methods/` (installed as `bench.methods`), one file each, and register
themselves with `register_method` when imported; third-party methods register through the
`peftbench.methods` entry-point group or `--plugin path/to/file.py`.

Every setting (the engine's shared knobs and a method's own) has a type, a range or a set of
choices, and one line of meaning. A value from any source (a method's defaults, a suite's
`[hparams]`, a task, a `[grid]`, `--set`) is checked against it when a suite is planned, before
anything runs or is submitted; `bench list methods` prints them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .errors import UserError
from .names import check_name
from .registry import Registry, origin_of


@dataclass(frozen=True)
class Setting:
    """One hyperparameter: its default (whose type is the setting's type), one line of meaning,
    and the values it may take."""
    default: Any
    help: str = ""
    choices: tuple | None = None
    min: float | None = None          # inclusive bounds
    max: float | None = None
    above: float | None = None        # exclusive lower bound (e.g. lr > 0)
    below: float | None = None        # exclusive upper bound (e.g. contraction < 1)

    @property
    def type(self) -> type:
        return type(self.default)

    def describe(self) -> str:
        """The allowed values, as `bench list methods` prints them."""
        if self.choices:
            return " | ".join(map(str, self.choices))
        lo = f"> {self.above}" if self.above is not None else (f">= {self.min}" if self.min is not None else "")
        hi = f"< {self.below}" if self.below is not None else (f"<= {self.max}" if self.max is not None else "")
        return ", ".join(p for p in (lo, hi) if p)

    def check(self, key: str, value: Any, where: str) -> Any:
        """`value` coerced to the setting's type (strings come from the command line), or one
        error saying what is wrong, where, and what is allowed."""
        kind = self.type
        value = _coerce(key, value, kind, where, self.default)
        bad = None
        if self.choices is not None and value not in self.choices:
            bad = f"choose from {', '.join(map(str, self.choices))}"
        elif kind in (int, float):
            if kind is float and not math.isfinite(value):
                bad = "it must be a finite number"
            elif self.above is not None and not value > self.above:
                bad = f"it must be above {self.above}"
            elif self.min is not None and value < self.min:
                bad = f"it must be at least {self.min}"
            elif self.below is not None and not value < self.below:
                bad = f"it must be below {self.below}"
            elif self.max is not None and value > self.max:
                bad = f"it must be at most {self.max}"
        if bad:
            meaning = f" ({self.help})" if self.help else ""
            raise UserError(f"{where}: {key}={value!r} is not allowed{meaning}: {bad}")
        return value


def _coerce(key: str, value: Any, kind: type, where: str, default: Any) -> Any:
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                low = text.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return low in ("true", "1", "yes")
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
        except ValueError:
            raise UserError(f"{where}: {key}={value!r} is not a valid {kind.__name__} "
                            f"(the default is {default!r})") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise UserError(f"{where}: {key}={value!r} must be a {kind.__name__} (the default is {default!r})")
    return value


# Every method trains through the same engine, so every method has these knobs. Methods override
# the defaults (e.g. full fine-tuning uses AdamW); suites and `--set` override them per run.
ENGINE_SETTINGS: dict[str, Setting] = {
    "optimizer": Setting("sgd", "sgd (momentum) or adamw", choices=("sgd", "adamw")),
    "lr": Setting(0.1, "base learning rate for a batch of lr_batch_base images", above=0.0),
    "lr_batch_base": Setting(256, "lr is scaled by batch_size / lr_batch_base (VPT); 0 disables", min=0),
    "weight_decay": Setting(0.0, "not applied to 1-D parameters (biases, norms)", min=0.0),
    "momentum": Setting(0.9, "SGD momentum", min=0.0, below=1.0),
    "epochs": Setting(100, "training epochs", min=1),
    "warmup_epochs": Setting(10, "linear warmup epochs, then cosine decay to 0", min=0),
    "lr_schedule": Setting("step", "the schedule advances every step, or once per epoch (VPT's code, timm's)",
                           choices=("step", "epoch")),
    "warmup_start": Setting(0.0, "with lr_schedule=epoch: the warmup's first factor of lr", min=0.0, max=1.0),
    "lr_floor": Setting(0.0, "with lr_schedule=epoch: the factor of lr the cosine ends at", min=0.0, max=1.0),
    "drop_path": Setting(0.0, "stochastic depth of the backbone (timm's drop_path_rate); active only "
                              "while the backbone trains in train mode", min=0.0, below=1.0),
    "batch_size": Setting(128, "training batch", min=1),
    "eval_batch_size": Setting(256, "evaluation batch", min=1),
}


@dataclass
class Method:
    name: str
    build: Callable[..., nn.Module]
    settings: dict[str, Setting]
    aliases: tuple[str, ...] = ()
    summary: str = ""
    paper: str = ""                   # the source the method is held to (shown by `bench list`)
    origin: str = ""                  # the module or plugin file that registered it
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
    # extra report columns: label -> record metrics averaged into it (e.g. LION's solver iterations)
    report_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # what every report with this method's rows must say about them (e.g. NOAH: whose search)
    report_note: str = ""

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: s.default for k, s in self.settings.items()}

    def check_hparams(self, hp: dict[str, Any], where: str, complete: bool = True) -> dict[str, Any]:
        """Every value checked against its setting; with `complete`, also the checks that tie
        values together (for the resolved set, not for one layer of it)."""
        out = {}
        for key, value in hp.items():
            if key not in self.settings:
                raise UserError(f"{where}: method {self.name!r} has no hyperparameter {key!r}; "
                                f"its hyperparameters: {', '.join(sorted(self.settings))}")
            out[key] = self.settings[key].check(key, value, f"{where}, method {self.name!r}")
        if complete and "warmup_epochs" in out and "epochs" in out and out["warmup_epochs"] > out["epochs"]:
            raise UserError(f"{where}, method {self.name!r}: warmup_epochs ({out['warmup_epochs']}) must not "
                            f"exceed epochs ({out['epochs']}); pass --set warmup_epochs=N too")
        return out


METHODS: Registry[Method] = Registry("method", "bench.methods", "peftbench.methods",
                                     hint=" ('all' selects every one)")


def register_method(name: str, *, defaults: dict[str, Any] | None = None,
                    settings: dict[str, Setting] | None = None, aliases: tuple[str, ...] = (),
                    summary: str = "", paper: str = "", formula: Callable[..., int] | None = None,
                    grid: dict[str, list[Any]] | None = None, identity_at_init: bool = False,
                    head_only: bool = False, backbones: str = "vit",
                    report_columns: dict[str, tuple[str, ...]] | None = None, report_note: str = ""):
    """Decorate `build(backbone, num_classes, hparams) -> PeftModel` to register a method.

    `settings`: the method's own hyperparameters, typed (`Setting`); `defaults`: new defaults
    for the engine's knobs or for those settings (a plain value for a key nobody declared becomes
    a setting of that value's type, with no range)."""
    if backbones not in ("vit", "any"):
        raise ValueError(f"register_method({name!r}): backbones must be 'vit' or 'any', got {backbones!r}")
    for key in (name, *aliases):
        check_name(key, "method name", f"register_method({name!r})")

    def wrap(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        declared = {**ENGINE_SETTINGS, **(settings or {})}
        for key, value in (defaults or {}).items():
            base = declared.get(key, Setting(value))
            declared[key] = Setting(value, base.help, base.choices, base.min, base.max, base.above, base.below)
            declared[key].check(key, value, f"register_method({name!r}) defaults")
        where = f"register_method({name!r}) grid"
        for key, values in (grid or {}).items():
            if key not in declared:
                raise ValueError(f"{where}: no hyperparameter {key!r}")
            for v in values:
                declared[key].check(key, v, where)
        METHODS.add(name, Method(
            name=name, build=build, settings=declared, aliases=tuple(aliases),
            summary=summary or (build.__doc__ or "").strip().split("\n")[0], paper=paper,
            origin=origin_of(build), formula=formula, grid=grid, identity_at_init=identity_at_init,
            head_only=head_only, backbones=backbones, report_columns=dict(report_columns or {}),
            report_note=report_note),
            aliases=tuple(aliases), origin=origin_of(build))
        return build
    return wrap


def all_methods() -> dict[str, Method]:
    return METHODS.items()


def get_method(name: str) -> Method:
    return METHODS.get(name)


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
