"""Figures for a report, with seaborn, saved as PNG and PDF at paper column width."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a cluster or in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import ReportWriter, register_writer  # noqa: E402
from .table import FLAT, GROUPS, PARAMS, Report, file_stem, group_names  # noqa: E402

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    fig.tight_layout()
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=200, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def make_plots(report: Report, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
    prefix = file_stem(report)
    table = report.mean
    written: list[Path] = []

    # The classic PEFT scatter: accuracy against trainable parameters, log x.
    points = pd.DataFrame({"method": table.index, "params": table[PARAMS], "accuracy": table[GROUPS]}).dropna()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.6))
    if not points.empty:
        sns.scatterplot(data=points, x="params", y="accuracy", hue="method", s=60, ax=ax, legend=False)
        for _, row in points.iterrows():
            ax.annotate(row["method"], (row["params"], row["accuracy"]), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (M, with head)")
    ax.set_ylabel(f"top-1 (%), {GROUPS.lower()}")
    written += _save(fig, out_dir, f"{prefix}_accuracy_vs_params")

    # Per-group bars.
    groups = group_names(report.suite) or [FLAT]
    long = table[groups].reset_index(names="method").melt(id_vars="method", var_name="group", value_name="top-1 (%)")
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
    sns.barplot(data=long.dropna(), x="group", y="top-1 (%)", hue="method", ax=ax)
    ax.set_xlabel("")
    ax.legend(fontsize=6, title=None, loc="lower right")
    written += _save(fig, out_dir, f"{prefix}_groups")

    # Costs: peak memory and training time per method.
    rec = report.records
    if not rec.empty:
        costs = rec.groupby("method")[["peak_memory_mib", "train_seconds"]].mean().reset_index()
        fig, axes = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH, 2.2))
        sns.barplot(data=costs, x="method", y="peak_memory_mib", ax=axes[0])
        axes[0].set_ylabel("peak memory (MiB)")
        sns.barplot(data=costs, x="method", y="train_seconds", ax=axes[1])
        axes[1].set_ylabel("train time per run (s)")
        for ax in axes:
            ax.set_xlabel("")
            ax.tick_params(axis="x", rotation=30)
        written += _save(fig, out_dir, f"{prefix}_costs")

    # Per-task heat map.
    tasks = report.tasks
    heat = table[tasks].rename(columns={t.name: t.label for t in report.suite.tasks})
    fig, ax = plt.subplots(figsize=(max(COLUMN_WIDTH, 0.45 * len(tasks) + 1.5), 0.35 * len(heat) + 1.2))
    sns.heatmap(heat, annot=True, fmt=".1f", cmap="viridis", cbar=False, ax=ax, annot_kws={"fontsize": 6})
    ax.set_ylabel("")
    written += _save(fig, out_dir, f"{prefix}_tasks_heatmap")
    return written


@register_writer("plots")
class Plots(ReportWriter):
    kind = "figures"

    def write(self, report: Report, out_dir: Path) -> list[Path]:
        return make_plots(report, out_dir / "plots")
