"""`bench`: run suites, list methods and suites, show status, make reports, check data."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .errors import UserError

console = Console(highlight=False)
if not console.is_terminal:  # logs and pipes: no 80-column folding of wide tables
    console = Console(highlight=False, width=200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def default_results_root() -> str:
    return os.environ.get("PEFTBENCH_RESULTS", "results")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 42,44,82") from None
    if not seeds:
        raise UserError("--seeds is empty; expected comma-separated integers, e.g. --seeds 42")
    return list(dict.fromkeys(seeds))


def _load_plugins(args) -> None:
    from .registry import load_plugin

    for path in getattr(args, "plugin", None) or []:
        load_plugin(path)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None


# ---------------------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from .launch import Outcome, plan
    from .protocol import final_specs, method_grid, select, tune_specs
    from .registry import select_methods
    from .store import Store
    from .suite import load_suite

    from .submit import require_sbatch

    if args.executor == "slurm":
        require_sbatch()  # before anything is made or written
    if args.executor == "local" and (args.wait or args.chunk):
        raise UserError("--wait and --chunk go with --executor slurm or submitit-local; "
                        "--executor local (the default) always runs in this process and waits")
    _load_plugins(args)
    suite = load_suite(args.suite)
    methods = select_methods(args.methods)
    tasks = suite.select_tasks(args.tasks.split(",") if args.tasks else None)
    seeds = _seeds(args.seeds) if args.seeds else list(suite.seeds)
    backbone = args.backbone or suite.backbone
    protocol = args.protocol or suite.protocol
    if protocol == "vtab" and args.stage:
        raise UserError("--stage goes with --protocol fixed; --protocol vtab runs the tune stage, "
                        "then the final stage")
    if protocol == "vtab" and "tune" not in suite.splits:
        raise UserError(f"--protocol vtab needs a tune stage, and suite {suite.name!r} has none in [splits]")
    stage = args.stage or "final"
    overrides = args.set or []
    base = plan(suite, methods, tasks, seeds, stage, backbone, args.checkpoint, overrides)
    stages = [stage]
    tune: list = []
    if protocol == "vtab":
        grids = {m.name: method_grid(m, suite, overrides) for m in methods}
        tune = tune_specs([s for s in base if s.seed == seeds[0]], grids)
        stages = ["tune", "final"]

    from . import data as data_mod
    from .backbones import create_backbone, set_threads
    from .engine import EngineOptions
    from .report import build_report, rich_table

    if args.executor != "local":
        slurm = _slurm_options(args)
    # Jobs pick their device where they run: a login node without a GPU must not refuse cuda.
    device = _device(args.device) if args.executor == "local" else None
    threads = set_threads(args.threads)
    # Everything a run needs from the user is checked before the first run starts, so bad input
    # fails in seconds with one message and leaves nothing in the results root. (Only split
    # files are read here: no image of a test split is opened before the final stage.)
    root = data_mod.resolve_data_root(suite, args.data_root)
    for task in tasks:
        for split in dict.fromkeys(sp for st in stages for sp in suite.splits[st]):
            data_mod.check_labels(data_mod.read_split(suite, task, root, split), task.num_classes)
    create_backbone(backbone, args.checkpoint, img_size=suite.image_size)

    store = Store(args.results)
    if args.executor != "local":
        return _submit_runs(args, suite, methods, protocol, base, tune, grids if tune else {}, root, store, slurm)
    opts = EngineOptions(device=device, workers=args.workers, precision=args.precision, compile=args.compile,
                         checkpoint_interval=args.checkpoint_interval)
    console.print(f"[bold]{suite.name}[/]: {len(methods)} methods x {len(tasks)} tasks x {len(seeds)} "
                  f"seeds, protocol {protocol} on {device} ({threads} threads); records in "
                  f"{store.root}/{suite.name}")
    total = Outcome()
    waiting: list[str] = []
    if tune:
        store.save_plan(suite.name, tune)
        console.print(f"tune stage: {len(tune)} runs (grid points x tasks x methods, seed {seeds[0]}, "
                      f"{suite.splits['tune'][0]} -> {suite.splits['tune'][1]})")
        _merge(total, _run_specs(tune, suite, root, store, opts, args))
        best, waiting = select(store, tune)
        specs = final_specs(base, best)
        for cell, hp in sorted(best.items()):
            chosen = {k: hp[k] for k in sorted(grids[cell[0]]) if k in hp}
            console.print(f"selected for {cell[0]}/{cell[1]}: {chosen}")
        console.print(f"final stage: {len(specs)} runs ({suite.splits['final'][0]} -> "
                      f"{suite.splits['final'][1]})")
    else:
        specs = base
    if specs:
        store.save_plan(suite.name, specs)
        _merge(total, _run_specs(specs, suite, root, store, opts, args))
    console.print(f"{len(total.ran)} ran, {len(total.skipped)} already done, "
                  f"{len(total.busy)} running elsewhere, {len(total.failed)} failed")
    for line in waiting:
        console.print(f"[yellow]final stage waits[/]: {line}; run the same command again when they are ok")
    report = build_report(store, suite, "final" if protocol == "vtab" else stage)
    if not report.mean.empty:
        console.print(rich_table(report.restrict({m.name for m in methods})))
    for spec, error in total.failed:
        err_console.print(f"[red]failed[/] {spec.stage} {spec.method}/{spec.task}/seed {spec.seed}: "
                          f"{escape(str(error))} (record: {store.record_path(spec)})")
    return 1 if total.failed or waiting else 0


def _slurm_options(args):
    from .submit import parse_extra, slurm_options, user_config_path

    cli = {"partition": args.partition, "gpus_per_job": args.gpus_per_job, "cpus_per_job": args.cpus_per_job,
           "mem": args.mem, "time": args.time, "array_parallelism": args.array_parallelism,
           "account": args.account, "qos": args.qos, "constraint": args.constraint,
           "extra": parse_extra(args.slurm_extra), "chunk": args.chunk}
    return slurm_options(user_config_path(args.config), cli)


def _submit_runs(args, suite, methods, protocol, base, tune, grids, root, store, slurm) -> int:
    """Submit what is not ok and not already queued as one array; with --wait, follow it (and,
    under the vtab protocol, submit the final stage once the tune runs it needs are ok)."""
    from .protocol import final_specs, select
    from .report import build_report, rich_table
    from .submit import RunContext, job_states, submit

    ctx = RunContext(suite_path=str(suite.path), data_root=str(Path(root).resolve()),
                     results=str(store.root.resolve()),
                     plugins=[str(Path(p).expanduser().resolve()) for p in args.plugin or []],
                     device=args.device, threads=args.threads or slurm.cpus_per_job,
                     checkpoint_interval=args.checkpoint_interval, precision=args.precision,
                     compile=args.compile)
    command = "bench " + " ".join(sys.argv[1:])
    console.print(f"[bold]{suite.name}[/]: {len(methods)} methods, protocol {protocol}, "
                  f"executor {args.executor}; records in {store.root}/{suite.name}")
    submitted: set[str] = set()
    failures = 0
    while True:
        states = job_states(store, suite.name)

        def todo(specs):
            keep = []
            for s in specs:
                job = states.get(s.run_id)
                if s.run_id in submitted or (job is not None and job.active) or store.is_running(s):
                    continue
                if args.force or not store.is_ok(s):
                    keep.append(s)
            return keep

        waiting: list[str] = []
        if tune:
            best, waiting = select(store, tune)
            final = final_specs(base, best)
            specs = todo(tune) + todo(final)
        else:
            final = base
            specs = todo(base)
        if not specs:
            if not submitted:
                console.print("nothing to submit: every run is ok or already queued "
                              f"(`bench status --suite {suite.name}` shows them)")
            break
        sub = submit(specs, ctx, args.executor, slurm, store, suite.name, command)
        for stage_specs in (tune, final):  # plans only once the cluster took the array
            if stage_specs:
                store.save_plan(suite.name, stage_specs)
        submitted.update(s.run_id for s in specs)
        first = sub.jobs[0].job_id.split("_")[0]
        console.print(f"submitted {len(specs)} runs as {len(sub.jobs)} array tasks (job {first}, "
                      f"submission {sub.id}); logs in {sub.folder}")
        if not args.wait:
            break
        failures += _watch(sub, store)
        if not tune:
            break
    if tune and waiting:
        console.print(f"[yellow]final stage waits[/] for the tune runs of {len(waiting)} cells; "
                      "run the same command again once they are ok (`bench status` shows them)")
    if not args.wait:
        console.print(f"follow it: bench status --suite {suite.name}; stop it: bench cancel --suite {suite.name}")
        return 0
    report = build_report(store, suite, base[0].stage if base else "final")
    if not report.mean.empty:
        console.print(rich_table(report.restrict({m.name for m in methods})))
    return 1 if failures or (tune and waiting) else 0


def _watch(sub, store) -> int:
    """Block until every array task of `sub` is done, with a live table; returns failed runs.

    Never calls `job.result()`: one failed task raises there and hides the others (submitit
    issue 1628). Done-ness comes from submitit, run outcomes from the records.
    """
    from rich.live import Live
    from rich.table import Table

    run_ids = [rid for j in sub.manifest["jobs"] for rid in j["run_ids"]]
    plans = {s.run_id: s for s in store.planned_specs(sub.suite)}
    specs = {rid: plans[rid] for rid in run_ids if rid in plans}
    poll = float(os.environ.get("PEFTBENCH_POLL_SECONDS", "5"))

    def snapshot():
        done = [job.done() for job in sub.jobs]
        job_of = {rid: (job, d) for job, d, j in zip(sub.jobs, done, sub.manifest["jobs"]) for rid in j["run_ids"]}
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for rid, spec in specs.items():
            job, finished = job_of[rid]
            rec = store.read(spec)
            if rec is not None and rec.get("status") == "ok":
                state = "ok"
            elif finished:  # a failed record, or the job ended (cancelled, killed) before writing one
                state = "failed"
            elif store.is_running(spec):
                state = "running"
            else:
                state = "queued"
            row = counts.setdefault((spec.stage, spec.method), {"ok": 0, "failed": 0, "running": 0, "queued": 0})
            row[state] += 1
        table = Table(title=f"submission {sub.id}: {sum(done)}/{len(done)} array tasks done")
        for col in ("stage", "method", "ok", "failed", "running", "queued"):
            table.add_column(col, justify="left" if col in ("stage", "method") else "right")
        for (stage, method), c in sorted(counts.items()):
            table.add_row(stage, method, str(c["ok"]), f"[red]{c['failed']}[/]" if c["failed"] else "0",
                          str(c["running"]), str(c["queued"]))
        return all(done), table, sum(c["failed"] for c in counts.values())

    finished, table, failed = snapshot()
    with Live(table, console=console, refresh_per_second=1, transient=not console.is_terminal) as live:
        while not finished:
            time.sleep(poll)
            finished, table, failed = snapshot()
            live.update(table)
    console.print(table)
    return failed


def _merge(total, part) -> None:
    for name in ("ran", "skipped", "busy", "failed"):
        getattr(total, name).extend(getattr(part, name))


def _run_specs(specs, suite, root, store, opts, args):
    """Run specs locally with rich progress: one line per finished run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .launch import run_local

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=args.quiet) as progress:
        overall = progress.add_task("runs", total=len(specs))

        def on_done(spec, record):
            progress.update(overall, advance=1)
            if record is None:
                return
            what = f"{spec.method:<12} {spec.task:<18} seed {spec.seed:<5}"
            if spec.stage != "final":
                what += f" {spec.stage} lr={spec.hparams.get('lr')}"
            if record["status"] == "ok":
                m = record["metrics"]
                progress.console.print(f"[green]ok[/]     {what} top-1 {m['top1']:5.1f}%  "
                                       f"{m['train_seconds'] + m['eval_seconds']:6.1f}s")
            else:
                progress.console.print(f"[red]failed[/] {what} {escape(str(record['error']))}")

        opts.progress = None if args.quiet else progress
        return run_local(specs, suite, root, store, opts, force=args.force, on_done=on_done)


# --------------------------------------------------------------------------------------- list
def cmd_list(args) -> int:
    from rich.table import Table

    from .registry import ENGINE_DEFAULTS, all_methods
    from .suite import builtin_suites, load_suite

    _load_plugins(args)
    what = args.what
    if what in ("all", "methods"):
        table = Table(title="methods")
        for col in ("method", "aliases", "what it trains", "defaults (beyond the shared ones below)"):
            table.add_column(col)
        for m in all_methods().values():
            own = {k: v for k, v in m.defaults.items() if ENGINE_DEFAULTS.get(k, object()) != v}
            table.add_row(m.name, ", ".join(m.aliases), m.summary,
                          ", ".join(f"{k}={v}" for k, v in own.items()))
        console.print(table)
        console.print("shared defaults: " + ", ".join(f"{k}={v}" for k, v in ENGINE_DEFAULTS.items()))
    if what in ("all", "suites"):
        table = Table(title="suites")
        for col in ("suite", "format", "image", "backbone", "seeds", "group", "tasks"):
            table.add_column(col)
        for name in sorted(builtin_suites()):
            s = load_suite(name)
            for i, group in enumerate(s.groups):
                tasks = ", ".join(t.name for t in s.tasks if t.group == group)
                head = (s.name, s.format, str(s.image_size), s.backbone,
                        ",".join(map(str, s.seeds))) if i == 0 else ("",) * 5
                table.add_row(*head, group, tasks, end_section=i == len(s.groups) - 1)
        console.print(table)
    return 0


# ------------------------------------------------------------------------------------- status
def cmd_status(args) -> int:
    from rich.table import Table

    from .store import RunSpec, Store
    from .submit import job_states, run_state, submissions
    from .suite import load_suite

    store = Store(args.results)
    suites = [load_suite(args.suite).name] if args.suite else store.suites()
    if not suites:
        console.print(f"no runs under {store.root}")
        return 0
    any_failed = False
    for name in suites:
        planned = {s.run_id: s for s in store.planned_specs(name)}
        records = {r["run_id"]: r for r in store.records(name)}
        for run_id, rec in records.items():
            planned.setdefault(run_id, RunSpec.from_dict(rec["spec"]))
        jobs = job_states(store, name)
        kinds = ("ok", "failed", "running", "queued", "pending")
        state: dict[tuple[str, str], dict] = {}
        failures = []
        for run_id, spec in planned.items():
            cell = state.setdefault((spec.method, spec.task), {**{k: 0 for k in kinds}, "jobs": []})
            job = jobs.get(run_id)
            what, why = run_state(store, spec, records.get(run_id), job)
            cell[what] += 1
            if what != "ok" and job is not None:
                cell["jobs"].append(job.job_id)
            if what == "failed":
                failures.append((spec, why, records.get(run_id), job))
        table = Table(title=f"{name} · runs per cell")
        for col in ("method", "task", *kinds, "jobs not ok"):
            table.add_column(col, justify="right" if col in kinds else "left")
        totals = {k: 0 for k in kinds}
        for (method, task), c in sorted(state.items()):
            for k in kinds:
                totals[k] += c[k]
            ids = list(dict.fromkeys(c["jobs"]))
            table.add_row(method, task, str(c["ok"]), f"[red]{c['failed']}[/]" if c["failed"] else "0",
                          *(str(c[k]) for k in kinds[2:]),
                          ", ".join(ids[:4]) + (f" +{len(ids) - 4}" if len(ids) > 4 else ""))
        console.print(table)
        console.print(f"{name}: " + ", ".join(f"{v} {k}" for k, v in totals.items()))
        subs = submissions(store, name)
        if subs:
            last = subs[-1]
            console.print(f"latest submission {last['id']} ({last['executor']}, {len(last['jobs'])} array "
                          f"tasks): {last['folder']}")
        if failures:
            any_failed = True
            if not args.failed:
                console.print(f"[red]{len(failures)} failed[/]: `bench status --suite {name} --failed` "
                              "shows why; `bench run` with the same arguments retries only those")
        if args.failed:
            for spec, why, rec, job in failures:
                console.print(f"[red]failed[/] {spec.stage} {spec.method}/{spec.task} seed {spec.seed}: "
                              f"{escape(str(why))}")
                if rec is not None:
                    console.print(f"  record: {rec['_path']}")
                log = (rec or {}).get("job", {}).get("stderr") or (job.stderr if job else None)
                if log:
                    console.print(f"  log:    {log}")
    return 1 if args.failed and any_failed else 0


def cmd_cancel(args) -> int:
    from .store import Store
    from .submit import cancel, submissions
    from .suite import load_suite

    store = Store(args.results)
    name = load_suite(args.suite).name
    subs = submissions(store, name)
    if not subs:
        raise UserError(f"no submissions of suite {name!r} under {store.root}/_submissions")
    if args.submission:
        subs = [s for s in subs if s["id"] == args.submission]
        if not subs:
            raise UserError(f"--submission {args.submission}: no such submission of suite {name!r}; "
                            "`bench status` names the latest")
    elif not args.all:
        subs = subs[-1:]
    cancelled = cancel(store, subs)
    for sub in subs:
        console.print(f"cancelled submission {sub['id']} ({sub['executor']}): "
                      f"{', '.join(x for x in cancelled) or 'no job left to cancel'}")
    console.print(f"runs that had finished keep their records; `bench status --suite {name}` shows the rest")
    return 0


# ------------------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from .report import FORMATS, build_report, published_notes, rich_table, write_report
    from .store import Store
    from .suite import load_suite

    suite = load_suite(args.suite)
    store = Store(args.results)
    formats = list(FORMATS) if args.format == "all" else [f.strip() for f in args.format.split(",")]
    for f in formats:
        if f not in FORMATS:
            raise UserError(f"--format {args.format!r}: choose from {', '.join(FORMATS)}, "
                            "a comma-separated list, or all")
    report = build_report(store, suite, args.stage, compare_published=args.compare_published)
    if report.mean.empty:
        raise UserError(f"nothing to report: {report.notes[0]}. Run `bench run --suite {suite.name}` "
                        "first, or pass --results DIR")
    console.print(rich_table(report))
    for line in published_notes(report):
        console.print(escape(line))
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    if report.missing:
        console.print(f"[yellow]missing cells[/] ({len(report.missing)}): "
                      + ", ".join(f"{m}/{t}" for m, t in report.missing)
                      + "; means that need them are shown as missing")
    out = Path(args.out) if args.out else store.root / suite.name
    written = write_report(report, out, formats)
    if args.plots:
        from .plots import make_plots

        written += make_plots(report, out / "plots")
    for path in written:
        console.print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------- data check
def cmd_data_check(args) -> int:
    from rich.table import Table

    from . import data as data_mod
    from .suite import load_suite

    suite = load_suite(args.suite)
    root = data_mod.resolve_data_root(suite, args.data_root)
    tasks = suite.select_tasks(args.tasks.split(",") if args.tasks else None)
    splits = list(dict.fromkeys(s for pair in suite.splits.values() for s in pair))
    table = Table(title=f"{suite.name} data under {root}")
    cols = ("task", "split", "listed", "found", "missing", "unreadable", "bad labels", "bad lines",
            "classes")
    for col in cols:
        table.add_column(col, justify="left" if col in ("task", "split") else "right")
    problems = []
    for task in tasks:
        try:
            rows = data_mod.check_task(suite, task, root, splits, decode=not args.no_decode)
        except UserError as exc:
            problems.append(str(exc))
            table.add_row(task.name, "-", *["-"] * 7)
            continue
        for r in rows:
            bad = r["missing"] or r["unreadable"] or r["bad_labels"] or r["bad_lines"] or \
                (r["problems"] and not r["listed"])
            style = "red" if bad else ""
            table.add_row(r["task"], r["split"], str(r["listed"]), str(r["found"]), str(r["missing"]),
                          str(r["unreadable"]), str(r["bad_labels"]), str(r["bad_lines"]),
                          f"{r['classes']}/{task.num_classes}", style=style)
            problems.extend(f"{r['task']}/{r['split']}: {p}" for p in r["problems"])
    console.print(table)
    for p in problems:
        err_console.print(f"[red]problem[/]: {escape(p)}")
    if problems:
        err_console.print(f"{len(problems)} problems found")
        return 1
    console.print("[green]all splits readable[/]")
    return 0


# -------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="peftbench: benchmark PEFT methods on "
                                "vision Transformers (VTAB-1k, FGVC, demo).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def results_opt(sp):
        sp.add_argument("--results", default=default_results_root(),
                        help="results root (default: ./results or $PEFTBENCH_RESULTS)")

    r = sub.add_parser("run", help="run methods on a suite (skips runs already recorded ok)")
    r.add_argument("--suite", required=True, help="demo, vtab1k, fgvc, or a path to a suite .toml")
    r.add_argument("--methods", default="all", help="comma-separated methods or 'all' (default)")
    r.add_argument("--tasks", help="comma-separated tasks (names or aliases; default: all)")
    r.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    r.add_argument("--protocol", choices=("fixed", "vtab"),
                   help="vtab: tune over each method's grid on the tune split, then final with the "
                        "best point for every seed; fixed: one stage with the given hyperparameters "
                        "(default: the suite's; vtab for vtab1k and fgvc, fixed for the demo)")
    r.add_argument("--stage", help="with --protocol fixed: final (default) or tune")
    r.add_argument("--data-root", help="folder with the suite's task folders (the demo makes its own)")
    r.add_argument("--backbone", help="timm model name (default: the suite's)")
    r.add_argument("--checkpoint", help="local weights for the backbone: .npz, .pth or .safetensors")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a hyperparameter for every method (lr=0.1) or one (full.lr=1e-4)")
    r.add_argument("--force", action="store_true", help="rerun runs already recorded ok")
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    r.add_argument("--workers", type=int, default=0,
                   help="threads that decode each split once (default 0: as many as torch threads), and "
                        "loader processes for a split too large to keep in memory")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: the cores this process may use)")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 autocast on CUDA, fp32 on the CPU")
    r.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    r.add_argument("--plugin", action="append", metavar="FILE.py", help="register methods from a file")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--checkpoint-interval", type=float, default=120.0, metavar="SECONDS",
                   help="save a run's epoch checkpoint at most this often, so a killed or preempted run "
                        "resumes (default 120; 0: after every epoch)")
    results_opt(r)
    c = r.add_argument_group("cluster (see the README's Cluster section)")
    c.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                   help="local: this process, one run after another (default); slurm: a SLURM job array "
                        "through submitit; submitit-local: parallel processes on this machine")
    c.add_argument("--partition", help="SLURM partition")
    c.add_argument("--gpus-per-job", type=int, help="GPUs per array task (default 0)")
    c.add_argument("--cpus-per-job", type=int, help="CPUs per array task, also its torch threads (default 2)")
    c.add_argument("--mem", help="memory per array task, as SLURM's --mem (e.g. 32G)")
    c.add_argument("--time", type=int, metavar="MINUTES", help="time limit per array task (default 240); "
                   "a task that reaches it is requeued and resumes from its checkpoint")
    c.add_argument("--array-parallelism", type=int, help="array tasks running at once (default 64)")
    c.add_argument("--account", help="SLURM account")
    c.add_argument("--qos", help="SLURM QOS")
    c.add_argument("--constraint", help="SLURM node constraint")
    c.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE",
                   help="any other sbatch option, passed to submitit's slurm_additional_parameters")
    c.add_argument("--chunk", type=int, metavar="N", help="runs per array task, one after another (default 1)")
    c.add_argument("--wait", action="store_true", help="block with a live table until the array is done")
    c.add_argument("--config", help="config file with a [slurm] section of defaults "
                   "(default: $PEFTBENCH_CONFIG or ~/.config/peftbench/config.toml)")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="registered methods with their defaults, and suites with their tasks")
    ls.add_argument("what", nargs="?", default="all", choices=("all", "methods", "suites"))
    ls.add_argument("--plugin", action="append", metavar="FILE.py", help="register methods from a file")
    ls.set_defaults(func=cmd_list)

    st = sub.add_parser("status", help="ok / failed / running / pending runs per suite x method x task")
    st.add_argument("--suite", help="one suite (default: every suite under the results root)")
    st.add_argument("--failed", action="store_true", help="list each failed run with its error and log")
    results_opt(st)
    st.set_defaults(func=cmd_status)

    cn = sub.add_parser("cancel", help="cancel the jobs of a submission (the latest by default)")
    cn.add_argument("--suite", required=True)
    cn.add_argument("--submission", help="a submission id (see `bench status`); default: the latest")
    cn.add_argument("--all", action="store_true", help="every submission of the suite")
    results_opt(cn)
    cn.set_defaults(func=cmd_cancel)

    rp = sub.add_parser("report", help="paper-style table (terminal, Markdown, LaTeX, CSV) and plots")
    rp.add_argument("--suite", required=True)
    rp.add_argument("--stage", default="final")
    rp.add_argument("--format", default="all", help="md, latex, csv, a comma-separated list, or all (default)")
    rp.add_argument("--compare-published", action="store_true",
                    help="add the VPT paper's rows and our difference to them")
    rp.add_argument("--plots", action="store_true", help="also write seaborn figures (PNG and PDF)")
    rp.add_argument("--out", help="folder for the table files (default: <results>/<suite>/)")
    results_opt(rp)
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("data", help="data tools")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    dc = dsub.add_parser("check", help="check a data root against a suite: files, images, labels")
    dc.add_argument("--suite", required=True)
    dc.add_argument("--data-root", help="folder with the suite's task folders (the demo makes its own)")
    dc.add_argument("--tasks", help="comma-separated tasks (default: all)")
    dc.add_argument("--no-decode", action="store_true", help="check that images exist, do not decode them")
    dc.set_defaults(func=cmd_data_check)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        code = 2
    except KeyboardInterrupt:
        err_console.print("interrupted; finished runs are recorded, run the same command to go on")
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
