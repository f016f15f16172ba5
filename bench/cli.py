"""`bench`: run suites, list methods and suites, show status, make reports, check data.

This module parses arguments and renders what the others compute: the run flow is
`bench.campaign`, run states `bench.states`, tables `bench.reports`, data checks `bench.data`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .errors import UserError

console = Console(highlight=False)
if not console.is_terminal and not os.environ.get("COLUMNS"):  # logs and pipes: no 80-column folding
    console = Console(highlight=False, width=200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 42,44,82") from None
    if not seeds:
        raise UserError("--seeds is empty; expected comma-separated integers, e.g. --seeds 42")
    return seeds


def _problems(store) -> None:
    """Files of the results root that could not be read: named, never fatal."""
    for line in store.problems:
        err_console.print(f"[yellow]warning[/]: {escape(line)}")


def _load_plugins(args) -> None:
    from .registry import load_plugin

    for path in getattr(args, "plugin", None) or []:
        load_plugin(path)


# ---------------------------------------------------------------------------------------- run
class RunView:
    """Renders a campaign: progress bars and one line per finished run in this process; the
    submission and a live table of a followed array."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress = None
        self.live = None

    def started(self, c) -> None:
        where = (f"on {c.context.engine.device} ({c.threads} threads)" if c.executor.in_process
                 else f"executor {c.executor.name}")
        console.print(f"[bold]{c.suite.name}[/]: {len(c.methods)} methods x {len(c.tasks)} tasks x "
                      f"{len(c.seeds)} seeds, protocol {c.protocol} {where}; records in "
                      f"{c.store.root}/{c.suite.name}")

    def stage(self, stage, specs, c) -> None:
        train, evaluate = c.suite.splits[stage]
        seeds = f"seed {c.seeds[0]}, " if stage == "tune" else ""
        console.print(f"{stage} stage: {len(specs)} runs ({seeds}{train} -> {evaluate})")

    def selected(self, method, task, point) -> None:
        console.print(f"selected for {method}/{task}: {point}")

    def run_done(self, spec, record) -> None:
        if self.progress is not None:
            self.progress.update(self.overall, advance=1)
        if record is None:
            return
        out = self.progress.console if self.progress is not None else console
        what = f"{spec.method:<12} {spec.task:<18} seed {spec.seed:<5}"
        if spec.stage != "final":
            what += f" {spec.stage} lr={spec.hparams.get('lr')}"
        if record["status"] == "ok":
            m = record["metrics"]
            out.print(f"[green]ok[/]     {what} top-1 {m['top1']:5.1f}%  {m['train_seconds'] + m['eval_seconds']:6.1f}s")
        else:
            out.print(f"[red]failed[/] {what} {escape(str(record['error']))}")

    def submitted(self, launch, c) -> None:
        sub = launch.submission
        first = sub.jobs[0].job_id.split("_")[0]
        console.print(f"submitted {len(launch.specs)} runs as {len(sub.jobs)} array tasks (job {first}, "
                      f"submission {sub.id}); logs in {sub.folder}")

    def watching(self, launch, done, total, counts) -> None:
        from rich.live import Live
        from rich.table import Table

        table = Table(title=f"submission {launch.submission.id}: {done}/{total} array tasks done")
        for col in ("stage", "method", "ok", "failed", "running", "queued"):
            table.add_column(col, justify="left" if col in ("stage", "method") else "right")
        for (stage, method), n in sorted(counts.items()):
            table.add_row(stage, method, str(n["ok"]), f"[red]{n['failed']}[/]" if n["failed"] else "0",
                          str(n["running"]), str(n["queued"] + n["pending"]))
        if self.live is None:
            self.live = Live(table, console=console, refresh_per_second=1, transient=not console.is_terminal)
            self.live.start()
        self.live.update(table)
        if done == total:
            self.live.stop()
            self.live = None
            console.print(table)


def cmd_run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .campaign import Request, execute, preflight
    from .reports.table import build_report, rich_table

    from .executors.submitit import parse_extra

    _load_plugins(args)  # an executor may come from a plugin
    options = {"partition": args.partition, "gpus_per_job": args.gpus_per_job, "cpus_per_job": args.cpus_per_job,
               "mem": args.mem, "time": args.time, "array_parallelism": args.array_parallelism,
               "account": args.account, "qos": args.qos, "constraint": args.constraint,
               "extra": parse_extra(args.slurm_extra), "chunk": args.chunk, "wait": args.wait,
               "config": args.config}
    req = Request(suite=args.suite, methods=args.methods, tasks=args.tasks.split(",") if args.tasks else None,
                  seeds=_seeds(args.seeds) if args.seeds else None, protocol=args.protocol, stage=args.stage,
                  data_root=args.data_root, backbone=args.backbone, checkpoint=args.checkpoint,
                  overrides=args.set or [], force=args.force, results=args.results, device=args.device,
                  threads=args.threads, workers=args.workers, precision=args.precision, compile=args.compile,
                  checkpoint_interval=args.checkpoint_interval, eval_every=args.eval_every, keep_weights=args.keep_weights, plugins=args.plugin or [],
                  executor=args.executor, executor_options=options, wait=args.wait,
                  command="bench " + " ".join(sys.argv[1:]))
    view = RunView(args.quiet)
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=args.quiet, transient=True)
    with bars:
        data_bar = None

        def data_progress(what, done, total):
            nonlocal data_bar
            if data_bar is None:
                data_bar = bars.add_task(what, total=total)
            bars.update(data_bar, completed=done, description=what)

        campaign = preflight(req, progress=data_progress)
        if data_bar is not None:
            bars.remove_task(data_bar)
    if campaign.executor.in_process:
        from .measure import cpu_contention

        busy = None if str(campaign.context.engine.device).startswith("cuda") else cpu_contention(campaign.threads)
        if busy:
            err_console.print(f"[yellow]warning[/]: {escape(busy)}")
        total = len(campaign.base) + len(campaign.tune)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=args.quiet) as progress:
            view.progress, view.overall = progress, progress.add_task("runs", total=total)
            campaign.context.engine.progress = None if args.quiet else progress
            result = execute(campaign, view)
        o = result.outcome
        console.print(f"{len(o.ran)} ran, {len(o.skipped)} already done, {len(o.busy)} running elsewhere, "
                      f"{len(o.failed)} failed")
    else:
        result = execute(campaign, view)
        if not result.launches:
            console.print("nothing to submit: every run is ok or already queued "
                          f"(`bench status --suite {campaign.suite.name}` shows them)")
    if result.waiting:
        console.print(f"[yellow]final stage waits[/] for the tune runs of {len(result.waiting)} cells "
                      f"({'; '.join(result.waiting)}); run the same command again once they are ok "
                      "(`bench status` shows them)")
    if not campaign.executor.in_process and not args.wait:
        name = campaign.suite.name
        console.print(f"follow it: bench status --suite {name}; stop it: bench cancel --suite {name}")
        return 0
    report = build_report(campaign.store, campaign.suite, campaign.report_stage)
    if not report.mean.empty:
        console.print(rich_table(report.restrict({m.name for m in campaign.methods}), width=console.width))
    for spec, error in result.outcome.failed:
        err_console.print(f"[red]failed[/] {spec.stage} {spec.method}/{spec.task}/seed {spec.seed}: "
                          f"{escape(str(error))} (record: {campaign.store.record_path(spec)})")
    _problems(campaign.store)
    return result.exit_code


# --------------------------------------------------------------------------------------- list
def cmd_list(args) -> int:
    from rich.table import Table

    from .method import ENGINE_SETTINGS, all_methods
    from .suite import builtin_suites, load_suite

    _load_plugins(args)
    what = args.what
    if what in ("all", "methods"):
        table = Table(title="methods")
        for col in ("method", "aliases", "what it trains", "backbones", "source"):
            table.add_column(col)
        for m in all_methods().values():
            table.add_row(m.name, ", ".join(m.aliases), m.summary, m.backbones, m.paper or m.origin)
        console.print(table)
        settings = Table(title="settings (`--set key=value`, `--set method.key=value`)")
        for col in ("method", "setting", "type", "default", "allowed", "meaning"):
            settings.add_column(col)
        for m in all_methods().values():
            rows = [(k, s) for k, s in m.settings.items() if k not in ENGINE_SETTINGS or s.default !=
                    ENGINE_SETTINGS[k].default]
            for i, (key, s) in enumerate(rows):
                settings.add_row(m.name if i == 0 else "", key, s.type.__name__, repr(s.default), s.describe(),
                                 s.help, end_section=i == len(rows) - 1)
        for i, (key, s) in enumerate(ENGINE_SETTINGS.items()):
            settings.add_row("(every method)" if i == 0 else "", key, s.type.__name__, repr(s.default),
                             s.describe(), s.help)
        console.print(settings)
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

    from .executors.submitit import submissions
    from .states import STATES, suite_status
    from .store import Store
    from .suite import load_suite

    store = Store(args.results)
    if store.root.exists() and not store.root.is_dir():
        raise UserError(f"--results {store.root} is a file, not a results folder")
    suites = [load_suite(args.suite).name] if args.suite else store.suites()
    if not suites:
        console.print(f"no runs under {store.root}")
        return 0
    any_failed = False
    for name in suites:
        runs = suite_status(store, name)
        cells: dict[tuple[str, str], dict] = {}
        for r in runs:
            cell = cells.setdefault((r.spec.method, r.spec.task), {**{k: 0 for k in STATES}, "jobs": []})
            cell[r.state] += 1
            if r.state != "ok" and r.job is not None:
                cell["jobs"].append(r.job.job_id)
        table = Table(title=f"{name} · runs per cell")
        for col in ("method", "task", *STATES, "jobs not ok"):
            table.add_column(col, justify="right" if col in STATES else "left")
        totals = {k: 0 for k in STATES}
        for (method, task), c in sorted(cells.items()):
            for k in STATES:
                totals[k] += c[k]
            ids = list(dict.fromkeys(c["jobs"]))
            table.add_row(method, task, str(c["ok"]), f"[red]{c['failed']}[/]" if c["failed"] else "0",
                          *(str(c[k]) for k in STATES[2:]),
                          ", ".join(ids[:4]) + (f" +{len(ids) - 4}" if len(ids) > 4 else ""))
        console.print(table)
        console.print(f"{name}: " + ", ".join(f"{v} {k}" for k, v in totals.items()))
        subs = submissions(store, name)
        if subs:
            last = subs[-1]
            console.print(f"latest submission {last['id']} ({last['executor']}, {len(last['jobs'])} array "
                          f"tasks): {last['folder']}")
        failures = [r for r in runs if r.state == "failed"]
        if failures:
            any_failed = True
            if not args.failed:
                console.print(f"[red]{len(failures)} failed[/]: `bench status --suite {name} --failed` "
                              "shows why; `bench run` with the same arguments retries only those")
        if args.failed:
            for r in failures:
                console.print(f"[red]failed[/] {r.spec.stage} {r.spec.method}/{r.spec.task} seed {r.spec.seed}: "
                              f"{escape(str(r.why))}")
                if r.record is not None:
                    console.print(f"  record: {r.record['_path']}")
                log = (r.record or {}).get("job", {}).get("stderr") or (r.job.stderr if r.job else None)
                if log:
                    console.print(f"  log:    {log}")
    _problems(store)
    return 1 if args.failed and any_failed else 0


def cmd_cancel(args) -> int:
    from .executors import EXECUTORS
    from .executors.submitit import submissions
    from .store import Store
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
    for sub in subs:
        cancelled = EXECUTORS.get(sub["executor"]).cancel([sub])
        console.print(f"cancelled submission {sub['id']} ({sub['executor']}): "
                      f"{', '.join(cancelled) or 'no job left to cancel'}")
    console.print(f"runs that had finished keep their records; `bench status --suite {name}` shows the rest")
    return 0


# ------------------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from .reports import parse_formats, write_report
    from .reports.table import build_report, published_notes, records_frame, rich_table
    from .store import Store
    from .suite import load_suite

    _load_plugins(args)
    suite = load_suite(args.suite)
    store = Store(args.results)
    if store.root.exists() and not store.root.is_dir():
        raise UserError(f"--results {store.root} is a file, not a results folder")
    formats = parse_formats(args.format)
    out = Path(args.out) if args.out else store.root / suite.name
    if out.exists() and not out.is_dir():
        raise UserError(f"the report folder {out} is a file; pass --out DIR")
    records = records_frame(store, suite.name)  # read once, for the table and the tune grid
    report = build_report(store, suite, args.stage, compare_published=args.compare_published, records=records,
                          diagnostic=args.diagnostic)
    if report.mean.empty:
        _problems(store)
        raise UserError(f"nothing to report: {report.notes[0]}. Run `bench run --suite {suite.name}` "
                        "first, or pass --results DIR")
    if "html" in formats:  # the page also lists failed runs and inlines the figures of --plots
        from .reports.table import failed_records

        report.failed = failed_records(store, suite.name, args.stage)
        if args.plots:
            from .reports.html import figures_svg

            report.figure_svgs = figures_svg(report)
    written = write_report(report, out, formats + (["plots"] if args.plots else []))
    console.print(rich_table(report, width=console.width))
    console.print(escape(report.protocol))
    for line in published_notes(report):
        console.print(escape(line))
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    if report.missing:
        console.print(f"[yellow]missing cells[/] ({len(report.missing)}): "
                      + ", ".join(f"{m}/{t}" for m, t in report.missing)
                      + "; means that need them are shown as missing")
    from .reports.stats import compare, ranks

    ranked = ranks(report)
    if ranked is not None and ranked.tasks:
        console.print(escape(ranked.line()))
    if args.compare:
        names = [n.strip() for n in args.compare.split(",")]
        if len(names) != 2 or not all(names):
            raise UserError(f"--compare {args.compare!r}: name two methods, e.g. --compare lion,vpt-deep")
        comparison = compare(report, *names)
        console.print(escape(comparison.summary()))
        stem = out / f"{suite.name}_{args.stage}_{names[0]}_vs_{names[1]}"
        out.mkdir(parents=True, exist_ok=True)
        for fmt, suffix, render in (("md", "md", comparison.markdown), ("latex", "tex", comparison.latex)):
            if fmt == "md" or fmt in formats:  # the Markdown always: it is the comparison's own file
                path = stem.with_suffix(f".{suffix}")
                path.write_text(render(), encoding="utf-8")
                written.append(path)
    if args.hparams:
        from .reports.hparams import write_hparams

        paths, chosen = write_hparams(records, suite, out)
        if chosen.empty:
            console.print(f"[yellow]note[/]: no tune-stage records for {suite.name}: its hyperparameters were "
                          f"given, not selected (run `bench run --suite {suite.name} --protocol vtab` to select "
                          "them on validation)")
        written += paths
    for path in written:
        console.print(f"wrote {path}")
    _problems(store)
    return 0


# -------------------------------------------------------------------------------------- export
def cmd_export(args) -> int:
    from .export import export
    from .store import Store
    from .suite import load_suite

    _load_plugins(args)
    suite = load_suite(args.suite)
    store = Store(args.results)
    if not store.root.is_dir():
        raise UserError(f"--results {store.root} is not a results folder")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    for path in export(store, suite, args.method, args.task, args.seed, args.stage, out, args.merge):
        console.print(f"wrote {path}")
    _problems(store)
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
    problems, converted, warnings = [], [], []
    for task in tasks:
        try:
            rows = data_mod.check_task(suite, task, root, splits, decode=not args.no_decode)
        except UserError as exc:
            problems.append(str(exc))
            table.add_row(task.name, "-", *["-"] * 7)
            continue
        for r in rows:
            bad = r["missing"] or r["unreadable"] or r["bad_labels"] or r["bad_lines"] or r["problems"]
            style = "red" if bad else ""
            table.add_row(r["task"], r["split"], str(r["listed"]), str(r["found"]), str(r["missing"]),
                          str(r["unreadable"]), str(r["bad_labels"]), str(r["bad_lines"]),
                          f"{r['classes']}/{task.num_classes}", style=style)
            problems.extend(f"{r['task']}/{r['split']}: {p}" for p in r["problems"])
            converted.extend(f"{r['task']}/{r['split']}: {c}" for c in r.get("converted", []))
        problems.extend(data_mod.class_coverage_problems(task, rows))
        warnings.extend(data_mod.split_size_warnings(suite, task, rows))
    console.print(table)
    for line in converted:
        console.print(f"[yellow]converted[/]: {escape(line)}")
    for line in warnings:
        err_console.print(f"[yellow]warning[/]: {escape(line)}")
    if args.manifest is not None:
        problems.extend(_check_manifests(suite, tasks, root, args.manifest))
    for p in problems:
        err_console.print(f"[red]problem[/]: {escape(p)}")
    if problems:
        err_console.print(f"{len(problems)} problems found")
        return 1
    console.print("[green]all splits readable[/]" + (" and identical to the manifests, pixel for pixel"
                                                     if args.manifest is not None else ""))
    return 0


SHOWN_DIFFERENCES = 20


def _check_manifests(suite, tasks, root: Path, given: str) -> list[str]:
    """Every image of each task compared with a manifest; the problems to report (at most
    SHOWN_DIFFERENCES differences per task, all of them in manifest-differences.csv)."""
    import csv

    from . import data as data_mod
    from .databuild.manifest import compare, manifest_for, read_manifest

    problems, every = [], []
    with _bars() as bars:
        progress = _split_progress(bars)
        for task in tasks:
            try:
                folder = data_mod.task_dir(suite, task, root)
                path = manifest_for(folder, (task.folder_name, task.name, *task.aliases), given,
                                    single_task=len(tasks) == 1)
                entries = read_manifest(path)
                tree = {}
                for split in dict.fromkeys(e.split for e in entries):
                    try:
                        tree[split] = data_mod.read_split(suite, task, root, split, strict=False).items
                    except UserError:
                        pass  # reported by compare as a split the tree lacks
                compared, diffs = compare(task.name, entries, tree, workers=data_mod.default_workers(),
                                          progress=lambda t, d, n: progress(t, "manifest", d, n))
            except UserError as exc:
                problems.append(str(exc))
                continue
            console.print(f"{task.name}: {compared} images compared with {path}: "
                          + ("[green]identical[/]" if not diffs else f"[red]{len(diffs)} differences[/]"))
            problems.extend(d.line() for d in diffs[:SHOWN_DIFFERENCES])
            if len(diffs) > SHOWN_DIFFERENCES:
                problems.append(f"{task.name}: and {len(diffs) - SHOWN_DIFFERENCES} more differences "
                                "(all listed in manifest-differences.csv)")
            every.extend(diffs)
    if len(every) > SHOWN_DIFFERENCES:
        out = Path("manifest-differences.csv")
        with open(out, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(("task", "split", "index", "difference", "detail"))
            w.writerows((d.task, d.split, d.index, d.what, d.detail) for d in every)
        console.print(f"every difference: {out.resolve()}")
    return problems


def _bars():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _split_progress(bars):
    """A progress callback with one bar per (task, split)."""
    ids = {}

    def update(task, split, done, total):
        key = (task, split)
        if key not in ids:
            ids[key] = bars.add_task(f"{task} {split}", total=total or None)
        bars.update(ids[key], completed=done, total=total or None)
    return update


def cmd_data_build(args) -> int:
    from rich.table import Table

    from .suite import load_suite

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    suite = load_suite(args.build_what)
    tasks = [t.name for t in suite.select_tasks(args.tasks.split(",") if args.tasks else None)]
    if args.build_what == "vtab1k":
        from .databuild import vtab1k

        if args.workers < 1:
            raise UserError(f"--workers {args.workers}: pass a positive number of threads")
        tfds_dir = Path(args.tfds_dir).expanduser() if args.tfds_dir else None
        with _bars() as bars:
            results = vtab1k.build(out, tasks, tfds_dir, args.format, args.workers,
                                   progress=_split_progress(bars), log=bars.console.print)
    else:
        from .databuild import fgvc

        with _bars() as bars:
            results = fgvc.build(Path(args.raw).expanduser(), Path(args.splits).expanduser(), out, tasks,
                                 copy=args.copy, progress=_split_progress(bars), log=bars.console.print)
    table = Table(title=f"{suite.name} data built under {out}")
    for col in ("task", "status", "images", "size", "time"):
        table.add_column(col, justify="left" if col in ("task", "status") else "right")
    style = {"built": "green", "present": "", "manual": "yellow", "failed": "red"}
    for r in results:
        table.add_row(r.task, r.status, str(r.images or "-"), f"{r.bytes / 2**20:.1f} MiB" if r.bytes else "-",
                      f"{r.seconds:.0f} s" if r.seconds else "-", style=style.get(r.status, ""))
    console.print(table)
    for r in results:
        for note in r.notes:
            console.print(f"[yellow]note[/] {escape(r.task)}: {escape(note)}")
    bad = [r for r in results if r.status in ("manual", "failed")]
    for r in bad:
        err_console.print(f"[red]{r.status}[/]: {escape(r.detail)}")
    if bad:
        err_console.print(f"{len(results) - len(bad)} of {len(results)} tasks are ready in {out}; "
                          f"{len(bad)} need the steps above, then the same command again (built tasks are kept)")
        return 1
    console.print(f"[green]{len(results)} tasks ready[/] in {out}: bench data check --suite {suite.name} "
                  f"--data-root {out} --manifest")
    return 0


# -------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .campaign import default_results_root

    p = argparse.ArgumentParser(prog="bench", description="peftbench: benchmark PEFT methods on "
                                "vision Transformers (VTAB-1k, FGVC, demo).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def results_opt(sp):
        sp.add_argument("--results", default=default_results_root(),
                        help="results root (default: ./results or $PEFTBENCH_RESULTS)")

    def plugin_opt(sp):
        sp.add_argument("--plugin", action="append", metavar="FILE.py",
                        help="register methods (or formats, executors, report writers) from a file")

    r = sub.add_parser("run", help="run methods on a suite (skips runs already recorded ok)")
    r.add_argument("--suite", required=True, help="demo, vtab1k, fgvc, lion-paper, or a path to a suite .toml")
    r.add_argument("--methods", help="comma-separated methods, or all (default: the suite's `methods`, "
                                      "else all)")
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
    r.add_argument("--force", action="store_true",
                   help="rerun runs already recorded ok (the records they replace are kept in superseded/)")
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    r.add_argument("--workers", type=int, default=0,
                   help="threads that decode each split once (default 0: as many as torch threads), and "
                        "loader processes for a split too large to keep in memory")
    r.add_argument("--threads", type=int, help="torch CPU threads (default: the cores this process may use)")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 autocast on CUDA, fp32 on the CPU")
    r.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    plugin_opt(r)
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--checkpoint-interval", type=float, default=120.0, metavar="SECONDS",
                   help="save a run's epoch checkpoint at most this often, so a killed or preempted run "
                        "resumes (default 120; 0: after every epoch)")
    r.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="final stage: also record top-1 on the test split every N epochs, as a diagnostic "
                        "that nothing selects on (`bench report --diagnostic`); runs already recorded are "
                        "not rerun (add --force)")
    r.add_argument("--keep-weights", action="store_true",
                   help="keep each run's trained state (what the method trains, as safetensors) beside its "
                        "record, for `bench export`; runs already recorded are not rerun (add --force)")
    results_opt(r)
    c = r.add_argument_group("cluster (see the README's Cluster section)")
    c.add_argument("--executor", default="local",
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

    ls = sub.add_parser("list", help="registered methods with their settings, and suites with their tasks")
    ls.add_argument("what", nargs="?", default="all", choices=("all", "methods", "suites"))
    plugin_opt(ls)
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
                    help="add the published rows (with their source and selection) and our difference to them")
    rp.add_argument("--plots", action="store_true", help="also write seaborn figures (PNG and PDF)")
    rp.add_argument("--compare", metavar="A,B",
                    help="two methods task by task: differences with bootstrap intervals over seeds, and the "
                         "Wilcoxon signed-rank test over tasks")
    rp.add_argument("--hparams", action="store_true",
                    help="also write the hyperparameters the tune stage selected per method x task (with the "
                         "runner-up) and the whole tune grid")
    rp.add_argument("--diagnostic", action="store_true",
                    help="add what the best test epoch would have reported (from runs made with --eval-every), "
                         "beside our last-epoch numbers: the optimism of test-epoch selection, measured")
    rp.add_argument("--out", help="folder for the table files (default: <results>/<suite>/)")
    plugin_opt(rp)
    results_opt(rp)
    rp.set_defaults(func=cmd_report)

    ex = sub.add_parser("export", help="write what one run trained (bench run --keep-weights) as safetensors, "
                                       "or with --merge a plain timm checkpoint")
    ex.add_argument("--suite", required=True)
    ex.add_argument("--method", required=True)
    ex.add_argument("--task", required=True, help="a task name or alias")
    ex.add_argument("--seed", type=int, help="the run's seed (needed when the task has records of several)")
    ex.add_argument("--stage", default="final")
    ex.add_argument("--out", required=True, help="folder for the files")
    ex.add_argument("--merge", action="store_true",
                    help="also fold the update into the backbone: a timm checkpoint with the head (LoRA, SSF, "
                         "RepAdapter, FacT)")
    plugin_opt(ex)
    results_opt(ex)
    ex.set_defaults(func=cmd_export)

    d = sub.add_parser("data", help="data tools")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    dc = dsub.add_parser("check", help="check a data root against a suite: files, images, labels")
    dc.add_argument("--suite", required=True)
    dc.add_argument("--data-root", help="folder with the suite's task folders (the demo makes its own)")
    dc.add_argument("--tasks", help="comma-separated tasks (default: all)")
    dc.add_argument("--no-decode", action="store_true", help="check that images exist, do not decode them")
    dc.add_argument("--manifest", nargs="?", const="", metavar="PATH",
                    help="also compare every image, pixel for pixel, with a manifest: alone, each task's own "
                         "manifest.csv; a folder of <task>/manifest.csv (another lab's); or one manifest.csv "
                         "(with one --tasks)")
    dc.set_defaults(func=cmd_data_check)

    db = dsub.add_parser("build", help="build a suite's data folders from their sources (VTAB-1k from "
                         "TensorFlow Datasets, FGVC from the official archives)")
    bsub = db.add_subparsers(dest="build_what", required=True, metavar="SUITE")
    bv = bsub.add_parser("vtab1k", help="the 19 VTAB-1k tasks from TFDS (needs pip install -e \".[data]\")")
    bv.add_argument("--out", required=True, help="folder for the task folders (the --data-root of bench run)")
    bv.add_argument("--tasks", help="comma-separated tasks (default: all 19)")
    bv.add_argument("--tfds-dir", help="TFDS's data folder: downloads, prepared datasets and the manual/ "
                    "folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    bv.add_argument("--format", default="png", choices=["png", "jpeg"],
                    help="png (default, lossless: the pixels TFDS holds) or jpeg (what NOAH's get_vtab1k.py "
                         "writes: PIL's quality 75)")
    bv.add_argument("--workers", type=int, default=2, help="threads encoding images (default 2)")
    bv.set_defaults(func=cmd_data_build)
    bf = bsub.add_parser("fgvc", help="the five FGVC datasets from their official archives and VPT's splits")
    bf.add_argument("--raw", required=True, help="folder holding the extracted archives (one folder each)")
    bf.add_argument("--splits", required=True, help="folder holding VPT's json split files, one folder per "
                    "dataset")
    bf.add_argument("--out", required=True, help="folder for the dataset folders (the --data-root of bench run)")
    bf.add_argument("--tasks", help="comma-separated datasets (default: all five)")
    bf.add_argument("--copy", action="store_true", help="copy the images (default: hard links where the "
                    "file system allows, else copies)")
    bf.set_defaults(func=cmd_data_build)
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
