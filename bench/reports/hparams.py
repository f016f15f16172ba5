"""What the tune stage chose, and the whole search behind it (`bench report --hparams`).

From the tune-stage records of a suite: for every method x task, the grid point the protocol
selected (by `protocol.preference`: validation top-1 after the last epoch, ties to the smaller lr
and weight decay), its validation accuracy, the runner-up's, and how many points were searched;
and the whole grid, one row per point with its validation accuracy, time and memory, so a reader
can re-run any cell or see how flat the optimum was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..protocol import preference
from ..suite import Suite

GRID_COLUMNS = ("method", "task", "point", "val_top1", "train_seconds", "peak_memory_mib", "run_id")


def tune_grid(records: pd.DataFrame, suite: Suite) -> pd.DataFrame:
    """Every ok tune record (of `records_frame`): method, task, the searched hyperparameters
    (those that differ within the cell) as `point` and as their own columns, validation top-1,
    costs, run id."""
    df = records
    if df.empty or "stage" not in df:
        return pd.DataFrame(columns=list(GRID_COLUMNS))
    df = df[(df["stage"] == "tune") & df["task"].isin([t.name for t in suite.tasks])]
    rows = []
    for (method, task), cell in df.groupby(["method", "task"], sort=True):
        points = [json.loads(h) for h in cell["hparams"]]
        searched = sorted(k for k in set().union(*points) if len({json.dumps(p.get(k)) for p in points}) > 1)
        for hp, (_, rec) in zip(points, cell.iterrows()):
            rows.append({"method": method, "task": task,
                         "point": ", ".join(f"{k}={hp.get(k)}" for k in searched) or "(one point)",
                         "val_top1": rec["top1"], "train_seconds": rec.get("train_seconds"),
                         "peak_memory_mib": rec.get("peak_memory_mib"), "run_id": rec["run_id"],
                         "_key": preference(hp, rec["top1"], rec["run_id"]),
                         **{f"hp.{k}": hp.get(k) for k in searched}})
    if not rows:
        return pd.DataFrame(columns=list(GRID_COLUMNS))
    # within each cell, in the order the protocol prefers the points: the chosen one first
    order = {t.name: i for i, t in enumerate(suite.tasks)}
    rows.sort(key=lambda r: (r["method"], order[r["task"]], r["_key"]))
    return pd.DataFrame(rows).drop(columns=["_key"])


def selected(grid: pd.DataFrame) -> pd.DataFrame:
    """Per method x task: the chosen point and its validation top-1, the runner-up and its, and
    the number of points searched (the grid is in preference order within each cell)."""
    rows = []
    for (method, task), cell in grid.groupby(["method", "task"], sort=False):  # the grid's order
        first = cell.iloc[0]
        second = cell.iloc[1] if len(cell) > 1 else None
        rows.append({"method": method, "task": task, "chosen": first["point"], "val_top1": first["val_top1"],
                     "runner_up": second["point"] if second is not None else "",
                     "runner_up_val_top1": second["val_top1"] if second is not None else float("nan"),
                     "points": len(cell)})
    return pd.DataFrame(rows, columns=["method", "task", "chosen", "val_top1", "runner_up",
                                       "runner_up_val_top1", "points"])


def _md_frame(sel: pd.DataFrame, suite: Suite) -> pd.DataFrame:
    labels = {t.name: t.label for t in suite.tasks}
    out = pd.DataFrame({
        "method": sel["method"], "task": [labels.get(t, t) for t in sel["task"]], "chosen": sel["chosen"],
        "val top-1": [f"{v:.1f}" for v in sel["val_top1"]],
        "runner-up": sel["runner_up"].replace("", "—"),
        "its val top-1": ["—" if pd.isna(v) else f"{v:.1f}" for v in sel["runner_up_val_top1"]],
        "points": sel["points"]})
    return out


def _latex_escape(text: str) -> str:
    return str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def write_hparams(records: pd.DataFrame, suite: Suite, out_dir: Path) -> tuple[list[Path], pd.DataFrame]:
    """Write `<suite>_hparams.{md,tex,csv}` (the selected points) and `<suite>_tune_grid.csv`
    (every point) from the suite's `records_frame`; returns the paths and the selection (empty
    when there are no tune records)."""
    grid = tune_grid(records, suite)
    sel = selected(grid)
    if sel.empty:
        return [], sel
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{suite.name}_hparams"
    caption = (f"Hyperparameters selected on {suite.name} by the tune stage ({' -> '.join(suite.splits['tune'])}, "
               "last epoch; ties to the smaller lr, then the smaller weight decay), with the runner-up point.")
    frame = _md_frame(sel, suite)
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex"), stem.with_suffix(".csv"),
             out_dir / f"{suite.name}_tune_grid.csv"]
    paths[0].write_text(caption + "\n\n" + frame.to_markdown(index=False, disable_numparse=True) + "\n", encoding="utf-8")
    body = " \\\\\n".join(" & ".join(_latex_escape(v) for v in row) for row in frame.astype(str).values.tolist())
    paths[1].write_text(
        "% " + caption + "\n\\begin{tabular}{lllrlrr}\n\\toprule\n"
        + " & ".join(_latex_escape(c) for c in frame.columns) + " \\\\\n\\midrule\n" + body
        + " \\\\\n\\bottomrule\n\\end{tabular}\n", encoding="utf-8")
    sel.to_csv(paths[2], index=False)
    grid.to_csv(paths[3], index=False)
    return paths, sel
