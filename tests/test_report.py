"""Reports from hand-made records: both means right, missing cells flagged, LaTeX well formed."""

import re

import numpy as np
import pytest

from bench.reports import write_report
from bench.reports.latex import latex_table
from bench.reports.markdown import markdown_table
from bench.reports.table import FLAT, GROUPS, build_report
from bench.spec import RunSpec
from bench.store import Store
from bench.suite import load_suite

VTAB = load_suite("vtab1k")


def add_record(store, method, task, seed, top1, params=1000, stage="final", hparams=None, finished="2026-01-01"):
    spec = RunSpec(suite="vtab1k", task=task, method=method, seed=seed, stage=stage,
                   backbone="vit_base_patch16_224.orig_in21k", checkpoint=None, image_size=224,
                   hparams=hparams or {"lr": 1.0})
    store.write(spec, {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "ok", "finished_at": finished,
                       "metrics": {"top1": top1, "trainable_params": params, "trainable_params_no_head": params - 100,
                                   "peak_memory_mib": 100.0, "train_seconds": 1.0}})


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "results")
    rng = np.random.default_rng(0)
    for i, task in enumerate(VTAB.tasks):
        for seed in (1, 2):
            add_record(s, "a", task.name, seed, 50.0 + i + seed)        # mean 51.5 + i, std 0.707
            add_record(s, "b", task.name, seed, float(rng.integers(10, 90)), params=5000)
    return s


def test_group_means_the_flat_mean_and_the_mean_of_group_means_are_right(store):
    report = build_report(store, VTAB)
    row = report.mean.loc["a"]
    acc = {t.name: 51.5 + i for i, t in enumerate(VTAB.tasks)}
    groups = {g: [acc[t.name] for t in VTAB.tasks if t.group == g] for g in VTAB.groups}
    assert row["Natural"] == pytest.approx(np.mean(groups["natural"]))       # 7 tasks: 54.5
    assert row["Specialized"] == pytest.approx(np.mean(groups["specialized"]))  # 4 tasks: 60.0
    assert row["Structured"] == pytest.approx(np.mean(groups["structured"]))    # 8 tasks: 66.0
    assert row[FLAT] == pytest.approx(np.mean(list(acc.values())))               # 60.5
    assert row[GROUPS] == pytest.approx(np.mean([54.5, 60.0, 66.0]))            # 60.1666
    assert row[FLAT] != pytest.approx(row[GROUPS])  # the two averages really differ here
    assert report.std.loc["a", "cifar"] == pytest.approx(np.std([51, 52], ddof=1))
    assert report.seeds.loc["a", "cifar"] == 2
    assert report.mean.loc["b", "Params (M)"] == pytest.approx(0.005)


def test_missing_cells_are_flagged_and_never_averaged_over(store, tmp_path):
    path = next((store.root / "vtab1k" / "a" / "dmlab").glob("*.json"))
    for p in path.parent.glob("*.json"):
        p.unlink()
    report = build_report(store, VTAB)
    assert report.missing == [("a", "dmlab")]
    row = report.mean.loc["a"]
    assert np.isnan(row["dmlab"]) and np.isnan(row["Structured"]) and np.isnan(row[FLAT]) and np.isnan(row[GROUPS])
    assert not np.isnan(row["Natural"])
    assert "Missing cells: a/dmlab" in markdown_table(report)


def test_the_latest_configuration_of_a_cell_is_reported_and_the_report_says_so(store):
    add_record(store, "a", "cifar", 1, 99.0, hparams={"lr": 0.1}, finished="2027-01-01")
    report = build_report(store, VTAB)
    assert report.mean.loc["a", "cifar"] == 99.0
    assert any("a/cifar: records with 2 configurations" in n for n in report.notes)


def test_latex_is_balanced_booktabs_with_the_best_in_bold_and_the_second_underlined(store):
    tex = latex_table(build_report(store, VTAB))
    assert tex.count("\\begin{") == tex.count("\\end{")
    assert tex.count("{") == tex.count("}")
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert tex.count(rule) == 1
    assert "\\multicolumn{7}{c}{Natural}" in tex and "\\multicolumn{8}{c}{Structured}" in tex
    assert "dSpr-Loc" in tex and "Mean (groups)" in tex
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0]
    rows = {line.split("&")[0].strip(): [c.strip() for c in line.rstrip("\\ \n").split("&")[1:]]
            for line in body.strip().splitlines()}
    report = build_report(store, VTAB)
    for j, col in enumerate(report.mean.columns.drop("Params no head (M)")):
        if col == "Params (M)":
            assert not any("textbf" in rows[m][j] for m in rows)
            continue
        best = report.mean[col].idxmax()
        worst = report.mean[col].idxmin()
        assert rows[best][j].startswith("\\textbf{"), (col, rows[best][j])
        assert rows[worst][j].startswith("\\underline{"), (col, rows[worst][j])  # two methods: 2nd = last
    assert re.search(r"\$\\pm\$", tex)


def test_compare_published_prints_the_vpt_rows_and_our_difference(store, tmp_path):
    # give method "linear" records equal to the VPT paper's linear row + 1
    import csv
    from importlib import resources
    text = (resources.files("bench") / "reference" / "published_vtab1k.csv").read_text()
    rows = [r for r in csv.reader(text.splitlines()) if r and not r[0].startswith("#")]
    published = dict(zip(rows[0], next(r for r in rows[1:] if r[0] == "linear")))
    for task in VTAB.tasks:
        add_record(store, "linear", task.name, 1, float(published[task.name]) + 1.0)
    report = build_report(store, VTAB, compare_published=True)
    md = markdown_table(report)
    assert "linear (published, VPT)" in md and "linear (ours − published)" in md
    delta_row = next(line for line in md.splitlines() if line.startswith("| linear (ours"))
    assert delta_row.count("+1.0") >= 19 + 5  # every task, every group mean, both means
    files = write_report(report, tmp_path / "out", ["md", "latex", "csv"])
    assert [p.suffix for p in files] == [".md", ".tex", ".csv"]
    assert "linear (published, VPT)" in files[2].read_text()
    # every published row says where it comes from and how its number was selected
    assert "linear (published, VPT): VPT paper Table 1" in md and "selected by val200 tuning then last epoch" in md


def test_a_published_row_whose_configuration_the_suite_does_not_run_is_marked(store):
    for task in VTAB.tasks:
        add_record(store, "vpt-shallow", task.name, 1, 70.0)
        add_record(store, "vpt-deep", task.name, 1, 70.0)
    md = markdown_table(build_report(store, VTAB, compare_published=True))
    assert "| vpt-shallow (published, VPT†)" in md and "| vpt-deep (published, VPT†)" in md
    assert "† VPT tuned the prompt length per task" in md
    assert "† params 0.56M as published" in md


def test_plots_are_written_as_png_and_pdf(store, tmp_path):
    from bench.reports.plots import make_plots
    paths = make_plots(build_report(store, VTAB), tmp_path / "plots")
    names = {p.name for p in paths}
    for stem in ("accuracy_vs_params", "groups", "costs", "tasks_heatmap"):
        assert f"vtab1k_final_{stem}.png" in names and f"vtab1k_final_{stem}.pdf" in names
    for p in paths:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") or head.startswith(b"%PDF")


@pytest.mark.parametrize("width", ["column", "page"])
def test_every_figure_with_sixteen_long_named_methods_has_no_overlapping_text(tmp_path, width):
    from matplotlib.text import Text

    from bench.reports.plots import COLUMN_WIDTH, PAGE_WIDTH, figures

    store = Store(tmp_path / "results")
    methods = ["linear", "full", "vpt-shallow", "vpt-deep", "lion", "lora", "bitfit", "ssf", "adapter",
               "adapter-houlsby", "adaptformer", "fact-tt", "fact-tk", "convpass", "repadapter",
               "my-very-long-method-name-v2"]
    for m, method in enumerate(methods):
        for t, task in enumerate(VTAB.tasks):
            # similar sizes and accuracies: the case where labels beside points collided
            add_record(store, method, task.name, 1, 70.0 + (m % 3) / 10 + t, params=100_000 + 1000 * (m % 4))
    report = build_report(store, VTAB)
    inches = COLUMN_WIDTH if width == "column" else PAGE_WIDTH
    for name, fig in figures(report, inches).items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.findobj(Text)
                 if t.get_visible() and t.get_text().strip()]
        labels = [text for text, _ in boxes]
        # every method is named somewhere (the CD diagram adds its rank: "name (2.50)")
        assert all(any(t == m or t.startswith(f"{m} (") for t in labels) for m in methods), name
        for i, (a, box_a) in enumerate(boxes):
            for b, box_b in boxes[i + 1:]:
                overlap_w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
                overlap_h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
                assert not (overlap_w > 1 and overlap_h > 1), f"{name} at {inches} in: {a!r} overlaps {b!r}"
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_every_published_row_of_a_method_is_shown_with_its_source_and_selection(store):
    for task in VTAB.tasks:
        add_record(store, "lora", task.name, 1, 70.0)
    report = build_report(store, VTAB, compare_published=True)
    md = markdown_table(report)
    assert "| lora (published, NOAH†)" in md and "| lora (published, PETL_Vision rerun†)" in md
    # NOAH's number is the best test epoch: the label says so beside the row
    assert "lora (published, NOAH†): NOAH paper Table 1; weights Google ViT-B_16.npz (ImageNet-21k); " \
           "selected by best test epoch" in md
    assert "selected by val200 tuning then last epoch; 1 seed" in md
    # ours minus the first published row (NOAH's: 67.1 on CIFAR-100)
    delta = next(line for line in md.splitlines() if line.startswith("| lora (ours"))
    assert "+2.9" in delta


@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_terminal_table_never_cuts_a_method_name_or_a_number(tmp_path, width):
    import io

    from rich.console import Console

    from bench.reports.table import rich_table

    demo = load_suite("demo")
    store = Store(tmp_path / "results")
    methods = ["vpt-deep", "vpt-shallow", "adapter-houlsby", "adaptformer", "linear", "lion"]
    for m, method in enumerate(methods):
        for t, task in enumerate(demo.tasks):
            for seed in (1, 2):
                spec = RunSpec(suite="demo", task=task.name, method=method, seed=seed, stage="final",
                               backbone=demo.backbone, checkpoint=None, image_size=32, hparams={"lr": 1.0})
                store.write(spec, {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "ok",
                                   "finished_at": "2026-01-01",
                                   "metrics": {"top1": 60.0 + m + t / 10 + seed / 100, "trainable_params": 123456,
                                               "trainable_params_no_head": 123000}})
    report = build_report(store, demo, "final")
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(rich_table(report, width=width))
    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines())
    assert "…" not in text
    for method in methods:  # whole, on one line
        assert re.search(rf"│ {re.escape(method)}\s", text), method
    assert all(f"{v:.1f}" in text for v in report.mean[GROUPS])  # the group means are always there
    if width == 200:
        assert all(t.label in text for t in demo.tasks) and "left out" not in text
    else:
        assert "left out to fit" in text and "--format md" in text


def test_hparams_report_names_the_chosen_point_the_runner_up_and_the_whole_grid(tmp_path):
    import pandas as pd

    from bench.protocol import select
    from bench.reports.hparams import write_hparams
    from bench.reports.table import records_frame

    store = Store(tmp_path / "results")
    tasks = [t.name for t in VTAB.tasks[:2]]
    val = {  # (method, task) -> {lr: validation top-1}; a tie at 80.0 goes to the smaller lr
        ("vpt-deep", tasks[0]): {0.1: 70.0, 1.0: 80.0, 10.0: 80.0},
        ("vpt-deep", tasks[1]): {0.1: 60.0, 1.0: 55.0, 10.0: 40.0},
        ("linear", tasks[0]): {0.1: 50.0, 1.0: 52.5, 10.0: 51.0},
        ("linear", tasks[1]): {0.1: 90.0, 1.0: 91.0, 10.0: 89.0},
    }
    specs = []
    for (method, task), points in val.items():
        for lr, top1 in points.items():
            hp = {"lr": lr, "weight_decay": 0.0, "epochs": 100}
            add_record(store, method, task, 42, top1, stage="tune", hparams=hp)
            specs.append(RunSpec(suite="vtab1k", task=task, method=method, seed=42, stage="tune",
                                 backbone="vit_base_patch16_224.orig_in21k", checkpoint=None, image_size=224,
                                 hparams=hp))
    add_record(store, "linear", tasks[0], 42, 99.0, stage="final")  # final records are not tune points
    paths, sel = write_hparams(records_frame(store, "vtab1k"), VTAB, tmp_path / "out")
    assert [p.name for p in paths] == ["vtab1k_hparams.md", "vtab1k_hparams.tex", "vtab1k_hparams.csv",
                                       "vtab1k_tune_grid.csv"]
    by_cell = {(r.method, r.task): r for r in sel.itertuples()}
    assert (by_cell[("vpt-deep", tasks[0])].chosen, by_cell[("vpt-deep", tasks[0])].runner_up) == ("lr=1.0", "lr=10.0")
    assert by_cell[("vpt-deep", tasks[1])].chosen == "lr=0.1" and by_cell[("vpt-deep", tasks[1])].runner_up_val_top1 == 55.0
    assert by_cell[("linear", tasks[0])].val_top1 == 52.5 and by_cell[("linear", tasks[0])].points == 3
    # the report names exactly what the protocol selected for the final stage
    best, _ = select(store, specs)
    assert all(by_cell[cell].chosen == f"lr={hp['lr']}" for cell, hp in best.items())
    grid = pd.read_csv(paths[3])
    assert len(grid) == 12 and set(grid.columns) >= {"point", "val_top1", "train_seconds", "hp.lr", "run_id"}
    md = paths[0].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| vpt-deep") and "CIFAR-100" in line)
    assert [c.strip() for c in row.strip("|").split("|")] == ["vpt-deep", "CIFAR-100", "lr=1.0", "80.0", "lr=10.0",
                                                              "80.0", "3"]
    assert md.startswith("Hyperparameters selected on vtab1k by the tune stage (train800 -> val200")
    tex = paths[1].read_text()
    assert tex.count("\\\\") == 5 and "\\toprule" in tex and "\\bottomrule" in tex


def test_report_hparams_without_tune_records_says_why_and_still_writes_the_table(store, tmp_path, capsys):
    from bench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--suite", "vtab1k", "--results", str(store.root), "--out", str(tmp_path / "out"),
              "--hparams", "--format", "md"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "no tune-stage records for vtab1k" in out and "--protocol vtab" in out
    assert (tmp_path / "out" / "vtab1k_final.md").is_file()
    assert not (tmp_path / "out" / "vtab1k_hparams.md").exists()


def test_the_cost_figure_shows_the_memory_training_added_when_records_have_it(tmp_path):
    from bench.reports.plots import figures

    store = Store(tmp_path / "results")
    for method, growth in (("linear", 3.0), ("vpt-deep", 40.0)):
        spec = RunSpec(suite="vtab1k", task="cifar", method=method, seed=1, stage="final",
                       backbone="vit_base_patch16_224.orig_in21k", checkpoint=None, image_size=224, hparams={"lr": 1.0})
        store.write(spec, {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "ok", "finished_at": "2026-01-01",
                           "metrics": {"top1": 50.0, "trainable_params": 10, "trainable_params_no_head": 5,
                                       "peak_memory_mib": 850.0 + growth, "peak_memory_growth_mib": growth,
                                       "train_seconds": 1.0}})
    fig = figures(build_report(store, VTAB))["vtab1k_final_costs"]
    memory = fig.axes[0]
    assert memory.get_xlabel() == "peak memory growth in training (MiB)"
    assert sorted(round(p.get_width()) for p in memory.patches) == [3, 40]


def test_the_pareto_front_keeps_exactly_the_points_nothing_beats_on_both_counts():
    from bench.reports.plots import _count_label, pareto_front

    cost = [1.0, 2.0, 3.0, 2.5, 0.5, 3.0]
    accuracy = [70.0, 80.0, 79.0, 85.0, 60.0, 85.0]
    # 0.5/60, 1/70, 2/80, 2.5/85 each beat everything cheaper; 3/79 and 3/85 are beaten by 2.5/85
    assert pareto_front(cost, accuracy) == [4, 0, 1, 3]
    assert [_count_label(v) for v in (0.0123, 0.5, 1.0, 85.8)] == ["12.3K", "500K", "1M", "85.8M"]


def test_both_scatters_mark_the_pareto_front(store):
    from bench.reports.plots import figures

    figs = figures(build_report(store, VTAB))
    for name in ("vtab1k_final_accuracy_vs_params", "vtab1k_final_accuracy_vs_time"):
        ax = figs[name].axes[0]
        assert "Pareto front" in [t.get_text() for t in figs[name].legends[0].get_texts()], name
    ticks = [t.get_text() for t in figs["vtab1k_final_accuracy_vs_params"].axes[0].get_xticklabels() if t.get_text()]
    assert ticks and all(t.endswith(("K", "M")) for t in ticks)


def test_every_report_states_its_protocol_and_a_method_mixing_protocols_gets_no_mean(tmp_path):
    from bench.reports.latex import latex_table

    store = Store(tmp_path / "results")

    def add(method, task, seed, normalize="imagenet", checkpoint=None):
        spec = RunSpec(suite="vtab1k", task=task, method=method, seed=seed, stage="final",
                       backbone="vit_base_patch16_224.orig_in21k", checkpoint=checkpoint, image_size=224,
                       hparams={"lr": 1.0}, normalize=normalize, interpolation="bilinear",
                       splits=("train800val200", "test"), format="vtab1k-folder", transform="resize",
                       precision="auto")
        store.write(spec, {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "ok", "finished_at": "2026-01-01",
                           "metrics": {"top1": 60.0, "trainable_params": 10, "trainable_params_no_head": 5}})

    for task in VTAB.tasks:
        for seed in (42, 44):
            add("vpt-deep", task.name, seed)
            add("linear", task.name, seed, normalize="imagenet" if task.name != "dtd" else "backbone")
    tune = RunSpec(suite="vtab1k", task="cifar", method="vpt-deep", seed=42, stage="tune",
                   backbone="vit_base_patch16_224.orig_in21k", checkpoint=None, image_size=224, hparams={"lr": 5.0})
    store.write(tune, {"run_id": tune.run_id, "spec": tune.to_dict(), "status": "ok", "finished_at": "2026-01-01",
                       "metrics": {"top1": 50.0, "trainable_params": 10, "trainable_params_no_head": 5}})
    report = build_report(store, VTAB)
    p = report.protocol
    assert p.startswith("Protocol: final stage, trained -> evaluated on train800val200 -> test, top-1 after the last epoch")
    assert "hyperparameters selected on val200 (last epoch) for vpt-deep" in p
    assert "hyperparameters given, not selected, for linear" in p
    assert "seeds 42, 44 (2 per cell)" in p and "resizing bilinear" in p
    assert "weights the backbone's own pretrained" in p and "precision auto" in p
    assert "normalisation backbone (linear); imagenet (linear, vpt-deep) [differs across methods]" in p
    # linear's tasks were normalised two ways: its per-task cells stay, its means do not
    assert report.mean.loc["linear", GROUPS] != report.mean.loc["linear", GROUPS]  # NaN
    assert report.mean.loc["vpt-deep", GROUPS] == 60.0 and report.mean.loc["linear", "dtd"] == 60.0
    assert any("linear: its tasks were run with different normalisation" in n for n in report.notes)
    assert markdown_table(report).split("\n\n")[1] == p
    assert latex_table(report).startswith(f"% {p}\n")


def _record_with(store, method, task, seed, top1, weights=None, selection=None, curve=None):
    spec = RunSpec(suite="vtab1k", task=task, method=method, seed=seed, stage="final",
                   backbone="vit_base_patch16_224.orig_in21k", checkpoint=None, image_size=224, hparams={"lr": 1.0})
    rec = {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "ok", "finished_at": "2026-01-01",
           "metrics": {"top1": top1, "trainable_params": 10, "trainable_params_no_head": 5}}
    if weights is not None:
        rec["weights"] = {"backbone": spec.backbone, "source": "hf-hub", "file": "/x", "sha256": weights}
    if selection is not None:
        rec["selection"] = selection
    if curve is not None:
        rec["curve"] = curve
    store.write(spec, rec)


GIVEN = {"epoch": "last", "hparams": "given", "selected_on": None}


def test_the_protocol_line_names_the_weights_hash_and_the_records_selection_rule(tmp_path):
    store = Store(tmp_path / "results")
    for task in VTAB.tasks:
        _record_with(store, "lora", task.name, 1, 70.0, weights="ab" * 32, selection=GIVEN)
        # a record written before records carried these: it mixes with anything
        _record_with(store, "bitfit", task.name, 1, 60.0, weights=None if task.name == "dtd" else "ab" * 32,
                     selection=None if task.name == "dtd" else GIVEN)
        # weights from another file on one task: the method's means mean nothing
        _record_with(store, "ssf", task.name, 1, 65.0, weights="cd" * 32 if task.name == "dtd" else "ab" * 32,
                     selection=GIVEN)
    report = build_report(store, VTAB)
    assert "(SHA-256 abababababab" in report.protocol
    assert "each record: last epoch, hyperparameters given" in report.protocol
    assert report.mean.loc["lora", GROUPS] == 70.0 and report.mean.loc["bitfit", GROUPS] == 60.0
    assert report.mean.loc["ssf", GROUPS] != report.mean.loc["ssf", GROUPS]  # NaN
    assert any(n.startswith("ssf: its tasks were run with different weights files") for n in report.notes)


def test_diagnostic_columns_report_the_best_test_epoch_beside_the_last_and_nothing_else_moves(tmp_path):
    """Method `a` peaks before its last epoch; the best-test-epoch column shows the peak's mean of
    group means and the optimism beside it, while every number of ours stays the last epoch's."""
    store = Store(tmp_path / "results")
    groups = {}
    for task in VTAB.tasks:
        groups.setdefault(task.group, []).append(task.name)
        for seed in (1, 2):
            last = 60.0 + seed
            curve = [{"epoch": 10, "train_loss": 1.0, "diagnostic_top1": 70.0 + seed},
                     {"epoch": 20, "train_loss": 0.5, "diagnostic_top1": last}]
            _record_with(store, "a", task.name, seed, last, curve=curve)
            _record_with(store, "b", task.name, seed, 50.0)  # run without --eval-every
    plain = build_report(store, VTAB)
    report = build_report(store, VTAB, diagnostic=True)
    assert plain.mean.equals(report.mean[plain.mean.columns])  # the diagnostic adds columns, changes none
    assert report.mean.loc["a", GROUPS] == pytest.approx(61.5)
    assert report.mean.loc["a", "Best test epoch (groups)"] == pytest.approx(71.5)
    assert report.mean.loc["a", "Best-epoch gain (groups)"] == pytest.approx(10.0)
    assert np.isnan(report.mean.loc["b", "Best test epoch (groups)"])
    assert any("the best of 2 test evaluations" in n and "nothing selects on" in n for n in report.notes)
    md = markdown_table(report)
    assert "Best test epoch (groups)" in md and "71.5" in md
    # the ranks and intervals read our last-epoch columns only
    from bench.reports.stats import ranks

    assert "Best test epoch (groups)" not in report.accuracy_columns
    assert list(ranks(report).average.index) == ["a", "b"]


def test_the_tune_selection_never_reads_the_diagnostic(tmp_path):
    """A tune-stage record whose curve (wrongly) carries test evaluations: the point chosen is the
    one with the best last-epoch val200 top-1, whatever the diagnostic says."""
    from bench.protocol import select

    store = Store(tmp_path / "results")
    specs = []
    for lr, top1, diag in ((1.0, 70.0, 99.0), (2.0, 80.0, 10.0)):
        spec = RunSpec(suite="vtab1k", task="dtd", method="lora", seed=1, stage="tune",
                       backbone="vit_base_patch16_224.orig_in21k", checkpoint=None, image_size=224,
                       hparams={"lr": lr})
        store.write(spec, {"run_id": spec.run_id, "spec": spec.to_dict(), "status": "ok",
                           "finished_at": "2026-01-01", "curve": [{"epoch": 1, "diagnostic_top1": diag}],
                           "metrics": {"top1": top1, "best_epoch_top1": diag}})
        specs.append(spec)
    best, waiting = select(store, specs)
    assert best[("lora", "dtd")]["lr"] == 2.0 and not waiting


def test_report_diagnostic_and_compare_in_latex_from_the_command_line(store, tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--suite", "vtab1k", "--results", str(store.root), "--out", str(out), "--format", "latex",
              "--diagnostic", "--compare", "a,b"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "no record has test evaluations during training" in printed and "--eval-every" in printed
    assert (out / "vtab1k_final_a_vs_b.tex").read_text().startswith("\\begin{table}")
    assert (out / "vtab1k_final_a_vs_b.md").is_file()
    assert "Best test epoch (groups)" in (out / "vtab1k_final.tex").read_text()


def test_the_published_rows_of_repadapter_fact_and_convpass_give_their_papers_means():
    """The averages the sources state (methods-next.md): the per-task rows carried reproduce them."""
    from bench.reports.table import published_frame

    frame, labels = published_frame(VTAB)
    expected = {"repadapter (published, RepAdapter paper†)": 76.09, "fact-tt (published, FacT paper†)": 75.34,
                "fact-tk (published, FacT paper†)": 75.55, "convpass (published, Convpass report†)": 76.56,
                "convpass (published, PETL_Vision rerun†)": 76.35}
    for name, mean in expected.items():
        assert frame.loc[name, GROUPS] == pytest.approx(mean, abs=0.006), name
        assert labels.loc[name, "selection"]  # every row says how its number was chosen
    assert labels.loc["fact-tt (published, FacT paper†)", "selection"].startswith("best test accuracy")
