"""`html`: one self-contained results page per suite and stage (`bench report --format html`).

Everything is inlined (styles, a few hundred lines of plain JavaScript, the data of every cell,
the figures as SVG with `--plots`), so the page works from a file or an email attachment, with
no server and no network. The table is rendered here, not by the script: without JavaScript it
is still the paper table; the script only sorts, filters, switches the metric shown and opens a
cell's details.
"""

from __future__ import annotations

import io
import json
import math
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import jinja2
import pandas as pd

from . import ReportWriter, register_writer
from .table import (FLAT, GROUPS, MISSING, PARAMS, Report, _fmt, _fmt_params, _label, group_names,
                    comparison_rows, fmt_extra, published_notes)

# metric -> (label in the toggle, record column, higher is better, unit, format)
METRICS = {
    "acc": ("top-1 (%)", "top1", True),
    "params": ("trainable parameters", "trainable_params", False),
    "memory": ("peak memory (MiB)", "peak_memory_mib", False),
    "time": ("train time (s)", "train_seconds", False),
    "throughput": ("train throughput (img/s)", "train_throughput", True),
}


def _count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return f"{n:.0f}"


def _text(metric: str, value, std=None) -> str:
    if value is None or pd.isna(value):
        return MISSING
    if metric == "acc":
        return _fmt(value, std)
    if metric == "params":
        return _count(value)
    if metric == "time":
        return f"{value:.1f}"
    return f"{value:.0f}"


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def metric_frames(report: Report) -> dict[str, pd.DataFrame]:
    """Per metric: method x (tasks, group means, both means). Accuracy is the report's own table;
    the costs are per-cell means over seeds, averaged over a group's tasks and over all tasks."""
    tasks = report.tasks
    frames = {"acc": report.mean[[c for c in report.accuracy_columns]]}
    rec = report.records
    for metric, (_, column, _) in METRICS.items():
        if metric == "acc":
            continue
        if rec.empty or column not in rec:
            frames[metric] = pd.DataFrame(index=report.mean.index, columns=frames["acc"].columns, dtype=float)
            continue
        cell = rec.groupby(["method", "task"])[column].mean().unstack().reindex(index=report.mean.index,
                                                                                columns=tasks)
        frame = cell.copy()
        titles = group_names(report.suite)
        for g, title in zip(report.suite.groups, titles):
            frame[title] = cell[[t.name for t in report.suite.tasks if t.group == g]].mean(axis=1, skipna=False)
        frame[FLAT] = cell.mean(axis=1, skipna=False)
        frame[GROUPS] = frame[titles].mean(axis=1, skipna=False) if titles else frame[FLAT]
        frames[metric] = frame.reindex(columns=frames["acc"].columns)
    return frames


def _ranks(frame: pd.DataFrame, higher: bool) -> pd.DataFrame:
    return frame.astype(float).rank(axis=0, method="min", ascending=not higher)


def _curve_svg(curve: list[dict]) -> str:
    """A small inline SVG of a run's training loss per epoch (and the test top-1 of
    `--eval-every`, on its own axis), or "" without a curve."""
    points = [(c["epoch"], c["train_loss"]) for c in curve if "train_loss" in c and c["train_loss"] is not None
              and math.isfinite(c["train_loss"])]
    if len(points) < 2:
        return ""
    w, h, pad = 320, 120, 24
    e0, e1 = points[0][0], points[-1][0]
    lo, hi = min(p[1] for p in points), max(p[1] for p in points)
    span = (hi - lo) or 1.0

    def xy(epoch, value, vlo, vspan):
        x = pad + (w - 2 * pad) * (epoch - e0) / max(e1 - e0, 1)
        y = h - pad - (h - 2 * pad) * (value - vlo) / vspan
        return f"{x:.1f},{y:.1f}"

    loss = " ".join(xy(e, v, lo, span) for e, v in points)
    parts = [f'<svg class="curve" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
             f'aria-label="training curve">',
             f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{loss}"/>',
             f'<text x="{pad}" y="12" font-size="10" fill="#1f77b4">train loss {points[0][1]:.3g} → {points[-1][1]:.3g}</text>',
             f'<text x="{pad}" y="{h - 6}" font-size="10">epoch {e0}</text>',
             f'<text x="{w - pad}" y="{h - 6}" font-size="10" text-anchor="end">{e1}</text>']
    diag = [(c["epoch"], c["diagnostic_top1"]) for c in curve if "diagnostic_top1" in c]
    if len(diag) >= 2:
        dl, dh = min(v for _, v in diag), max(v for _, v in diag)
        line = " ".join(xy(e, v, dl, (dh - dl) or 1.0) for e, v in diag)
        parts.append(f'<polyline fill="none" stroke="#d62728" stroke-width="1" stroke-dasharray="3 2" points="{line}"/>')
        parts.append(f'<text x="{w - pad}" y="12" font-size="10" fill="#d62728" text-anchor="end">'
                     f'test top-1 (diagnostic) {dl:.1f}-{dh:.1f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def cell_details(report: Report) -> tuple[dict, list[str], list[str]]:
    """Per method and task: every seed's numbers and record file, the hyperparameters, the
    training curve of the first seed, the environment; and the peftbench versions and git
    commits the records were made with."""
    details: dict[str, dict[str, dict]] = {}
    versions, commits = set(), set()
    rec = report.records
    if rec.empty:
        return details, [], []
    for (method, task), rows in rec.sort_values("seed").groupby(["method", "task"]):
        seeds, curve_svg, env = [], "", {}
        for _, row in rows.iterrows():
            full = _read_json(row["_path"]) if isinstance(row.get("_path"), str) else {}
            env = full.get("env", env) or env
            if not curve_svg:
                curve_svg = _curve_svg(full.get("curve") or [])
            seeds.append({"seed": int(row["seed"]), "top1": _number(row["top1"]),
                          "train_seconds": _number(row.get("train_seconds")),
                          "peak_memory_mib": _number(row.get("peak_memory_mib")),
                          "run_id": row["run_id"], "path": row.get("_path") or ""})
            if env:
                versions.add(str((env.get("packages") or {}).get("peftbench")))
                commits.add(str(env.get("git_commit")))
        details.setdefault(str(method), {})[str(task)] = {
            "method": str(method), "task": _label(report, str(task)), "seeds": seeds,
            "hparams": json.loads(rows.iloc[0]["hparams"]), "curve": curve_svg,
            "selection": rows.iloc[0].get("selection", ""),
            "env": {k: env.get(k) for k in ("host", "device", "device_name", "python", "platform",
                                            "packages", "git_commit", "torch_threads", "slurm") if k in env},
        }
    return details, sorted(versions), sorted(commits)


def figures_svg(report: Report) -> dict[str, str]:
    import matplotlib.pyplot as plt

    from .plots import figures

    out = {}
    for name, fig in figures(report).items():
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
        plt.close(fig)
        svg = buf.getvalue()
        out[name] = svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: it is inlined
    return out


def page_context(report: Report) -> dict:
    frames = metric_frames(report)
    columns = list(frames["acc"].columns)
    group_of = {t.name: t.group for t in report.suite.tasks}
    groups = list(report.suite.groups)
    mean_of_group = dict(zip(group_names(report.suite), groups))  # "Natural" -> "natural"
    group_of.update(mean_of_group)  # a group's mean column goes with its tasks under a group filter
    head = [{"key": c, "label": _label(report, c), "group": group_of.get(c, ""),
             "kind": "task" if c in report.tasks else ("group" if c in mean_of_group else "mean")}
            for c in columns]
    extra = [c for c in report.mean.columns if c in report.extra_columns]
    # the first header row: each group over its tasks, then one cell per group mean and per
    # overall mean (never a span across groups, which a group filter would cut)
    top: list[dict] = []
    for h in head:
        if h["kind"] == "task" and top and top[-1]["group"] == h["group"] and top[-1]["kind"] == "task":
            top[-1]["span"] += 1
        elif h["kind"] == "task":
            top.append({"kind": "task", "group": h["group"], "span": 1,
                        "label": h["group"].title() if len(groups) > 1 else ""})
        elif h["kind"] == "group":
            top.append({"kind": "group", "group": h["group"], "span": 1, "label": "group mean"})
        else:
            top.append({"kind": "mean", "group": "", "span": 1, "label": ""})
    ranks = {m: _ranks(frames[m], METRICS[m][2]) for m in METRICS}
    rows = []
    for method in report.mean.index:
        cells = []
        for c in columns:
            cell = {"key": c, "group": group_of.get(c, ""), "values": {}}
            for m in METRICS:
                v = frames[m].loc[method, c] if c in frames[m].columns else None
                std = report.std.loc[method, c] if m == "acc" and c in report.std.columns else None
                r = ranks[m].loc[method, c] if c in ranks[m].columns else None
                cell["values"][m] = {"v": _number(v), "t": _text(m, v, std),
                                     "r": int(r) if r is not None and not pd.isna(r) else 0}
            cells.append(cell)
        rows.append({"name": method, "published": False, "label": "", "cells": cells,
                     "params": _fmt_params(report.mean.loc[method, PARAMS]),
                     "params_v": _number(report.mean.loc[method, PARAMS]),
                     "extra": [{"t": fmt_extra(c, report.mean.loc[method, c]),
                                "v": _number(report.mean.loc[method, c])} for c in extra]})
    for name, values in comparison_rows(report).iterrows():
        delta = "−" in name
        label = ""
        if not delta and report.published_labels is not None and name in report.published_labels.index:
            label = f"{report.published_labels.loc[name, 'source']} · selected by " \
                    f"{report.published_labels.loc[name, 'selection']}"
        cells = []
        for c in columns:
            v = values.get(c)
            text = MISSING if v is None or pd.isna(v) else (f"{v:+.1f}" if delta else f"{v:.1f}")
            cells.append({"key": c, "group": group_of.get(c, ""),
                          # a difference has no place in an order of accuracies: it sorts last
                          "values": {m: ({"v": None if delta else _number(v), "t": text, "r": 0} if m == "acc" else
                                         {"v": None, "t": MISSING, "r": 0}) for m in METRICS}})
        rows.append({"name": name, "published": True, "delta": delta, "label": label, "cells": cells,
                     "params": MISSING if delta else _fmt_params(values.get(PARAMS)),
                     "params_v": None if delta else _number(values.get(PARAMS)),
                     "extra": [{"t": MISSING, "v": None} for _ in extra]})
    details, versions, commits = cell_details(report)
    failed = report.failed
    return {
        "title": f"{report.suite.name} · {report.stage} stage",
        "suite": report.suite,
        "description": getattr(report.suite, "description", ""),
        "groups": groups if len(groups) > 1 else [],
        "head": head, "top": top, "extra": extra, "rows": rows,
        "metrics": {k: v[0] for k, v in METRICS.items()},
        "protocol": report.protocol,
        "published_notes": published_notes(report),
        "notes": report.notes,
        "missing": [(m, _label(report, t)) for m, t in report.missing],
        "failed": failed,
        "versions": versions, "commits": commits,
        "n_records": len(report.records),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "figures": report.figure_svgs,
        "details_json": _script_json(details),
    }


def _script_json(data) -> str:
    """JSON safe inside a <script> element (no "</script>" can end it early)."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_page(report: Report) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    template = (resources.files("bench") / "reports" / "results_page.html.j2").read_text(encoding="utf-8")
    return env.from_string(template).render(**page_context(report))


@register_writer("html")
class HTML(ReportWriter):
    suffix = "html"

    def render(self, report: Report) -> str:
        return render_page(report)
