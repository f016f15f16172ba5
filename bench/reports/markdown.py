"""`md`: the table as Markdown (GitHub's pipe tables), with its caption and notes."""

from __future__ import annotations

from pathlib import Path

from . import ReportWriter, register_writer
from .table import PARAMS, Report, display_frame, file_stem, published_notes


def markdown_table(report: Report) -> str:
    text = (f"Top-1 accuracy (%) on {report.suite.name} ({report.stage} stage, evaluated on "
            f"{report.suite.splits[report.stage][1]} after the last epoch); mean ± std over seeds; "
            f"{PARAMS}: trainable parameters with the head.\n\n" + display_frame(report).to_markdown(disable_numparse=True) + "\n")
    if report.missing:
        text += "\nMissing cells: " + ", ".join(f"{m}/{t}" for m, t in report.missing) + "\n"
    for line in published_notes(report):
        text += f"\n{line}\n"
    return text


@register_writer("md")
class Markdown(ReportWriter):
    def write(self, report: Report, out_dir: Path) -> list[Path]:
        path = out_dir / f"{file_stem(report)}.md"
        path.write_text(markdown_table(report), encoding="utf-8")
        return [path]
