"""From a suite and a method list to run specs, and the local executor that runs them.

Hyperparameters resolve in this order, later wins: the method's defaults, the suite's
`[hparams]` (scalars for every method that has the key, tables for the method they name), the
task's `hparams` (same rule), then `--set key=value` and `--set method.key=value`.
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import UserError
from .registry import Method, get_method
from .store import RunSpec, Store
from .suite import Suite, Task


def _coerce(value: Any, default: Any, key: str, where: str) -> Any:
    """`value` as the type of the method's default (strings come from the command line)."""
    kind = type(default)
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


def _apply_layer(hp: dict, layer: dict, method: Method, where: str, strict_scalars: bool) -> None:
    names = {method.name, *method.aliases}
    for key, value in layer.items():
        if isinstance(value, dict):
            if key not in names:
                continue
            for sub, v in value.items():
                if sub not in hp:
                    raise UserError(f"{where}: method {method.name!r} has no hyperparameter {sub!r}; "
                                    f"its hyperparameters: {', '.join(sorted(hp))}")
                hp[sub] = _coerce(v, hp[sub], sub, where)
        elif key in hp:
            hp[key] = _coerce(value, hp[key], key, where)
        elif strict_scalars:
            raise UserError(f"{where}: method {method.name!r} has no hyperparameter {key!r}; "
                            f"its hyperparameters: {', '.join(sorted(hp))}")


def resolve_hparams(method: Method, suite: Suite, task: Task,
                    overrides: list[tuple[str | None, str, str]]) -> dict[str, Any]:
    hp = dict(method.defaults)
    _apply_layer(hp, suite.hparams, method, f"{suite.path} [hparams]", strict_scalars=False)
    _apply_layer(hp, task.hparams, method, f"{suite.path} task {task.name!r} hparams", strict_scalars=False)
    for scope, key, value in overrides:
        if scope is not None and get_method(scope).name != method.name:
            continue
        if key in hp:
            hp[key] = _coerce(value, hp[key], key, "--set")
    _validate_hparams(hp, method)
    return hp


def _validate_hparams(hp: dict, method: Method) -> None:
    where = f"method {method.name!r}"
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if hp[key] < 1:
            raise UserError(f"{where}: {key} must be at least 1, got {hp[key]}")
    if not 0 <= hp["warmup_epochs"] <= hp["epochs"]:
        raise UserError(f"{where}: warmup_epochs must be between 0 and epochs ({hp['epochs']}), "
                        f"got {hp['warmup_epochs']}")
    if hp["lr"] <= 0:
        raise UserError(f"{where}: lr must be positive, got {hp['lr']}")
    if hp["lr_schedule"] not in ("step", "epoch"):
        raise UserError(f"{where}: lr_schedule must be step or epoch, got {hp['lr_schedule']!r}")
    if hp["optimizer"] not in ("sgd", "adamw"):
        raise UserError(f"{where}: optimizer must be sgd or adamw, got {hp['optimizer']!r}")


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
        if not any(key in m.defaults for m in targets):
            known = sorted(set().union(*(m.defaults for m in targets)))
            raise UserError(f"--set {key}={value}: no selected method has a hyperparameter {key!r}; "
                            f"known: {', '.join(known)}")


def plan(suite: Suite, methods: list[Method], tasks: list[Task], seeds: list[int], stage: str,
         backbone: str, checkpoint: str | None, overrides: list[str]) -> list[RunSpec]:
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
                                     interpolation=suite.interpolation))
    return specs


@dataclass
class Outcome:
    ran: list[RunSpec] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)
    busy: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execute_spec(spec: RunSpec, suite: Suite, data_root: Path, store: Store, opts,
                 record_user_errors: bool = False, job: dict | None = None) -> dict:
    """Run one spec and write its record (ok, or failed with the error); returns the record.

    The run resumes from its epoch checkpoint if an earlier attempt left one. Bad input
    (`UserError`, e.g. an unreadable image) is not a result of the run: at a terminal it
    propagates and no record is written; in a batch job (`record_user_errors`) nobody is there
    to read it, so it becomes a failed record that `bench status --failed` shows.
    """
    from . import engine  # torch-heavy: imported when a run really starts
    from .measure import environment

    record: dict[str, Any] = {"run_id": spec.run_id, "spec": spec.to_dict(), "started_at": now()}
    if job:
        record["job"] = job
    opts = dataclasses.replace(opts, checkpoint_path=store.checkpoint_path(spec))
    try:
        out = engine.run(spec, suite, data_root, opts)
    except UserError as exc:
        if not record_user_errors:
            raise
        record.update(status="failed", error=f"bad input: {exc}", traceback=None)
    except Exception as exc:  # noqa: BLE001 - any failure of the run itself becomes its record
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=20))
    else:
        record.update(status="ok", error=None, **out)
    record["finished_at"] = now()
    record["env"] = environment(opts.device)
    store.write(spec, record)
    return record


def run_local(specs: list[RunSpec], suite: Suite, data_root: Path, store: Store, opts,
              force: bool = False, on_done=None) -> Outcome:
    """Run specs one after another in this process; skip those done or running elsewhere."""
    outcome = Outcome()
    for spec in specs:
        if not force and store.is_ok(spec):
            outcome.skipped.append(spec)
            if on_done:
                on_done(spec, None)
            continue
        lock = store.claim(spec)
        if lock is None:
            outcome.busy.append(spec)
            if on_done:
                on_done(spec, None)
            continue
        with lock:
            if not force and store.is_ok(spec):  # another process finished it meanwhile
                outcome.skipped.append(spec)
                record = None
            else:
                record = execute_spec(spec, suite, data_root, store, opts)
                outcome.ran.append(spec)
                if record["status"] != "ok":
                    outcome.failed.append((spec, record["error"]))
        if on_done:
            on_done(spec, record)
    return outcome
