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

    device = _device(args.device)
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
    opts = EngineOptions(device=device, workers=args.workers, precision=args.precision, compile=args.compile)
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
    from .suite import load_suite

    store = Store(args.results)
    suites = [load_suite(args.suite).name] if args.suite else store.suites()
    if not suites:
        console.print(f"no runs under {store.root}")
        return 0
    for name in suites:
        planned = {s.run_id: s for s in store.planned_specs(name)}
        state: dict[tuple[str, str], dict[str, int]] = {}
        records = {r["run_id"]: r for r in store.records(name)}
        for run_id, rec in records.items():
            planned.setdefault(run_id, RunSpec.from_dict(rec["spec"]))
        for run_id, spec in planned.items():
            cell = state.setdefault((spec.method, spec.task), {"ok": 0, "failed": 0, "running": 0, "pending": 0})
            rec = records.get(run_id)
            if rec is not None and rec.get("status") == "ok":
                cell["ok"] += 1
            elif store.is_running(spec):
                cell["running"] += 1
            elif rec is not None:
                cell["failed"] += 1
            else:
                cell["pending"] += 1
        table = Table(title=f"{name} · runs per cell")
        for col in ("method", "task", "ok", "failed", "running", "pending"):
            table.add_column(col, justify="left" if col in ("method", "task") else "right")
        totals = {"ok": 0, "failed": 0, "running": 0, "pending": 0}
        for (method, task), c in sorted(state.items()):
            for k in totals:
                totals[k] += c[k]
            table.add_row(method, task, str(c["ok"]), f"[red]{c['failed']}[/]" if c["failed"] else "0",
                          str(c["running"]), str(c["pending"]))
        console.print(table)
        console.print(f"{name}: " + ", ".join(f"{v} {k}" for k, v in totals.items()))
    return 0


# ------------------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    from .report import FORMATS, build_report, rich_table, write_report
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
    results_opt(r)
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="registered methods with their defaults, and suites with their tasks")
    ls.add_argument("what", nargs="?", default="all", choices=("all", "methods", "suites"))
    ls.add_argument("--plugin", action="append", metavar="FILE.py", help="register methods from a file")
    ls.set_defaults(func=cmd_list)

    st = sub.add_parser("status", help="ok / failed / running / pending runs per suite x method x task")
    st.add_argument("--suite", help="one suite (default: every suite under the results root)")
    results_opt(st)
    st.set_defaults(func=cmd_status)

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
