"""`csv`: every number of the table, with the std and seed count of each task, and the
published comparison rows."""

from __future__ import annotations

import pandas as pd

from . import ReportWriter, register_writer
from .table import Report, comparison_rows


def csv_frame(report: Report) -> pd.DataFrame:
    frame = report.mean.copy()
    for t in report.tasks:
        frame[f"{t} std"] = report.std[t]
        frame[f"{t} seeds"] = report.seeds[t]
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
