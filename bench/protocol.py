"""The evaluation protocols: `fixed` (one stage, given hyperparameters) and `vtab` (as in VPT).

`vtab`: the `tune` stage trains on the suite's tune split (VTAB-1k: train800) and evaluates the
last epoch on its validation split (val200) for every point of the method's grid, with the first
seed; the best point (ties to the smaller lr, then the smaller weight decay) is retrained in the
`final` stage (train800val200 -> test) for every seed. Only tune records choose anything: the
test split is never read before the final stage. Both stages are ordinary runs with ordinary
records, so skip-on-rerun, status and reports work for them unchanged.
"""

from __future__ import annotations

import itertools
from typing import Any

from .errors import UserError
from .method import Method
from .spec import RunSpec, parse_overrides, with_stage
from .store import Store
from .suite import Suite


def method_grid(method: Method, suite: Suite, overrides: list[str]) -> dict[str, list[Any]]:
    """The method's grid, narrowed by the suite's `[grid.<method>]` and by `--set` (a value the
    user fixed on the command line is not searched over)."""
    grid = dict(method.grid or {})
    for name in (method.name, *method.aliases):
        for key, values in suite.grid.get(name, {}).items():
            if key not in method.settings:
                raise UserError(f"{suite.path} [grid.{name}]: method {method.name!r} has no "
                                f"hyperparameter {key!r}; its hyperparameters: {', '.join(sorted(method.settings))}")
            grid[key] = [method.settings[key].check(key, v, f"{suite.path} [grid.{name}]") for v in values]
    fixed = {key for scope, key, _ in parse_overrides(overrides)
             if scope is None or scope in (method.name, *method.aliases)}
    return {k: v for k, v in grid.items() if k not in fixed}


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] or [{}]


def tune_specs(suite: Suite, base: list[RunSpec], grids: dict[str, dict[str, list[Any]]]) -> list[RunSpec]:
    """One tune-stage spec per (method, task) and grid point; `base` are one seed's final specs.
    Each point is checked as a whole (e.g. warmup within the epochs) before anything runs."""
    from .method import get_method

    specs = []
    for spec in base:
        method = get_method(spec.method)
        for point in grid_points(grids[spec.method]):
            hp = method.check_hparams({**spec.hparams, **point}, f"{suite.path} grid point {point}")
            specs.append(with_stage(spec, suite, "tune", hp))
    return specs


def preference(hparams: dict, top1: float, run_id: str) -> tuple:
    """The order in which tune points are preferred: higher validation top-1, then the smaller
    lr, then the smaller weight decay (then the run id, so that the choice is deterministic)."""
    return (-top1, hparams.get("lr", 0.0), hparams.get("weight_decay", 0.0), run_id)


def _preference(spec: RunSpec, top1: float) -> tuple:
    return preference(spec.hparams, top1, spec.run_id)


def select(store: Store, tune: list[RunSpec]) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """Best hyperparameters per (method, task) from complete tune stages, and why others wait."""
    cells: dict[tuple[str, str], list[RunSpec]] = {}
    for spec in tune:
        cells.setdefault((spec.method, spec.task), []).append(spec)
    best, waiting = {}, []
    for cell, specs in cells.items():
        records = [(s, store.read(s)) for s in specs]
        not_ok = [s for s, r in records if r is None or r.get("status") != "ok"]
        if not_ok:
            waiting.append(f"{cell[0]}/{cell[1]}: {len(not_ok)} of {len(specs)} tune runs not ok yet")
            continue
        chosen = min(records, key=lambda sr: _preference(sr[0], sr[1]["metrics"]["top1"]))
        best[cell] = chosen[0].hparams
    return best, waiting


def final_specs(suite: Suite, base: list[RunSpec], best: dict[tuple[str, str], dict]) -> list[RunSpec]:
    return [with_stage(s, suite, "final", best[(s.method, s.task)]) for s in base if (s.method, s.task) in best]
