"""Figures for a report, with seaborn, saved as PNG and PDF at paper column width."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a cluster or in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import ReportWriter, register_writer  # noqa: E402
from .table import FLAT, GROUPS, PARAMS, Report, file_stem, group_names  # noqa: E402

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
PAGE_WIDTH = 7.0    # inches: both columns


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=200, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _legend_columns(labels, width: float) -> int:
    longest = max((len(str(label)) for label in labels), default=1)
    return max(1, min(len(labels), int(width / (0.35 + 0.06 * longest))))


def _legend_height(labels, width: float) -> float:
    """Inches a legend of `labels` under the axes needs."""
    rows = -(-len(labels) // _legend_columns(labels, width))
    return 0.35 + 0.13 * rows


def _legend_below(fig, handles, labels, width: float) -> None:
    """A legend under the axes, in as many columns as fit the width: it never covers data, and
    long method names never collide with each other."""
    fig.legend(handles, labels, loc="outside lower center", ncol=_legend_columns(labels, width), fontsize=6,
               frameon=False, handletextpad=0.3, columnspacing=0.8)


def pareto_front(cost, accuracy) -> list[int]:
    """Positions of the points no other point beats on both counts (lower cost and higher
    accuracy, one of them strictly), in order of cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -accuracy[i]))
    front, best = [], -math.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def _count_label(v: float, _=None) -> str:
    """Millions of parameters as a reader says them: 12K, 1.5M."""
    return f"{v * 1000:g}K" if v < 1 else f"{v:g}M"


def _plain_label(v: float, _=None) -> str:
    return f"{v:g}"


def _log_axis(axis, values, formatter=_plain_label) -> None:
    """Log ticks that never crowd: 1-2-5 per decade over a narrow range, decades over a wide one,
    plain numbers, no minor labels (matplotlib labels minor ticks when less than a decade shows)."""
    lo, hi = float(min(values)), float(max(values))
    decades = math.log10(hi / lo) if lo > 0 else 0.0
    subs = (1.0, 2.0, 5.0) if decades < 2 else (1.0,)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=12))
    axis.set_major_formatter(ticker.FuncFormatter(formatter))
    axis.set_minor_formatter(ticker.NullFormatter())
    if decades < 0.5:  # show at least one labelled tick
        mid = math.sqrt(lo * hi) if lo > 0 else 1.0
        axis.axes.set_xlim(mid / 2.5, mid * 2.5)


def figures(report: Report, width: float = COLUMN_WIDTH) -> dict[str, plt.Figure]:
    """The report's figures at `width` inches (COLUMN_WIDTH or PAGE_WIDTH), by file name."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
    prefix = file_stem(report)
    table = report.mean
    out: dict[str, plt.Figure] = {}
    methods = list(table.index)
    palette = dict(zip(methods, sns.color_palette("husl" if len(methods) > 10 else "tab10", len(methods))))
    markers = dict(zip(methods, ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*"] * 4))

    # The classic PEFT scatters: accuracy against trainable parameters and against training time
    # (log x), the Pareto front marked; methods in a legend (labels beside the points collide as
    # soon as two methods have similar sizes).
    rec = report.records
    seconds = (rec.groupby("method")["train_seconds"].mean() if not rec.empty and "train_seconds" in rec
               else pd.Series(dtype=float))
    for cost, name, label, fmt in (
            (table[PARAMS], "accuracy_vs_params", "trainable parameters (with head)", _count_label),
            (seconds.reindex(table.index), "accuracy_vs_time", "train time per run (s)", _plain_label)):
        points = pd.DataFrame({"method": table.index, "cost": cost, "accuracy": table[GROUPS]}).dropna()
        if name == "accuracy_vs_time" and points.empty:
            continue
        fig, ax = plt.subplots(figsize=(width, 2.0 + _legend_height(list(points["method"]), width)),
                               layout="constrained")
        if not points.empty:
            for _, row in points.iterrows():
                ax.scatter(row["cost"], row["accuracy"], s=30, color=palette[row["method"]],
                           marker=markers[row["method"]], label=row["method"], edgecolor="white", linewidth=0.4,
                           zorder=3)
            front = points.iloc[pareto_front(list(points["cost"]), list(points["accuracy"]))]
            ax.plot(front["cost"], front["accuracy"], drawstyle="steps-post", color="0.5", linewidth=0.8,
                    linestyle="--", zorder=2, label="Pareto front")
            ax.set_xscale("log")
            _log_axis(ax.xaxis, points["cost"], fmt)
            _legend_below(fig, *ax.get_legend_handles_labels(), width)
        ax.set_xlabel(label)
        ax.set_ylabel(f"top-1 (%), {GROUPS.lower()}")
        out[f"{prefix}_{name}"] = fig

    # Per-group bars, the legend under the axes so that it covers no bar.
    groups = group_names(report.suite) or [FLAT]
    long = table[groups].reset_index(names="method").melt(id_vars="method", var_name="group", value_name="top-1 (%)")
    fig, ax = plt.subplots(figsize=(width, 2.0 + _legend_height(methods, width)), layout="constrained")
    sns.barplot(data=long.dropna(), x="group", y="top-1 (%)", hue="method", palette=palette, ax=ax)
    ax.set_xlabel("")
    if ax.get_legend() is not None:
        ax.get_legend().remove()
        _legend_below(fig, *ax.get_legend_handles_labels(), width)
    out[f"{prefix}_groups"] = fig

    # Costs: peak memory and training time per method, as horizontal bars (names read across).
    rec = report.records
    if not rec.empty:
        # the growth over the memory in use before training compares methods; on the CPU the
        # absolute peak is mostly the Python and PyTorch process (records before it existed lack it)
        growth = "peak_memory_growth_mib" in rec and rec["peak_memory_growth_mib"].notna().all()
        memory = "peak_memory_growth_mib" if growth else "peak_memory_mib"
        costs = rec.groupby("method")[[memory, "train_seconds"]].mean().reset_index()
        bars = 0.5 + 0.16 * len(costs)
        if width < PAGE_WIDTH:  # one column: one panel above the other
            fig, axes = plt.subplots(2, 1, figsize=(width, 2 * bars), layout="constrained")
        else:
            fig, axes = plt.subplots(1, 2, figsize=(width, bars), sharey=True, layout="constrained")
        sns.barplot(data=costs, y="method", x=memory, hue="method", palette=palette, ax=axes[0], legend=False)
        axes[0].set_xlabel("peak memory growth in training (MiB)" if growth else "peak memory (MiB)")
        sns.barplot(data=costs, y="method", x="train_seconds", hue="method", palette=palette, ax=axes[1],
                    legend=False)
        axes[1].set_xlabel("train time per run (s)")
        for ax in axes:
            ax.set_ylabel("")
            ax.tick_params(axis="both", labelsize=6)
            ax.xaxis.set_major_locator(plt.MaxNLocator(4))
        out[f"{prefix}_costs"] = fig

    # Per-task heat map, tall enough for the names; more than a few tasks take the page's width.
    tasks = report.tasks
    heat = table[tasks].rename(columns={t.name: t.label for t in report.suite.tasks})
    fig, ax = plt.subplots(figsize=(max(width, min(PAGE_WIDTH, 0.3 * len(tasks) + 1.6)), 0.2 * len(heat) + 1.3),
                           layout="constrained")
    sns.heatmap(heat, annot=True, fmt=".1f", cmap="viridis", cbar=False, ax=ax, annot_kws={"fontsize": 5})
    ax.set_ylabel("")
    ax.tick_params(axis="both", labelsize=6)
    ax.tick_params(axis="x", rotation=90)
    out[f"{prefix}_tasks_heatmap"] = fig

    # Critical-difference diagram (Demsar 2006): average ranks, Nemenyi's CD, and bars joining
    # the methods whose ranks do not differ by it; from 3 methods on 2 tasks.
    from .stats import ranks

    ranked = ranks(report)
    if ranked is not None and len(ranked.average) >= 3 and len(ranked.tasks) >= 2:
        out[f"{prefix}_critical_difference"] = _cd_diagram(ranked, width)

    # Every seed's top-1 per task and method: how much of a difference the seeds alone make.
    if not rec.empty and "seed" in rec:
        labels = {t.name: t.label for t in report.suite.tasks}
        seeds = rec[rec["task"].isin(tasks)].assign(task=lambda d: d["task"].map(labels))
        fig_width = max(width, min(PAGE_WIDTH, 0.35 * len(tasks) + 1.2))
        fig, ax = plt.subplots(figsize=(fig_width, 2.2 + _legend_height(methods, fig_width)), layout="constrained")
        sns.stripplot(data=seeds, x="task", y="top1", hue="method", order=[labels[t] for t in tasks],
                      hue_order=methods, palette=palette, dodge=True, size=2.5, jitter=False, ax=ax)
        ax.set_xlabel("")
        ax.set_ylabel("top-1 (%), each seed")
        ax.tick_params(axis="x", rotation=90, labelsize=6)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
            _legend_below(fig, *ax.get_legend_handles_labels(), fig_width)
        out[f"{prefix}_seeds"] = fig
    return out


def _cd_diagram(ranked, width: float) -> plt.Figure:
    from .stats import cliques, critical_difference

    average = ranked.average
    k, n = len(average), len(ranked.tasks)
    cd = critical_difference(k, n)
    groups = cliques(average, cd)
    half = (k + 1) // 2
    step = 0.22  # inches between label rows
    rows = max(half, k - half)
    height = 0.5 + 0.12 + 0.1 * len(groups) + step * rows + 0.15
    fig = plt.figure(figsize=(width, height))
    # room on each side for the longest "name (rank)" at 6 pt, about 0.046 in a character
    side = min(0.42, (0.046 * (max(len(str(m)) for m in average.index) + 8) + 0.1) / width)
    ax = fig.add_axes((side, 0.0, 1 - 2 * side, 1.0))
    ax.set_axis_off()
    top = height - 0.5  # the rank axis, in inches from the bottom
    y = lambda inches: inches / height  # noqa: E731
    ax.set_xlim(1, k)
    ax.set_ylim(0, 1)
    ax.plot([1, k], [y(top), y(top)], color="black", linewidth=0.8)
    every = max(1, math.ceil(k / max(2, int((1 - 2 * side) * width / 0.15))))  # labels 0.15 in apart
    for r in range(1, k + 1):
        ax.plot([r, r], [y(top), y(top + 0.05)], color="black", linewidth=0.8)
        if (r - 1) % every == 0 or r == k and (k - 1) % every == 0:
            ax.text(r, y(top + 0.08), str(r), ha="center", va="bottom", fontsize=6)
    ax.plot([1, 1 + cd], [y(top + 0.3), y(top + 0.3)], color="black", linewidth=1.2)
    ax.text(1, y(top + 0.33), f"CD = {cd:.2f}", ha="left", va="bottom", fontsize=6)
    bars = top - 0.12
    for i, members in enumerate(groups):  # the cliques, just under the axis
        lo, hi = average[members[0]], average[members[-1]]
        ax.plot([lo - 0.03, hi + 0.03], [y(bars - 0.1 * i)] * 2, color="black", linewidth=2, solid_capstyle="butt")
    first = bars - 0.1 * len(groups) - step
    for i, (method, rank) in enumerate(average.items()):
        left = i < half
        row = i if left else k - 1 - i
        level = y(first - step * row)
        edge = 0.9 if left else k + 0.1
        ax.plot([rank, rank, edge], [y(top), level, level], color="0.3", linewidth=0.6, clip_on=False)
        ax.text(edge + (-0.05 if left else 0.05), level, f"{method} ({rank:.2f})", ha="right" if left else "left",
                va="center", fontsize=6, clip_on=False)
    return fig


def make_plots(report: Report, out_dir: Path, width: float = COLUMN_WIDTH) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, fig in figures(report, width).items():
        written += _save(fig, out_dir, name)
    return written


@register_writer("plots")
class Plots(ReportWriter):
    kind = "figures"

    def write(self, report: Report, out_dir: Path) -> list[Path]:
        return make_plots(report, out_dir / "plots")
