"""Tables from run records: one row per method, one column per task, group means, both means.

Only `ok` records of the chosen stage count. Several seeds give mean and std. A missing cell is
shown as missing and makes the means that need it missing too: an average over fewer tasks is
never reported as if it were the whole suite's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .store import Store
from .suite import Suite

MISSING = "—"


@dataclass
class Report:
    suite: Suite
    stage: str
    mean: pd.DataFrame            # method x task (+ group and overall means, params)
    std: pd.DataFrame             # method x task, std over seeds (NaN for a single seed)
    seeds: pd.DataFrame           # method x task, number of seeds
    missing: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def mean_columns(self) -> list[str]:
        return [f"{g.title()}" for g in self.suite.groups if len(self.suite.groups) > 1] + \
            ["Mean (tasks)", "Mean (groups)"]


def records_frame(store: Store, suite: str) -> pd.DataFrame:
    rows = []
    for rec in store.records(suite):
        if rec.get("status") != "ok":
            continue
        spec, m = rec["spec"], rec.get("metrics", {})
        rows.append({
            "suite": spec["suite"], "method": spec["method"], "task": spec["task"],
            "seed": spec["seed"], "stage": spec["stage"], "backbone": spec["backbone"],
            "hparams": json.dumps(spec["hparams"], sort_keys=True), "run_id": rec["run_id"],
            "finished_at": rec.get("finished_at", ""), **{k: v for k, v in m.items()},
        })
    return pd.DataFrame(rows)


def build_report(store: Store, suite: Suite, stage: str = "final") -> Report:
    df = records_frame(store, suite.name)
    notes: list[str] = []
    if not df.empty:
        df = df[df["stage"] == stage]
    if df.empty:
        empty = pd.DataFrame()
        return Report(suite, stage, empty, empty, empty, [], [f"no ok records for suite "
                      f"{suite.name!r} stage {stage!r} under {store.root}"])
    # One configuration per cell: where a cell was run with several (e.g. a later --set), the
    # most recently finished configuration is the one reported, and the report says so.
    latest = df.groupby(["method", "task", "backbone", "hparams"])["finished_at"].max().reset_index()
    latest = latest.sort_values("finished_at").groupby(["method", "task"]).tail(1)
    dup = df.groupby(["method", "task"])[["hparams", "backbone"]].nunique()
    for (method, task), n in dup.max(axis=1).items():
        if n > 1:
            notes.append(f"{method}/{task}: records with {n} configurations; reporting the latest")
    df = df.merge(latest[["method", "task", "backbone", "hparams"]], on=["method", "task", "backbone", "hparams"])

    tasks = [t.name for t in suite.tasks]
    methods = list(dict.fromkeys(sorted(df["method"])))
    grouped = df.groupby(["method", "task"])["top1"]
    mean = grouped.mean().unstack().reindex(index=methods, columns=tasks)
    std = grouped.std().unstack().reindex(index=methods, columns=tasks)
    seeds = grouped.count().unstack().reindex(index=methods, columns=tasks).fillna(0).astype(int)
    missing = [(m, t) for m in methods for t in tasks if pd.isna(mean.loc[m, t])]

    table = mean.copy()
    group_cols = []
    for g in suite.groups:
        cols = [t.name for t in suite.tasks if t.group == g]
        name = g.title()
        table[name] = mean[cols].mean(axis=1, skipna=False)
        group_cols.append(name)
    if len(suite.groups) > 1:
        table["Mean (tasks)"] = mean[tasks].mean(axis=1, skipna=False)
        table["Mean (groups)"] = table[group_cols].mean(axis=1, skipna=False)
    else:
        table = table.drop(columns=group_cols)
        table["Mean (tasks)"] = mean[tasks].mean(axis=1, skipna=False)
        table["Mean (groups)"] = table["Mean (tasks)"]
    params = df.groupby("method")[["trainable_params", "trainable_params_no_head"]].mean()
    table["Params (M)"] = params["trainable_params"].reindex(methods) / 1e6
    table["Params no head (M)"] = params["trainable_params_no_head"].reindex(methods) / 1e6
    return Report(suite, stage, table, std, seeds, missing, notes)


def _fmt(value, std=None) -> str:
    if pd.isna(value):
        return MISSING
    if std is not None and not pd.isna(std):
        return f"{value:.1f} ± {std:.1f}"
    return f"{value:.1f}"


def _fmt_params(millions) -> str:
    if pd.isna(millions):
        return MISSING
    return f"{millions:.2f}" if millions >= 0.01 else f"{millions:.2g}"


def display_frame(report: Report) -> pd.DataFrame:
    """Strings as a paper shows them: accuracy with one decimal (± std over seeds)."""
    tasks = [t.name for t in report.suite.tasks]
    out = pd.DataFrame(index=report.mean.index)
    for t in tasks:
        out[t] = [_fmt(report.mean.loc[m, t], report.std.loc[m, t]) for m in report.mean.index]
    for col in report.mean.columns:
        if col in tasks or col == "Params no head (M)":
            continue
        if col == "Params (M)":
            out[col] = [_fmt_params(v) for v in report.mean[col]]
        else:
            out[col] = [_fmt(v) for v in report.mean[col]]
    out.index.name = "method"
    return out


def write_report(report: Report, out_dir: Path, formats: list[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    stem = f"{report.suite.name}_{report.stage}"
    if "md" in formats:
        path = out_dir / f"{stem}.md"
        text = (f"Top-1 accuracy (%) on {report.suite.name} ({report.stage} stage, eval split "
                f"{report.suite.splits[report.stage][1]}); mean ± std over seeds.\n\n"
                + display_frame(report).to_markdown() + "\n")
        if report.missing:
            text += "\nMissing cells: " + ", ".join(f"{m}/{t}" for m, t in report.missing) + "\n"
        path.write_text(text)
        written.append(path)
    if "csv" in formats:
        path = out_dir / f"{stem}.csv"
        frame = report.mean.copy()
        for t in report.std.columns:
            frame[f"{t} std"] = report.std[t]
            frame[f"{t} seeds"] = report.seeds[t]
        frame.index.name = "method"
        frame.to_csv(path, float_format="%.4f")
        written.append(path)
    return written


def rich_table(report: Report):
    from rich.table import Table

    frame = display_frame(report)
    table = Table(title=f"{report.suite.name} · top-1 (%) · {report.stage} stage", show_lines=False)
    table.add_column("method", style="bold")
    for col in frame.columns:
        table.add_column(col, justify="right")
    for method, row in frame.iterrows():
        table.add_row(method, *row.tolist())
    return table
