"""Ranks and paired comparisons across tasks, with scipy's tests (Demsar 2006 for the protocol).

- `ranks`: each method's rank on each task (1 = best top-1, ties share the mean rank) over the
  tasks every method has, averaged; the Friedman test of "all methods rank alike".
- `compare`: two methods task by task: the difference of their mean top-1 with a 95% bootstrap
  interval over seeds (each method's seeds resampled within the task), and the Wilcoxon
  signed-rank test over the tasks' differences.

Each result says when there are too few tasks or seeds for it to mean anything, rather than
printing a p-value that cannot be small.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UserError
from .table import Report

CONFIDENCE = 0.95
RESAMPLES = 9999


@dataclass
class Ranks:
    average: pd.Series                      # method -> average rank (1 = best), best first
    tasks: list[str]                        # the tasks every method has
    statistic: float = float("nan")         # Friedman chi-square
    pvalue: float = float("nan")
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        ranks = ", ".join(f"{m} {r:.2f}" for m, r in self.average.items())
        text = f"average rank over {len(self.tasks)} tasks (1 = best): {ranks}"
        if not np.isnan(self.pvalue):
            text += (f"; Friedman chi2 = {self.statistic:.2f}, p = {self.pvalue:.3g} "
                     f"({len(self.average)} methods, {len(self.tasks)} tasks)")
        return "; ".join([text, *self.notes])


def ranks(report: Report) -> Ranks | None:
    """Average ranks over the tasks every method has, and the Friedman test; None for < 2 methods."""
    acc = report.mean[report.tasks].dropna(axis=1, how="any")
    if len(acc.index) < 2:
        return None
    if acc.shape[1] == 0:
        return Ranks(pd.Series(dtype=float), [], notes=["no task has every method: no ranks"])
    per_task = acc.rank(axis=0, ascending=False, method="average")
    out = Ranks(per_task.mean(axis=1).sort_values(), list(acc.columns))
    k, n = acc.shape
    if k < 3:
        out.notes.append("the Friedman test needs at least 3 methods")
    elif n < 2:
        out.notes.append("the Friedman test needs at least 2 tasks")
    else:
        result = stats.friedmanchisquare(*[acc.loc[m].to_numpy() for m in acc.index])
        out.statistic, out.pvalue = float(result.statistic), float(result.pvalue)
        if n < 10:
            out.notes.append(f"with {n} tasks the chi-square approximation of the Friedman test is rough")
    dropped = int(report.mean[report.tasks].notna().any(axis=0).sum()) - n
    if dropped:
        out.notes.append(f"{dropped} tasks left out: not every method has them")
    return out


@dataclass
class Comparison:
    a: str
    b: str
    per_task: pd.DataFrame                  # task, a, b, difference, low, high, seeds a, seeds b
    statistic: float = float("nan")         # Wilcoxon signed-rank
    pvalue: float = float("nan")
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        d = self.per_task["difference"].dropna()
        text = (f"{self.a} - {self.b}: mean difference {d.mean():+.2f} points over {len(d)} tasks "
                f"({(d > 0).sum()} better, {(d < 0).sum()} worse, {(d == 0).sum()} equal)")
        if not np.isnan(self.pvalue):
            text += f"; Wilcoxon signed-rank W = {self.statistic:.1f}, p = {self.pvalue:.3g} (two-sided)"
        return "; ".join([text, *self.notes])

    def markdown(self) -> str:
        frame = self.per_task.copy()
        for col in (self.a, self.b, "difference", "low", "high"):
            frame[col] = [("—" if pd.isna(v) else f"{v:+.2f}" if col != self.a and col != self.b else f"{v:.2f}")
                          for v in frame[col]]
        frame = frame.rename(columns={"low": f"{CONFIDENCE:.0%} low", "high": f"{CONFIDENCE:.0%} high"})
        return (f"{self.summary()}.\n\nPer task: mean top-1 (%) of each method, their difference and its "
                f"{CONFIDENCE:.0%} bootstrap interval over seeds ({RESAMPLES} resamples of each method's "
                "seeds within the task).\n\n" + frame.to_markdown(index=False, disable_numparse=True) + "\n")


    def latex(self) -> str:
        """The per-task table as booktabs LaTeX to \\input, with the summary as its caption."""
        from .latex import _escape

        frame = self.per_task.copy()
        for col in (self.a, self.b, "difference", "low", "high"):
            frame[col] = [("--" if pd.isna(v) else f"${v:+.2f}$" if col not in (self.a, self.b) else f"{v:.2f}")
                          for v in frame[col]]
        frame["task"] = [_escape(str(t)) for t in frame["task"]]
        frame = frame.rename(columns={self.a: _escape(self.a), self.b: _escape(self.b),
                                      "low": f"{CONFIDENCE:.0%} low".replace("%", "\\%"),
                                      "high": f"{CONFIDENCE:.0%} high".replace("%", "\\%"),
                                      f"seeds {self.a}": f"seeds {_escape(self.a)}",
                                      f"seeds {self.b}": f"seeds {_escape(self.b)}"})
        caption = _escape(f"{self.summary()}. Per task: mean top-1 (%), the difference and its "
                          f"{CONFIDENCE:.0%} bootstrap interval over seeds.")
        return frame.style.hide(axis="index").to_latex(
            hrules=True, column_format="l" + "r" * (len(frame.columns) - 1), caption=caption,
            label=f"tab:{_escape(self.a)}-vs-{_escape(self.b)}".replace("\\_", "-"))


def compare(report: Report, a: str, b: str, seed: int = 0) -> Comparison:
    """Method `a` against method `b`, task by task and over the tasks."""
    for name in (a, b):
        if name not in report.mean.index:
            raise UserError(f"--compare {a},{b}: no {report.stage}-stage records of {name!r} in suite "
                            f"{report.suite.name!r}; methods with records: {', '.join(report.mean.index)}")
    if a == b:
        raise UserError(f"--compare {a},{b}: name two different methods")
    rec = report.records
    rng = np.random.default_rng(seed)
    rows, few_seeds = [], []
    for task in report.suite.tasks:
        xa = rec[(rec["method"] == a) & (rec["task"] == task.name)]["top1"].to_numpy(float)
        xb = rec[(rec["method"] == b) & (rec["task"] == task.name)]["top1"].to_numpy(float)
        if not len(xa) or not len(xb):
            continue
        diff = xa.mean() - xb.mean()
        low = high = float("nan")
        if len(xa) > 1 and len(xb) > 1:
            ci = stats.bootstrap((xa, xb), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
                                 confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile",
                                 rng=rng, vectorized=True).confidence_interval
            low, high = float(ci.low), float(ci.high)
        else:
            few_seeds.append(task.label)
        rows.append({"task": task.label, a: xa.mean(), b: xb.mean(), "difference": diff, "low": low, "high": high,
                     f"seeds {a}": len(xa), f"seeds {b}": len(xb)})
    per_task = pd.DataFrame(rows, columns=["task", a, b, "difference", "low", "high", f"seeds {a}", f"seeds {b}"])
    out = Comparison(a, b, per_task)
    if few_seeds:
        out.notes.append(f"no interval where a method has one seed ({', '.join(few_seeds)})")
    diffs = per_task["difference"].to_numpy(float)
    nonzero = diffs[diffs != 0]
    if len(per_task) == 0:
        out.notes.append("the two methods share no task")
    elif len(nonzero) < 6:
        # two-sided exact p is at least 2 / 2**n: above 0.05 for n <= 5
        out.notes.append(f"{len(nonzero)} tasks with a difference: too few for the Wilcoxon test to reach "
                         "p < 0.05 whatever the data (it needs 6)")
    if len(nonzero):
        result = stats.wilcoxon(diffs)
        out.statistic, out.pvalue = float(result.statistic), float(result.pvalue)
    return out


CELL_RESAMPLES = 2000


def _seed_samples(report: Report, method: str) -> dict[str, np.ndarray]:
    rec = report.records
    rows = rec[rec["method"] == method]
    return {t: rows[rows["task"] == t]["top1"].to_numpy(float) for t in report.tasks}


def cell_intervals(report: Report, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """95% percentile-bootstrap interval of each method x task mean over its seeds (NaN for one
    seed, or none): the low and the high bounds, shaped like the table's task columns."""
    rng = np.random.default_rng(seed)
    low = pd.DataFrame(np.nan, index=report.mean.index, columns=report.tasks)
    high = low.copy()
    for method in report.mean.index:
        by_count: dict[int, list[tuple[str, np.ndarray]]] = {}
        for task, x in _seed_samples(report, method).items():
            if len(x) >= 2:
                by_count.setdefault(len(x), []).append((task, x))
        for cells in by_count.values():  # one scipy call per seed count: a row per task
            tasks = [t for t, _ in cells]
            data = np.stack([x for _, x in cells])
            with warnings.catch_warnings():  # constant rows: set below
                warnings.simplefilter("ignore", stats.DegenerateDataWarning)
                ci = stats.bootstrap((data,), np.mean, confidence_level=CONFIDENCE, n_resamples=CELL_RESAMPLES,
                                     method="percentile", rng=rng, vectorized=True, axis=-1).confidence_interval
            low.loc[method, tasks], high.loc[method, tasks] = ci.low, ci.high
            constant = np.ptp(data, axis=-1) == 0  # every seed the same: the interval is that value
            for task, row in zip(np.array(tasks)[constant], data[constant]):
                low.loc[method, task] = high.loc[method, task] = row[0]
    return low, high


def group_mean_interval(report: Report, method: str, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of a method's mean of group means, resampling its seeds
    within each task (tasks are the benchmark, not a sample); NaN when a task is missing or every
    task has a single seed."""
    from .table import group_names

    samples = _seed_samples(report, method)
    if any(len(x) == 0 for x in samples.values()) or all(len(x) < 2 for x in samples.values()):
        return float("nan"), float("nan")
    groups = [[report.tasks.index(t.name) for t in report.suite.tasks if t.group == g] for g in report.suite.groups]
    if not group_names(report.suite):
        groups = [list(range(len(report.tasks)))]

    def statistic(*xs, axis=-1):
        means = [x.mean(axis=axis) for x in xs]
        return sum(sum(means[i] for i in g) / len(g) for g in groups) / len(groups)

    ci = stats.bootstrap(tuple(samples[t] for t in report.tasks), statistic, confidence_level=CONFIDENCE,
                         n_resamples=CELL_RESAMPLES, method="percentile", rng=np.random.default_rng(seed),
                         vectorized=True).confidence_interval
    return float(ci.low), float(ci.high)


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of average ranks for k methods on n tasks (Demsar 2006):
    q_alpha * sqrt(k (k + 1) / (6 n)), q_alpha the studentized range quantile over sqrt(2)."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(k * (k + 1) / (6 * n)))


def cliques(average: pd.Series, cd: float) -> list[list[str]]:
    """The maximal runs of methods (in rank order) whose average ranks differ by less than `cd`:
    the groups a critical-difference diagram joins with a bar."""
    names, values = list(average.index), list(average.to_numpy(float))
    runs = []
    for i in range(len(names)):
        j = i
        while j + 1 < len(names) and values[j + 1] - values[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in runs):
            runs.append((i, j))
    return [names[a:b + 1] for a, b in runs]
