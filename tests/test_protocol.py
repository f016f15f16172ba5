"""The VTAB protocol: tune on val over the grid, final with the best point; test never consulted."""

import json

import pytest

import bench.data
import bench.engine
from bench.cli import main
from bench.protocol import grid_points, method_grid, select
from bench.method import get_method
from bench.spec import RunSpec
from bench.store import Store
from bench.suite import load_suite
from helpers import bench as bench_cli, ok_record, record_files


def tune_spec(lr, wd=0.0, task="t"):
    return RunSpec(suite="s", task=task, method="linear", seed=1, stage="tune", backbone="b",
                   checkpoint=None, image_size=32, hparams={"lr": lr, "weight_decay": wd, "epochs": 1},
                   splits=("train800", "val200"), format="vtab1k-folder", transform="resize", precision="auto")


def test_selection_takes_the_best_validation_accuracy_and_breaks_ties_to_the_smaller_lr(tmp_path):
    store = Store(tmp_path)
    specs = [tune_spec(1.0), tune_spec(0.1), tune_spec(10.0), tune_spec(0.1, 0.01)]
    for spec, top1 in zip(specs, [80.0, 80.0, 70.0, 80.0]):
        store.write(spec, ok_record(spec, top1))
    best, waiting = select(store, specs)
    assert best[("linear", "t")] == {"lr": 0.1, "weight_decay": 0.0, "epochs": 1}
    assert waiting == []
    pending = specs + [tune_spec(0.5)]
    best, waiting = select(store, pending)
    assert best == {} and waiting == ["linear/t: 1 of 5 tune runs not ok yet"]


def test_grids_come_from_the_method_narrowed_by_the_suite_and_by_set():
    vtab, demo = load_suite("vtab1k"), load_suite("demo")
    deep = get_method("vpt-deep")
    assert len(grid_points(method_grid(deep, vtab, []))) == 40  # VPT: 10 lr x 4 wd
    assert method_grid(deep, demo, []) == {"lr": [5.0, 20.0, 50.0], "weight_decay": [0.0]}
    assert method_grid(deep, vtab, ["lr=1.0"]) == {"weight_decay": [0.01, 0.001, 0.0001, 0.0]}
    assert method_grid(deep, vtab, ["full.lr=1.0"])["lr"][0] == 50.0
    assert grid_points({}) == [{}]


def test_the_tune_stage_never_opens_a_test_image(toy_suite, tmp_path, monkeypatch):
    suite, data = toy_suite
    # a narrowed grid (2 lr x 2 wd): what is tested is the staging, not VPT's 40-point grid
    narrowed = tmp_path / "toy-grid.toml"
    narrowed.write_text(suite.read_text().replace("[[tasks]]", "[grid.linear]\nlr = [1.0, 10.0]\n"
                                                  "weight_decay = [0.0, 0.001]\n\n[[tasks]]", 1))
    suite = narrowed
    stage = {"now": None}
    opened_in_tune = []
    real_run, real_load = bench.engine.run, bench.data.load_image

    def run(spec, *a, **k):
        stage["now"] = spec.stage
        return real_run(spec, *a, **k)

    def load_image(path):
        if stage["now"] == "tune" and "images/test" in str(path):
            opened_in_tune.append(path)
            raise AssertionError(f"tune stage opened test image {path}")
        return real_load(path)

    monkeypatch.setattr(bench.engine, "run", run)
    monkeypatch.setattr(bench.data, "load_image", load_image)
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as code:
        main(["run", "--suite", str(suite), "--data-root", str(data), "--results", str(results),
              "--methods", "linear", "--protocol", "vtab", "--seeds", "3,4", "--quiet", "--set", "epochs=3"])
    assert code.value.code == 0 and opened_in_tune == []
    records = [json.loads(p.read_text()) for p in record_files(results)]
    tune = [r for r in records if r["spec"]["stage"] == "tune"]
    final = [r for r in records if r["spec"]["stage"] == "final"]
    assert len(tune) == 2 * 4 and {r["spec"]["seed"] for r in tune} == {3}
    assert all(r["metrics"]["eval_split"] == "val200" and r["metrics"]["train_split"] == "train800" for r in tune)
    assert len(final) == 2 * 2 and {r["spec"]["seed"] for r in final} == {3, 4}
    assert all(r["metrics"]["eval_split"] == "test" and r["metrics"]["train_split"] == "train800val200" for r in final)
    for task in ("colours", "more_colours"):
        cell = [r for r in tune if r["spec"]["task"] == task]
        best = max(r["metrics"]["top1"] for r in cell)
        chosen = min((r for r in cell if r["metrics"]["top1"] == best),
                     key=lambda r: (r["spec"]["hparams"]["lr"], r["spec"]["hparams"]["weight_decay"]))
        finals = [r for r in final if r["spec"]["task"] == task]
        assert all(r["spec"]["hparams"] == chosen["spec"]["hparams"] for r in finals)


@pytest.mark.slow
def test_demo_protocol_then_a_full_report_writes_tables_and_figures(tmp_path):
    results, out = tmp_path / "results", tmp_path / "report"
    run = bench_cli("run", "--suite", "demo", "--protocol", "vtab", "--seeds", "1,2", "--methods", "linear",
                    "--tasks", "mnist,shapes_loc", "--set", "epochs=2", "--set", "warmup_epochs=1",
                    "--results", str(results), "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "selected for linear/mnist" in run.stdout
    rep = bench_cli("report", "--suite", "demo", "--format", "all", "--plots", "--compare-published",
                    "--results", str(results), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    assert {"demo_final.md", "demo_final.tex", "demo_final.csv", "demo_final.html"} <= {p.name for p in out.iterdir()}
    page = (out / "demo_final.html").read_text()
    assert page.count('<figure data-figure="demo_final_') == 5 and "<svg" in page  # --plots, inlined
    # one method: no critical-difference diagram; its group mean is missing: no time scatter
    stems = {"accuracy_vs_params", "groups", "costs", "tasks_heatmap", "seeds"}
    for ext in ("pdf", "png"):
        assert {p.name for p in (out / "plots").glob(f"*.{ext}")} == {f"demo_final_{s}.{ext}" for s in stems}
    assert "missing cells (2): linear/textures, linear/shapes_count" in rep.stdout
    assert "± " in (out / "demo_final.md").read_text()  # two seeds: mean ± std
