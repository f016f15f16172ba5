"""The `bench run` flow, once, for every executor.

1. `preflight`: everything a run needs from the user is checked before anything is written or
   submitted, so bad input fails in seconds with one message: the executor can work here; the
   suite, methods, tasks, seeds and every hyperparameter from any source; the data root and every
   split file of the stages to run (no image of a test split is opened before the final stage);
   the backbone's weights; each method built once on the backbone (so a setting only the model
   can judge fails here too); the results root is writable.
2. `execute`: the protocol's stages (`fixed`: one stage; `vtab`: tune over each method's grid on
   the tune split, select on validation, final with the best point for every seed) launched
   through the executor. In this process every stage runs to the end; an array executor submits
   what is left and returns, or with `--wait` follows each array and submits the next stage.

What happens is told to a listener (the CLI renders it); nothing here prints.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import UserError
from .executors import EXECUTORS, Executor, JobContext, Launch
from .method import Method, select_methods
from .protocol import final_specs, method_grid, select, tune_specs
from .runs import Outcome, is_done
from .spec import RunSpec, check_suite_settings, plan
from .states import run_state
from .store import RecordWriteError, Store, now
from .suite import Suite, Task, load_suite

MAX_SEED = 2**63 - 1


class Listener(Protocol):
    """What the CLI is told as a campaign goes."""

    def started(self, campaign: "Campaign") -> None: ...
    def stage(self, stage: str, specs: list[RunSpec], campaign: "Campaign") -> None: ...
    def selected(self, method: str, task: str, point: dict[str, Any]) -> None: ...
    def run_done(self, spec: RunSpec, record: dict | None) -> None: ...
    def submitted(self, launch: Launch, campaign: "Campaign") -> None: ...
    def watching(self, launch: Launch, done: int, total: int, counts: dict) -> None: ...


@dataclass
class Request:
    """`bench run`'s arguments, as parsed."""
    suite: str
    methods: str | None = None       # comma-separated, "all", or None: the suite's `methods` (else all)
    tasks: list[str] | None = None
    seeds: list[int] | None = None
    protocol: str | None = None
    stage: str | None = None
    data_root: str | None = None
    backbone: str | None = None
    checkpoint: str | None = None
    overrides: list[str] = field(default_factory=list)
    force: bool = False
    results: str = "results"
    device: str = "auto"
    threads: int | None = None
    workers: int = 0
    precision: str = "auto"
    compile: bool = False
    checkpoint_interval: float = 120.0
    eval_every: int = 0              # final stage: a diagnostic test evaluation every N epochs
    keep_weights: bool = False       # keep each run's trained state beside its record
    plugins: list[str] = field(default_factory=list)
    executor: str = "local"
    executor_options: Any = None
    wait: bool = False
    command: str = "bench run"


@dataclass
class Campaign:
    """A checked request: what to run, where, and how."""
    request: Request
    suite: Suite
    methods: list[Method]
    tasks: list[Task]
    seeds: list[int]
    protocol: str
    base: list[RunSpec]                 # the final (or the fixed) stage, every seed
    tune: list[RunSpec]                 # the tune stage (vtab protocol), first seed
    grids: dict[str, dict[str, list]]
    data_root: Path
    store: Store
    executor: Executor
    context: JobContext
    threads: int

    @property
    def report_stage(self) -> str:
        return "final" if self.protocol == "vtab" else self.base[0].stage


@dataclass
class Result:
    outcome: Outcome = field(default_factory=Outcome)
    launches: list[Launch] = field(default_factory=list)
    failed: int = 0                     # runs that failed in followed arrays
    waiting: list[str] = field(default_factory=list)   # cells whose final stage waits for tune runs

    @property
    def exit_code(self) -> int:
        return 1 if self.outcome.failed or self.failed or self.waiting else 0


# ---------------------------------------------------------------------------------- preflight
def preflight(req: Request, progress=None) -> Campaign:
    """Check everything; returns the campaign, or raises one `UserError`."""
    from .backbones import create_backbone, set_threads
    from .data import check_labels, read_split, resolve_data_root
    from .engine import EngineOptions, resolve_device
    from .registry import load_plugin

    for path in req.plugins:  # before any name is looked up: a plugin may register it
        load_plugin(path)
    executor = EXECUTORS.get(req.executor)(req.executor_options)
    executor.check()
    suite = load_suite(req.suite)
    check_suite_settings(suite)
    methods = select_methods(req.methods or ",".join(suite.methods) or "all")
    tasks = suite.select_tasks(req.tasks)
    seeds = list(dict.fromkeys(req.seeds if req.seeds is not None else suite.seeds))
    if not seeds:
        raise UserError("--seeds is empty; expected comma-separated integers, e.g. --seeds 42")
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise UserError(f"--seeds: {seed} is not a seed; use integers from 0 to 2**63-1")
    if req.threads is not None and req.threads < 1:
        raise UserError(f"--threads {req.threads}: use at least 1 (or leave it out for the cores "
                        "this process may use)")
    if req.workers < 0:
        raise UserError(f"--workers {req.workers}: use 0 (as many as the torch threads) or more")
    if req.checkpoint_interval < 0:
        raise UserError(f"--checkpoint-interval {req.checkpoint_interval}: use 0 (every epoch) or more seconds")
    protocol = req.protocol or suite.protocol
    if protocol == "vtab" and req.stage:
        raise UserError("--stage goes with --protocol fixed; --protocol vtab runs the tune stage, "
                        "then the final stage")
    if protocol == "vtab" and "tune" not in suite.splits:
        raise UserError(f"--protocol vtab needs a tune stage, and suite {suite.name!r} has none in [splits]")
    stage = req.stage or "final"
    if req.eval_every < 0:
        raise UserError(f"--eval-every {req.eval_every}: use a number of epochs >= 1 (0, the default: "
                        "evaluate only after the last epoch)")
    if req.eval_every and stage != "final":
        raise UserError(f"--eval-every evaluates the final stage's test split during training as a "
                        f"diagnostic; the {stage!r} stage has none. Drop --eval-every or run --stage final")
    backbone_name = req.backbone or suite.backbone
    base = plan(suite, methods, tasks, seeds, stage, backbone_name, req.checkpoint, req.overrides,
                precision=req.precision)
    grids: dict[str, dict[str, list]] = {}
    tune: list[RunSpec] = []
    stages = [stage]
    if protocol == "vtab":
        grids = {m.name: method_grid(m, suite, req.overrides) for m in methods}
        tune = tune_specs(suite, [s for s in base if s.seed == seeds[0]], grids)
        stages = ["tune", "final"]

    # Jobs resolve their device where they run: a login node without a GPU must not refuse cuda.
    device = resolve_device(req.device) if executor.in_process else None
    threads = set_threads(req.threads) if executor.in_process else (req.threads or 0)
    root = resolve_data_root(suite, req.data_root, progress=progress)
    for task in tasks:
        for split in dict.fromkeys(sp for st in stages for sp in suite.splits[st]):
            items = read_split(suite, task, root, split)
            if not items.items:
                raise UserError(f"task {task.name!r}: split {split!r} ({items.source}) lists no images; "
                                "every split of a stage needs some")
            check_labels(items, task.num_classes)
    backbone = create_backbone(backbone_name, req.checkpoint, img_size=suite.image_size)
    _build_each_method_once(backbone.model, methods, base + tune, {t.name: t.num_classes for t in tasks})

    store = Store(req.results)
    store.check_writable()
    opts = EngineOptions(device=device or "auto", workers=req.workers, compile=req.compile,
                         checkpoint_interval=req.checkpoint_interval, protocol=protocol,
                         eval_every=req.eval_every, keep_weights=req.keep_weights)
    context = JobContext(
        suite_path=str(Path(suite.path).resolve()), data_root=str(Path(root).resolve()),
        results=str(store.root.resolve()) if not executor.in_process else str(store.root),
        plugins=[str(Path(p).expanduser().resolve()) for p in req.plugins],
        threads=req.threads or getattr(executor.options, "cpus_per_job", None), device=req.device,
        engine=opts, force_since=now() if req.force else None)
    return Campaign(req, suite, methods, tasks, seeds, protocol, base, tune, grids, root, store, executor,
                    context, threads)


def _build_each_method_once(backbone, methods: list[Method], specs: list[RunSpec], classes: dict[str, int]) -> None:
    """Build every method with every distinct set of its own settings, on a copy of the backbone,
    so that what only a built model can judge (a backbone without the modules a method needs,
    settings that contradict each other) fails before anything runs."""
    from .method import ENGINE_SETTINGS

    seen = set()
    engine_keys = set(ENGINE_SETTINGS) - {"epochs"}  # what no build reads (LION reads epochs)
    for spec in specs:
        method = next(m for m in methods if m.name == spec.method)
        own = {k: v for k, v in spec.hparams.items() if k not in engine_keys}
        key = (method.name, repr(sorted(own.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            method.build(copy.deepcopy(backbone), classes[spec.task], dict(spec.hparams))
        except UserError as exc:
            raise UserError(f"method {method.name!r} with {own}: {exc}") from None


# ----------------------------------------------------------------------------------- execute
def execute(c: Campaign, listener: Listener) -> Result:
    """Run (or submit) every stage of the campaign; see the module's docstring."""
    if c.context.force_since is None:
        return _execute(c, listener)
    with c.store.force_wave(c.suite.name, c.context.force_since) as since:
        c.context = dataclasses.replace(c.context, force_since=since)
        return _execute(c, listener)


def _execute(c: Campaign, listener: Listener) -> Result:
    result = Result()
    store, executor = c.store, c.executor
    attempted: set[str] = set()
    counted: set[str] = set()         # done before this invocation, counted once
    announced: set[tuple[str, str]] = set()
    force_since = c.context.force_since
    listener.started(c)
    while True:
        states = {} if executor.in_process else executor.job_states(store, _manifests(store, c))

        def pending(specs: list[RunSpec]) -> list[RunSpec]:
            keep = []
            for s in specs:
                if s.run_id in attempted:
                    continue
                if is_done(store, s, force_since):
                    if s.run_id not in counted:
                        counted.add(s.run_id)
                        result.outcome.skipped.append(s)
                        listener.run_done(s, None)
                    continue
                job = states.get(s.run_id)
                if not executor.in_process and ((job is not None and job.active) or store.is_running(s)):
                    continue  # already queued or running in an earlier submission
                keep.append(s)
            return keep

        if c.tune:
            best, result.waiting = select(store, c.tune)
            for cell in sorted(set(best) - announced):
                announced.add(cell)
                listener.selected(cell[0], cell[1], {k: best[cell][k] for k in sorted(c.grids[cell[0]])
                                                     if k in best[cell]})
            final = final_specs(c.suite, c.base, best)
        else:
            final = c.base
        todo_tune, todo_final = pending(c.tune), pending(final)
        todo = todo_tune + todo_final
        if not todo:
            break
        for stage, specs in (("tune", todo_tune), ("final" if c.tune else c.base[0].stage, todo_final)):
            if specs:
                listener.stage(stage, specs, c)
        if executor.in_process:  # plans first: `bench status` shows what this process will run
            written = _save_plans(store, c.suite.name, c.tune, final)
        try:
            launch = executor.launch(todo, c.context, store, c.suite.name, c.request.command,
                                     on_done=listener.run_done)
        except UserError as exc:
            # bad input met mid-run (an unreadable image): no run of it was recorded, so the plan
            # written for it goes too, and `bench status` does not show a run that will not come
            if executor.in_process and not isinstance(exc, RecordWriteError):
                for path in written:
                    path.unlink(missing_ok=True)
                store.remove_empty_folders(c.suite.name)
            raise
        attempted.update(s.run_id for s in todo)
        result.launches.append(launch)
        if executor.in_process:
            result.outcome.merge(launch.outcome)
            continue
        _save_plans(store, c.suite.name, c.tune, final)  # only once the cluster took the array
        listener.submitted(launch, c)
        if not c.request.wait:
            break
        result.failed += executor.wait(
            launch, store, lambda done, total: listener.watching(launch, done, total, counts(c, launch)))
    if c.tune:
        _, result.waiting = select(store, c.tune)
    return result


def _save_plans(store: Store, suite: str, tune: list[RunSpec], final: list[RunSpec]) -> list[Path]:
    """Save the stages' plans; returns the files this call wrote."""
    written = [store.save_plan(suite, specs) for specs in (tune, final) if specs]
    return [p for p in written if p is not None]


def _manifests(store: Store, c: Campaign) -> list[dict]:
    from .executors.submitit import submissions

    return [m for m in submissions(store, c.suite.name) if m.get("executor") == c.executor.name]


def counts(c: Campaign, launch: Launch) -> dict[tuple[str, str], dict[str, int]]:
    """(stage, method) -> runs per state, for the runs of one launch (the live table)."""
    manifests = [launch.submission.manifest] if launch.submission is not None else []
    jobs = c.executor.job_states(c.store, manifests)
    out: dict[tuple[str, str], dict[str, int]] = {}
    for spec in launch.specs:
        state, _ = run_state(c.store, spec, c.store.read(spec), jobs.get(spec.run_id))
        row = out.setdefault((spec.stage, spec.method), {k: 0 for k in ("ok", "failed", "running", "queued",
                                                                          "pending")})
        row[state] += 1
    return out


def default_results_root() -> str:
    return os.environ.get("PEFTBENCH_RESULTS", "results")
