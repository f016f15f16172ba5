"""Tables from run records: one row per method, one column per task, group means, both means.

Only `ok` records of the chosen stage count. Several seeds give mean and std. A missing cell is
shown as missing and makes the means that need it missing too: an average over fewer tasks is
never reported as if it were the whole suite's. Both overall averages are given, labelled: the
flat mean over tasks and the mean of the group means (papers use both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

import pandas as pd

from ..store import Store
from ..suite import Suite

MISSING = "—"
FLAT, GROUPS = "Mean (tasks)", "Mean (groups)"
PARAMS, PARAMS_NO_HEAD = "Params (M)", "Params no head (M)"
CELL_KEYS = ("suite", "task", "method", "seed", "stage")
# the spec fields a report's protocol line states, with their names in it
PROTOCOL_KEYS = {"splits": "splits", "normalize": "normalisation", "interpolation": "resizing",
                 "checkpoint": "backbone weights", "precision": "precision", "backbone": "backbones"}
# what a record states beside its spec (not part of the run id)
RECORD_PROTOCOL_KEYS = {"weights_sha256": "weights files", "selection": "selection rules"}
MISSING_KEY = object()  # a spec field a record predates


@dataclass
class Report:
    suite: Suite
    stage: str
    mean: pd.DataFrame            # method x (tasks, group means, both means, params)
    std: pd.DataFrame             # method x task, std over seeds (NaN for a single seed)
    seeds: pd.DataFrame           # method x task, number of seeds
    records: pd.DataFrame = field(default_factory=pd.DataFrame)  # the records reported
    missing: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    published: pd.DataFrame | None = None  # same columns as `mean`, rows "<method> (published)"
    published_labels: pd.DataFrame | None = None  # per published row: PUBLISHED_LABELS
    extra_columns: list[str] = field(default_factory=list)  # methods' own columns (e.g. LION's solver)
    protocol: str = ""            # one line: splits, selection, seeds, normalisation, resizing, weights
    # for the results page (`--format html`): failed runs, and the figures of --plots as SVG
    failed: list[dict] = field(default_factory=list)
    figure_svgs: dict[str, str] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return [t.name for t in self.suite.tasks]

    @property
    def not_accuracy(self) -> list[str]:
        return [PARAMS, PARAMS_NO_HEAD, *self.extra_columns]

    @property
    def accuracy_columns(self) -> list[str]:
        return [c for c in self.mean.columns if c not in self.not_accuracy]

    def restrict(self, methods: set[str]) -> "Report":
        keep = self.mean.index.isin(methods)
        self.mean, self.std, self.seeds = self.mean[keep], self.std[keep], self.seeds[keep]
        self.missing = [(m, t) for m, t in self.missing if m in methods]
        return self


def group_names(suite: Suite) -> list[str]:
    return [g.title() for g in suite.groups] if len(suite.groups) > 1 else []


def add_means(acc: pd.DataFrame, suite: Suite) -> pd.DataFrame:
    """Task columns -> task columns, group means, flat mean, mean of group means (NaN if any
    task a mean needs is missing)."""
    table = acc.copy()
    tasks = [t.name for t in suite.tasks]
    groups = group_names(suite)
    for g, name in zip(suite.groups, groups):
        table[name] = acc[[t.name for t in suite.tasks if t.group == g]].mean(axis=1, skipna=False)
    table[FLAT] = acc[tasks].mean(axis=1, skipna=False)
    table[GROUPS] = table[groups].mean(axis=1, skipna=False) if groups else table[FLAT]
    return table


def records_frame(store: Store, suite: str) -> pd.DataFrame:
    rows = []
    for rec in store.records(suite):
        if rec.get("status") != "ok":
            continue
        spec, m = rec["spec"], rec.get("metrics", {})
        rows.append({
            "suite": spec["suite"], "method": spec["method"], "task": spec["task"],
            "seed": spec["seed"], "stage": spec["stage"], "backbone": spec["backbone"],
            "hparams": json.dumps(spec["hparams"], sort_keys=True), "run_id": rec["run_id"],
            # everything of the spec that is not the cell or the seed: one configuration
            "config": json.dumps({k: v for k, v in spec.items() if k not in CELL_KEYS}, sort_keys=True),
            # what the protocol line reads (absent from records written before a key existed)
            **{f"spec_{k}": spec.get(k, MISSING_KEY) for k in PROTOCOL_KEYS},
            # how the record says it was chosen, and the weights it ran with (records written
            # before these existed lack them: the protocol line says "unrecorded")
            "selection": _selection_text(rec.get("selection")),
            "weights_sha256": (rec.get("weights") or {}).get("sha256", MISSING_KEY) if "weights" in rec else MISSING_KEY,
            # --eval-every: the best of the test evaluations during training (a diagnostic)
            **_best_test_epoch(rec.get("curve") or []),
            "finished_at": rec.get("finished_at", ""), "_path": rec.get("_path", ""), **m,
        })
    return pd.DataFrame(rows)


def failed_records(store: Store, suite: str, stage: str) -> list[dict]:
    """The failed runs of a stage that no ok record of the same cell and seed replaced: what a
    results page lists beside the missing cells, with the error and the record's file."""
    failed, ok = [], set()
    for rec in store.records(suite):
        spec = rec.get("spec", {})
        if spec.get("stage") != stage:
            continue
        key = (spec.get("method"), spec.get("task"), spec.get("seed"))
        if rec.get("status") == "ok":
            ok.add(key)
        elif rec.get("status") == "failed":
            failed.append({"method": key[0], "task": key[1], "seed": key[2], "stage": stage,
                           "error": str(rec.get("error") or "")[:500], "path": rec.get("_path", "")})
    return [f for f in failed if (f["method"], f["task"], f["seed"]) not in ok]


def _selection_text(selection: dict | None) -> str:
    if not selection:
        return "unrecorded"
    chosen = {"given": "hyperparameters given", "grid point": "a tune-grid point",
              "selected": f"hyperparameters selected on {selection.get('selected_on')}"}.get(
        selection.get("hparams"), str(selection.get("hparams")))
    return f"{selection.get('epoch', 'last')} epoch, {chosen}"


def _best_test_epoch(curve: list[dict]) -> dict:
    scored = [(e["diagnostic_top1"], e["epoch"]) for e in curve if "diagnostic_top1" in e]
    if not scored:
        return {"best_epoch_top1": float("nan"), "best_epoch": float("nan"), "diagnostic_epochs": 0}
    best = max(scored, key=lambda p: (p[0], -p[1]))  # the earliest of equal bests
    return {"best_epoch_top1": best[0], "best_epoch": best[1], "diagnostic_epochs": len(scored)}


PUBLISHED_LABELS = ("method", "label", "source", "weights", "selection", "config_note")


def published_frame(suite: Suite) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The published rows carried in bench/reference/ for this suite (one or more per method,
    each from one source), indexed by their row names, and for each its label: method, source
    short name, source, backbone weights, how the number was selected, and where this suite does
    not run the published configuration; or None."""
    path = resources.files("bench") / "reference" / f"published_{suite.name}.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        table = pd.read_csv(f, comment="#")
    labels = table.reindex(columns=list(PUBLISHED_LABELS)).fillna("")
    names = [f"{m} (published, {lab}{'†' if note else ''})"
             for m, lab, note in zip(labels["method"], labels["label"], labels["config_note"])]
    table.index = labels.index = names
    tasks = [t.name for t in suite.tasks]
    frame = add_means(table[tasks], suite)
    frame[PARAMS] = table["trainable_params_m"]
    frame[PARAMS_NO_HEAD] = float("nan")
    return frame, labels


def _published_rows(report: "Report", method: str) -> list[str]:
    if report.published_labels is None:
        return []
    labels = report.published_labels
    return list(labels.index[labels["method"] == method])


def published_notes(report: "Report") -> list[str]:
    """One line per published row shown: its source, weights and selection, and the note where
    this suite does not run its configuration (marked † in the row's name)."""
    lines = []
    for method in report.mean.index:
        for name in _published_rows(report, method):
            label = report.published_labels.loc[name]
            line = (f"{name}: {label['source']}; weights {label['weights']}; selected by {label['selection']}")
            if label["config_note"]:
                line += f"; † {label['config_note']}"
            lines.append(line)
    return lines


def build_report(store: Store, suite: Suite, stage: str = "final", compare_published: bool = False,
                 records: pd.DataFrame | None = None, diagnostic: bool = False) -> Report:
    """The report of one stage; `records` is `records_frame(store, suite.name)` when the caller
    has read it already (for the tune grid too), else it is read here."""
    df = records if records is not None else records_frame(store, suite.name)
    notes: list[str] = []
    tuned: set[str] = set()
    if not df.empty:
        tuned = set(df[df["stage"] == "tune"]["method"])
        df = df[df["stage"] == stage]
    if df.empty:
        empty = pd.DataFrame()
        return Report(suite, stage, empty, empty, empty, notes=[
            f"no ok records for suite {suite.name!r} stage {stage!r} under {store.root}"])
    # One configuration per cell: where a cell was run with several (e.g. a later --set), the
    # most recently finished configuration is the one reported, and the report says so.
    keys = ["method", "task", "config"]
    latest = df.groupby(keys)["finished_at"].max().reset_index()
    latest = latest.sort_values("finished_at").groupby(["method", "task"]).tail(1)
    configs = df.groupby(["method", "task"])["config"].nunique()
    for (method, task), n in configs.items():
        if n > 1:
            notes.append(f"{method}/{task}: records with {n} configurations; reporting the latest")
    df = df.merge(latest[keys], on=keys)

    tasks = [t.name for t in suite.tasks]
    df = df[df["task"].isin(tasks)]
    methods = sorted(df["method"].unique())
    grouped = df.groupby(["method", "task"])["top1"]
    acc = grouped.mean().unstack().reindex(index=methods, columns=tasks)
    std = grouped.std().unstack().reindex(index=methods, columns=tasks)
    seeds = grouped.count().unstack().reindex(index=methods, columns=tasks).fillna(0).astype(int)
    missing = [(m, t) for m in methods for t in tasks if pd.isna(acc.loc[m, t])]
    table = add_means(acc, suite)
    protocol, mixed = protocol_line(df, suite, stage, tuned if stage == "final" else set())
    for method, why in mixed.items():  # means over tasks run under different protocols mean nothing
        table.loc[method, [c for c in table.columns if c not in tasks]] = float("nan")
        notes.append(f"{method}: its tasks were run with different {why}; its means are left out")
    params = df.groupby("method")[["trainable_params", "trainable_params_no_head"]].mean() / 1e6
    table[PARAMS] = params["trainable_params"].reindex(methods)
    table[PARAMS_NO_HEAD] = params["trainable_params_no_head"].reindex(methods)
    extra = method_columns(df, methods, table)
    notes += method_notes(methods)
    if diagnostic:
        extra += diagnostic_columns(df, suite, table, notes)
    published = labels = None
    if compare_published:
        found = published_frame(suite)
        if found is None:
            notes.append(f"no published figures are carried for suite {suite.name!r}")
        else:
            published, labels = found
    return Report(suite, stage, table, std, seeds, df, missing, notes, published, labels, extra, protocol)


def _span(lo, hi) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"




def protocol_line(df: pd.DataFrame, suite: Suite, stage: str, tuned: set[str]) -> tuple[str, dict[str, str]]:
    """The protocol of the records reported, as one line, and the methods whose own records mix
    protocols (method -> what differs). Where methods differ from each other, the line says so."""
    specs = pd.DataFrame({"method": df["method"]})
    for key in PROTOCOL_KEYS:
        if key == "checkpoint":  # no file: the backbone's own pretrained weights (timm's, or the demo's)
            specs[key] = df[f"spec_{key}"].map(lambda v: "unrecorded" if v is MISSING_KEY else
                                               "the backbone's own pretrained" if v is None else str(v))
        else:
            specs[key] = df[f"spec_{key}"].map(lambda v: "unrecorded" if v is None or v is MISSING_KEY else
                                               " -> ".join(v) if isinstance(v, list) else str(v))
    # what the record itself states (a record written before these existed: "unrecorded", which
    # mixes with anything, as such a record cannot be told apart from one run today)
    specs["weights_sha256"] = df["weights_sha256"].map(
        lambda v: "unrecorded" if v is MISSING_KEY else "unhashed" if v is None else f"SHA-256 {v[:12]}")
    specs["selection"] = df["selection"]
    mixed = {}
    for method, rows in specs.groupby("method"):
        differ = ([PROTOCOL_KEYS[k] for k in PROTOCOL_KEYS if rows[k].nunique() > 1]
                  + [label for k, label in RECORD_PROTOCOL_KEYS.items()
                     if rows[k][rows[k] != "unrecorded"].nunique() > 1])
        if differ:
            mixed[str(method)] = ", ".join(differ)

    def values(key: str) -> str:
        found = specs.groupby(key)["method"].unique()
        if len(found) == 1:
            return str(found.index[0])
        return "; ".join(f"{v} ({', '.join(sorted(ms))})" for v, ms in found.items()) + " [differs across methods]"

    methods = sorted(specs["method"].unique())
    selected = [m for m in methods if m in tuned]
    given = [m for m in methods if m not in tuned]
    tune_eval = suite.splits.get("tune", ("", "val"))[-1]
    selection = (f"hyperparameters selected on {tune_eval} (last epoch) for {', '.join(selected)}" if selected else "")
    if given:
        selection += ("; " if selection else "") + f"hyperparameters given, not selected, for {', '.join(given)}"
    seeds = sorted(df["seed"].unique())
    per_cell = df.groupby(["method", "task"])["seed"].nunique()
    shown = ", ".join(str(s) for s in seeds[:6]) + (f", ... ({len(seeds)} in all)" if len(seeds) > 6 else "")
    line = (f"Protocol: {stage} stage, trained -> evaluated on {values('splits')}, top-1 after the last epoch; "
            f"{selection}; seeds {shown} ({_span(per_cell.min(), per_cell.max())} per cell); normalisation "
            f"{values('normalize')}; resizing {values('interpolation')}; backbone {values('backbone')}, weights "
            f"{values('checkpoint')} ({values('weights_sha256')}); precision {values('precision')}; each record: "
            f"{values('selection')}.")
    return line, mixed


BEST_EPOCH, OPTIMISM = "Best test epoch (groups)", "Best-epoch gain (groups)"


def diagnostic_columns(df: pd.DataFrame, suite: Suite, table: pd.DataFrame, notes: list[str]) -> list[str]:
    """`--diagnostic`: beside our last-epoch numbers, what selecting the best test epoch (as most
    published rows do) would have reported, as a mean of group means, and how much higher that is.
    Read from the test evaluations `bench run --eval-every N` kept in each record's curve; nothing
    selects on them. A cell whose records have none leaves the method's columns empty."""
    tasks = [t.name for t in suite.tasks]
    best = df.groupby(["method", "task"])["best_epoch_top1"].mean().unstack().reindex(index=table.index, columns=tasks)
    have = df.groupby(["method", "task"])["diagnostic_epochs"].min().unstack().reindex(index=table.index, columns=tasks)
    best = best.where(have > 0)
    table[BEST_EPOCH] = add_means(best, suite)[GROUPS]
    table[OPTIMISM] = table[BEST_EPOCH] - table[GROUPS]
    evaluated = df.loc[df["diagnostic_epochs"] > 0, "diagnostic_epochs"]
    if evaluated.empty:
        notes.append("--diagnostic: no record has test evaluations during training; run the final stage with "
                      "`bench run ... --eval-every N --force` to record them")
    else:
        notes.append(f"{BEST_EPOCH}: the top-1 of the best of {_span(evaluated.min(), evaluated.max())} test "
                     f"evaluations during training (bench run --eval-every), as most published rows select it; a "
                     f"diagnostic that nothing selects on. {OPTIMISM}: how much higher that is than our last-epoch "
                     "mean of group means")
    return [BEST_EPOCH, OPTIMISM]


def method_notes(methods: list[str]) -> list[str]:
    """What the methods reported declare every report must say about their rows."""
    from ..method import METHODS

    return [f"{m}: {METHODS.get(m).report_note}" for m in methods if m in METHODS and METHODS.get(m).report_note]


def method_columns(df: pd.DataFrame, methods: list[str], table: pd.DataFrame) -> list[str]:
    """The columns methods declare (`register_method(report_columns=...)`): the mean of the
    record metrics each names, for that method's rows; returns the labels added."""
    from ..method import METHODS

    added: list[str] = []
    for method in methods:
        if method not in METHODS:  # records of a plugin method not loaded now
            continue
        for label, keys in METHODS.get(method).report_columns.items():
            keys = [k for k in keys if k in df.columns]
            if not keys:
                continue
            if label not in table.columns:
                table[label] = float("nan")
                added.append(label)
            table.loc[method, label] = df.loc[df["method"] == method, keys].mean().mean()
    return added


# ------------------------------------------------------------------------------------ display
def _fmt(value, std=None) -> str:
    if pd.isna(value):
        return MISSING
    if std is not None and not pd.isna(std):
        return f"{value:.1f} ± {std:.1f}"
    return f"{value:.1f}"


def fmt_extra(column: str, value, missing: str = MISSING) -> str:
    """A method's own column, or a diagnostic one (a gain carries its sign)."""
    if pd.isna(value):
        return missing
    return f"{value:+.1f}" if column == OPTIMISM else f"{value:.1f}"


def _fmt_params(millions) -> str:
    if pd.isna(millions):
        return MISSING
    return f"{millions:.2f}" if millions >= 0.01 else f"{millions:.2g}"


def comparison_rows(report: Report) -> pd.DataFrame:
    """Published rows of the methods we ran, and our difference to them, per column."""
    if report.published is None:
        return pd.DataFrame()
    rows = {}
    for method in report.mean.index:
        names = _published_rows(report, method)
        for name in names:
            rows[name] = report.published.loc[name]
        if names:  # the first published row of a method is the one ours is compared with
            first = report.published.loc[names[0]]
            rows[f"{method} (ours − published)"] = report.mean.loc[method, report.accuracy_columns] - \
                first[report.accuracy_columns]
    return pd.DataFrame(rows).T.reindex(columns=report.mean.columns)


def display_frame(report: Report, with_comparison: bool = True) -> pd.DataFrame:
    """Strings as a paper shows them: accuracy with one decimal (± std over seeds)."""
    out = pd.DataFrame(index=report.mean.index)
    for col in report.mean.columns:
        if col == PARAMS_NO_HEAD:
            continue
        if col == PARAMS:
            out[col] = [_fmt_params(v) for v in report.mean[col]]
        elif col in report.extra_columns:
            out[col] = [fmt_extra(col, v) for v in report.mean[col]]
        elif col in report.tasks:
            out[col] = [_fmt(report.mean.loc[m, col], report.std.loc[m, col]) for m in report.mean.index]
        else:
            out[col] = [_fmt(v) for v in report.mean[col]]
    comparison = comparison_rows(report) if with_comparison else pd.DataFrame()
    for name, row in comparison.iterrows():
        delta = "−" in name
        out.loc[name] = [
            MISSING if c in report.extra_columns else
            (MISSING if pd.isna(row[c]) else f"{row[c]:+.1f}") if delta and c != PARAMS
            else (_fmt_params(row[c]) if c == PARAMS else _fmt(row[c]))
            for c in out.columns]
    out.columns = [_label(report, c) for c in out.columns]
    out.index.name = "method"
    return out


def _label(report: Report, column: str) -> str:
    for t in report.suite.tasks:
        if t.name == column:
            return t.label
    return column


def rich_table(report: Report, width: int | None = None):
    """The table for a terminal of `width` columns (None: any width).

    Method names and numbers are never cut: when every column does not fit, the per-task columns
    go first (the group and overall means stay), then the group columns, and the caption says how
    to see the rest; long published-row names wrap at their spaces.
    """
    from rich.table import Table

    frame = display_frame(report)
    method_width = max([len("method")] + [len(str(n).split(" (")[0]) for n in frame.index])
    task_cols = [c for c in frame.columns if c in {t.label for t in report.suite.tasks}]
    group_cols = [c for c in frame.columns if c in group_names(report.suite)]
    layouts = [list(frame.columns),
               [c for c in frame.columns if c not in task_cols],
               [c for c in frame.columns if c not in task_cols and c not in group_cols]]
    shown = layouts[0]
    if width is not None:
        for columns in layouts:
            shown = columns
            if _needed_width(frame, columns, method_width) <= width:
                break
    table = Table(title=f"{report.suite.name} · top-1 (%) · {report.stage} stage")
    table.add_column("method", style="bold", min_width=method_width, overflow="fold")
    for col in shown:
        table.add_column("\n".join(str(col).split()), justify="right", no_wrap=True,
                         min_width=_cell_width(frame, col))
    for method, row in frame[shown].iterrows():
        table.add_row(str(method), *row.tolist())
    hidden = [c for c in frame.columns if c not in shown]
    if hidden:
        table.caption = (f"{len(hidden)} columns ({', '.join(hidden)}) left out to fit {width} columns: widen "
                         f"the terminal (e.g. COLUMNS=200), or see every column with `bench report "
                         f"--suite {report.suite.name} --format md`")
    return table


def _cell_width(frame: pd.DataFrame, column: str) -> int:
    """A column's width: its widest cell or its header's widest line (headers break at spaces)."""
    return max([len(w) for w in str(column).split()] + [len(str(v)) for v in frame[column]])


def _needed_width(frame: pd.DataFrame, columns: list[str], method_width: int) -> int:
    # each column adds its content, a space either side and a border
    return 1 + (method_width + 3) + sum(_cell_width(frame, c) + 3 for c in columns)


def file_stem(report: Report) -> str:
    return f"{report.suite.name}_{report.stage}"
