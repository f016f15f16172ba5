"""`csv`: every number of the table, with the std, seed count and 95% bootstrap interval over
seeds of each task, the interval of each method's mean of group means (seeds resampled within
tasks), and the published comparison rows."""

from __future__ import annotations

import pandas as pd

from . import ReportWriter, register_writer
from .table import GROUPS, Report, comparison_rows


def csv_frame(report: Report) -> pd.DataFrame:
    from .stats import cell_intervals, group_mean_interval

    frame = report.mean.copy()
    low, high = cell_intervals(report)
    for t in report.tasks:
        frame[f"{t} std"] = report.std[t]
        frame[f"{t} seeds"] = report.seeds[t]
        frame[f"{t} ci95 low"], frame[f"{t} ci95 high"] = low[t], high[t]
    bounds = [group_mean_interval(report, m) for m in report.mean.index]
    frame[f"{GROUPS} ci95 low"] = [b[0] for b in bounds]
    frame[f"{GROUPS} ci95 high"] = [b[1] for b in bounds]
    comparison = comparison_rows(report)
    if not comparison.empty:
        frame = pd.concat([frame, comparison])
    frame.index.name = "method"
    return frame


@register_writer("csv")
class CSV(ReportWriter):
    suffix = "csv"

    def render(self, report: Report) -> str:
        return csv_frame(report).to_csv(float_format="%.4f")
