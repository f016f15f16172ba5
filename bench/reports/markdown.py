"""`md`: the table as Markdown (GitHub's pipe tables), with its caption and notes."""

from __future__ import annotations

from . import ReportWriter, register_writer
from .table import PARAMS, Report, display_frame, published_notes


def markdown_table(report: Report) -> str:
    text = (f"Top-1 accuracy (%) on {report.suite.name} ({report.stage} stage, evaluated on "
            f"{report.suite.splits[report.stage][1]} after the last epoch); mean ± std over seeds; "
            f"{PARAMS}: trainable parameters with the head.\n\n{report.protocol}\n\n"
            + display_frame(report).to_markdown(disable_numparse=True) + "\n")
    if report.missing:
        text += "\nMissing cells: " + ", ".join(f"{m}/{t}" for m, t in report.missing) + "\n"
    for line in published_notes(report):
        text += f"\n{line}\n"
    return text


@register_writer("md")
class Markdown(ReportWriter):
    suffix = "md"

    def render(self, report: Report) -> str:
        return markdown_table(report)
