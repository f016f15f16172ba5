"""`latex`: a booktabs table to `\\input`, tasks grouped under their groups, the best of each
accuracy column in bold and the second underlined."""

from __future__ import annotations

import pandas as pd

from . import ReportWriter, register_writer
from .table import MISSING, PARAMS, PARAMS_NO_HEAD, Report, _fmt_params, _label, fmt_extra


def latex_table(report: Report) -> str:
    """A booktabs table for \\input: tasks grouped under their group names, the best value of
    each accuracy column in bold and the second underlined."""
    numeric = report.mean.drop(columns=[PARAMS_NO_HEAD])
    acc_cols = [c for c in numeric.columns if c not in report.not_accuracy]
    ranks = numeric[acc_cols].rank(axis=0, method="min", ascending=False)
    cells = pd.DataFrame(index=numeric.index, columns=numeric.columns, dtype=object)
    for m in numeric.index:
        for c in numeric.columns:
            v = numeric.loc[m, c]
            if c == PARAMS:
                cells.loc[m, c] = _fmt_params(v)
                continue
            if c in report.extra_columns:
                cells.loc[m, c] = fmt_extra(c, v, missing="--")
                continue
            std = report.std.loc[m, c] if c in report.std.columns else None
            text = MISSING if pd.isna(v) else (
                f"{v:.1f}$\\pm${std:.1f}" if std is not None and not pd.isna(std) else f"{v:.1f}")
            if not pd.isna(v) and ranks.loc[m, c] == 1:
                text = f"\\textbf{{{text}}}"
            elif not pd.isna(v) and ranks.loc[m, c] == 2:
                text = f"\\underline{{{text}}}"
            cells.loc[m, c] = text
    top = []
    for c in numeric.columns:
        task = next((t for t in report.suite.tasks if t.name == c), None)
        top.append(task.group.title() if task is not None and len(report.suite.groups) > 1 else "")
    cells.columns = pd.MultiIndex.from_arrays([top, [_escape(_label(report, c)) for c in numeric.columns]])
    cells.index = [_escape(m) for m in cells.index]
    caption = (f"Top-1 accuracy (\\%) on {_escape(report.suite.name)}, {report.stage} stage, last epoch; "
               "mean$\\pm$std over seeds. Best in bold, second underlined.")
    latex = cells.style.to_latex(hrules=True, multicol_align="c", column_format="l" + "r" * len(numeric.columns),
                                  caption=caption, label=f"tab:{report.suite.name}-{report.stage}")
    return f"% {report.protocol}\n" + latex.replace("—", "--")


def _escape(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#")):
        text = text.replace(a, b)
    return text


@register_writer("latex")
class LaTeX(ReportWriter):
    suffix = "tex"

    def render(self, report: Report) -> str:
        return latex_table(report)
