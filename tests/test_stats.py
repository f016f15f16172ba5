"""Ranks, the Friedman test and paired comparisons, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from bench.errors import UserError
from bench.reports.stats import compare, ranks
from bench.reports.table import build_report
from bench.spec import RunSpec
from bench.store import Store
from bench.suite import load_suite

VTAB = load_suite("vtab1k")


def add(store, method, task, seed, top1):
    spec = RunSpec(suite="vtab1k", task=task, method=method, seed=seed, stage="final",
                   backbone="vit_base_patch16_224.orig_in21k", checkpoint=None, image_size=224, hparams={"lr": 1.0})
    store.write(spec, {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "ok", "finished_at": "2026-01-01",
                       "metrics": {"top1": top1, "trainable_params": 1000, "trainable_params_no_head": 900}})


def test_average_ranks_and_the_friedman_statistic_match_the_hand_computation(tmp_path):
    store = Store(tmp_path)
    tasks = [t.name for t in VTAB.tasks[:4]]
    table = {"a": [90, 80, 70, 60], "b": [85, 75, 65, 65.5], "c": [10, 10, 10, 10]}  # b beats a on the 4th
    for method, values in table.items():
        for task, value in zip(tasks, values):
            add(store, method, task, 1, value)
    add(store, "a", VTAB.tasks[5].name, 1, 50.0)  # a task only one method has: left out of the ranks
    r = ranks(build_report(store, VTAB))
    assert r.tasks == tasks
    assert r.average.to_dict() == {"a": 1.25, "b": 1.75, "c": 3.0}
    # chi2 = 12 N / (k (k + 1)) * sum(R_j^2) - 3 N (k + 1) = 4 * 13.625 - 48
    assert r.statistic == pytest.approx(6.5)
    assert r.pvalue == pytest.approx(math.exp(-6.5 / 2))  # chi-square with 2 degrees of freedom
    assert any("1 tasks left out" in n for n in r.notes) and any("rough" in n for n in r.notes)


def test_two_methods_get_ranks_but_no_friedman_test(tmp_path):
    store = Store(tmp_path)
    for task, a, b in zip(VTAB.tasks[:3], (50.0, 61.0, 52.0), (60.0, 59.0, 58.0)):  # a wins the second
        add(store, "a", task.name, 1, a)
        add(store, "b", task.name, 1, b)
    r = ranks(build_report(store, VTAB))
    assert r.average.to_dict() == {"b": pytest.approx(4 / 3), "a": pytest.approx(5 / 3)}
    assert math.isnan(r.pvalue) and "at least 3 methods" in r.line()


def test_compare_gives_each_tasks_difference_an_interval_and_a_wilcoxon_test_over_tasks(tmp_path):
    store = Store(tmp_path)
    tasks = VTAB.tasks[:6]
    for i, task in enumerate(tasks):
        for seed, jitter in ((1, 0.0), (2, 2.0)):
            add(store, "a", task.name, seed, 70.0 + i + jitter)
            add(store, "b", task.name, seed, 60.0 + jitter)
    c = compare(build_report(store, VTAB), "a", "b")
    assert list(c.per_task["difference"]) == [10.0 + i for i in range(6)]
    first = c.per_task.iloc[0]  # a: {70, 72}, b: {60, 62}: resampled differences lie in [8, 12]
    assert 8.0 <= first["low"] <= 10.0 <= first["high"] <= 12.0
    # all six differences positive: W = 0, exact two-sided p = 2 / 2**6
    assert c.statistic == 0.0 and c.pvalue == pytest.approx(2 / 64)
    assert "6 better, 0 worse" in c.summary() and "too few" not in c.summary()
    md = c.markdown()
    assert "| task" in md and "95% low" in md and "+10.00" in md
    tex = c.latex()
    assert "\\begin{table}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "$+10.00$" in tex and "95\\% low" in tex and "Wilcoxon" in tex and "(\\%)" in tex
    assert "95% " not in tex.replace("\\%", "")  # every percent sign escaped
    assert tex.count("\\\\\n") == 7  # the header and the six tasks


def test_compare_says_when_tasks_or_seeds_are_too_few_and_refuses_unknown_methods(tmp_path):
    store = Store(tmp_path)
    for i, task in enumerate(VTAB.tasks[:4]):
        add(store, "a", task.name, 1, 70.0 + i)
        add(store, "b", task.name, 1, 60.0)
    report = build_report(store, VTAB)
    c = compare(report, "a", "b")
    assert c.per_task["low"].isna().all()
    assert "no interval where a method has one seed" in c.summary()
    assert "too few for the Wilcoxon test to reach p < 0.05 whatever the data (it needs 6)" in c.summary()
    with pytest.raises(UserError, match="no final-stage records of 'lion'.*methods with records: a, b"):
        compare(report, "a", "lion")
    with pytest.raises(UserError, match="two different methods"):
        compare(report, "a", "a")


def test_bootstrap_intervals_of_a_cell_and_of_the_mean_of_group_means_match_the_hand_computation(tmp_path):
    from bench.reports.csv import csv_frame
    from bench.reports.stats import cell_intervals, group_mean_interval

    store = Store(tmp_path)
    natural = next(t.name for t in VTAB.tasks if t.group == "natural")
    n_natural = sum(t.group == "natural" for t in VTAB.tasks)
    for task in VTAB.tasks:
        seeds = (40.0, 60.0) if task.name == natural else (50.0, 50.0)
        for seed, top1 in enumerate(seeds):
            add(store, "a", task.name, seed, top1)
        add(store, "b", task.name, 0, 30.0)  # one seed: no interval
    report = build_report(store, VTAB)
    low, high = cell_intervals(report)
    # resampled means of {40, 60} are 40, 50, 60 with probability 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% points are the extremes
    assert (low.loc["a", natural], high.loc["a", natural]) == (40.0, 60.0)
    assert (low.loc["a", "dtd"], high.loc["a", "dtd"]) == (50.0, 50.0)
    assert low.loc["b"].isna().all()
    # only the natural task varies: the mean of group means is 50 + (m - 50) / (3 * n_natural)
    lo, hi = group_mean_interval(report, "a")
    assert lo == pytest.approx(50 - 10 / (3 * n_natural)) and hi == pytest.approx(50 + 10 / (3 * n_natural))
    assert all(math.isnan(v) for v in group_mean_interval(report, "b"))
    frame = csv_frame(report)
    assert frame.loc["a", f"{natural} ci95 high"] == 60.0 and "Mean (groups) ci95 low" in frame.columns


def test_the_critical_difference_is_demsars_and_cliques_join_what_it_cannot_tell_apart():
    import pandas as pd

    from bench.reports.stats import cliques, critical_difference

    # Demsar (2006), section 3.2.4: 4 methods on 14 data sets, q_0.05 = 2.569, CD = 1.25
    assert critical_difference(4, 14) == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 14)), rel=1e-3)
    average = pd.Series({"a": 1.0, "b": 1.5, "c": 3.0, "d": 3.2, "e": 3.9})
    assert cliques(average, 1.0) == [["a", "b"], ["c", "d", "e"]]
    assert cliques(average, 0.4) == [["c", "d"]]
    assert cliques(average, 5.0) == [["a", "b", "c", "d", "e"]]
