"""Reports: tables from the run records (`table.py`) and the writers that put them in files,
one file each in this folder, registered by name (`bench report --format md,latex,csv`;
`--plots` runs the figure writer).

A new report format is one file here (or a plugin) with a class decorated
`@register_writer(name)` that implements `ReportWriter.write`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ..errors import UserError
from ..registry import Registry


class ReportWriter:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = "table"    # table: chosen with --format; figures: written with --plots
    suffix: ClassVar[str] = ""       # for a writer of one text file: its suffix, and `render`

    def write(self, report, out_dir: Path) -> list[Path]:
        """Write the report's files under `out_dir` (which exists); returns their paths. The
        default writes `render(report)` to `<suite>_<stage>.<suffix>`."""
        path = out_dir / f"{report.suite.name}_{report.stage}.{self.suffix}"
        path.write_text(self.render(report), encoding="utf-8")
        return [path]

    def render(self, report) -> str:
        raise NotImplementedError


WRITERS: Registry[type[ReportWriter]] = Registry("report format", "bench.reports", "peftbench.reports")


register_writer = WRITERS.register_class  # the class decorator: @register_writer(name)


def table_formats() -> list[str]:
    return [n for n, w in WRITERS.items().items() if w.kind == "table"]


def parse_formats(text: str) -> list[str]:
    """`--format`: a comma-separated list of table formats, or `all`."""
    known = table_formats()
    if text.strip() == "all":
        return known
    names = [f.strip() for f in text.split(",") if f.strip()]
    for name in names:
        if name not in known:
            raise UserError(f"--format {text!r}: {name!r} is not a table format; choose from "
                            f"{', '.join(known)}, a comma-separated list, or all")
    if not names:
        raise UserError(f"--format {text!r}: choose from {', '.join(known)}, a comma-separated list, or all")
    return names


def write_report(report, out_dir: Path, formats: list[str]) -> list[Path]:
    """Every named writer's files under `out_dir`; a folder that cannot be written is one error."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out_dir}: a file is in the way; pass a folder") from None
    except OSError as exc:
        raise UserError(f"cannot make the report folder {out_dir}: {exc.strerror or exc}") from None
    written: list[Path] = []
    for name in formats:
        try:
            written += WRITERS.get(name)().write(report, out_dir)
        except OSError as exc:
            raise UserError(f"cannot write the report into {out_dir}: {exc.strerror or exc}; pass "
                            "--out DIR with a folder you can write to") from None
    return written
