"""The embedded demo: data made on first use in the VTAB-1k layout, really pretrained weights."""

import json

import pytest
import torch

from bench.data import read_split, resolve_data_root
from bench.sources.demo import N_TEST, N_TRAIN, N_VAL, materialize
from bench.engine import EngineOptions, run
from bench.spec import plan
from bench.method import select_methods
from bench.suite import load_suite
from helpers import bench, record_files

CPU = EngineOptions(device=torch.device("cpu"))


@pytest.fixture(scope="module")
def demo():
    suite = load_suite("demo")
    return suite, resolve_data_root(suite, None)


def test_demo_tasks_are_written_in_the_vtab1k_layout_and_read_back_by_its_reader(demo):
    suite, root = demo
    for task in suite.tasks:
        folder = root / task.name
        for split, n in (("train800", N_TRAIN), ("val200", N_VAL), ("train800val200", N_TRAIN + N_VAL),
                         ("test", N_TEST)):
            items = read_split(suite, task, root, split).items
            assert len(items) == n
            assert all(p.is_file() and p.parent.parent == folder / "images" for p, _ in items[:5])
        labels = {y for _, y in read_split(suite, task, root, "train800val200").items}
        assert labels == set(range(task.num_classes)), task.name


def test_materialising_again_is_a_no_op_and_the_content_is_deterministic(demo, tmp_path):
    suite, root = demo
    calls = []
    assert materialize(root, progress=lambda *a: calls.append(a)) == root
    assert calls == []  # nothing to write, nothing to show
    other = materialize(tmp_path / "again", progress=lambda *a: calls.append(a))
    # the progress bar: one tick per image, up to the total, naming the task being written
    total = len(suite.tasks) * (N_TRAIN + N_VAL + N_TEST)
    assert [done for _, done, _ in calls] == list(range(1, total + 1))
    assert {t for _, _, t in calls} == {total} and "(shapes_loc)" in calls[-1][0]
    for task in suite.tasks:
        assert (other / task.name / "test.txt").read_text() == (root / task.name / "test.txt").read_text()
    a = (root / "shapes_loc" / "images" / "train" / "00003.png").read_bytes()
    assert (other / "shapes_loc" / "images" / "train" / "00003.png").read_bytes() == a


def test_the_committed_weights_are_really_pretrained(demo, tmp_path):
    """A linear probe on the pretrained backbone beats the same probe on a random one widely."""
    import timm
    from safetensors.torch import save_file

    suite, root = demo
    torch.manual_seed(0)
    random_vit = timm.create_model("peftbench_demo_vit", pretrained=False, num_classes=0)
    random_path = tmp_path / "random.safetensors"
    save_file({k: v.contiguous() for k, v in random_vit.state_dict().items()}, str(random_path))
    for task, margin in (("mnist", 15.0), ("shapes_loc", 30.0)):
        tasks = [suite.task(task)]
        pre = plan(suite, select_methods("linear"), tasks, [0], "final", suite.backbone, None, ["epochs=5"])[0]
        rnd = plan(suite, select_methods("linear"), tasks, [0], "final", suite.backbone, str(random_path),
                   ["epochs=5"])[0]
        acc_pre = run(pre, suite, root, CPU)["metrics"]["top1"]
        acc_rnd = run(rnd, suite, root, CPU)["metrics"]["top1"]
        assert acc_pre > acc_rnd + margin, (task, acc_pre, acc_rnd)


@pytest.mark.slow
def test_the_demo_end_to_end_every_method_beats_chance_widely(tmp_path):
    results = tmp_path / "results"
    # every registered method on one demo task, at a quarter of the demo's budget: a structured
    # one (the position of a shape, not its look, is the class), the harder kind for a frozen
    # backbone; one task rather than two keeps CI under 20 minutes (benchmarks/demo_table.py
    # runs every method on every demo task)
    proc = bench("run", "--suite", "demo", "--methods", "all", "--tasks", "shapes_loc",
                 "--results", str(results), "--quiet", "--set", "epochs=8", "--set", "warmup_epochs=1",
                 timeout=1500)  # 16 runs: about 2.5 minutes on 2 free cores, far more on busy ones
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Location" in proc.stdout
    suite = load_suite("demo")
    records = [json.loads(p.read_text()) for p in record_files(results)]
    assert len(records) == len(select_methods("all"))
    for rec in records:
        task = suite.task(rec["spec"]["task"])
        chance = 100.0 / task.num_classes
        assert rec["status"] == "ok"
        assert rec["metrics"]["top1"] > chance + 20, (rec["spec"]["method"], task.name, rec["metrics"]["top1"])


def _frozen_features(suite, root, task, split):
    """The demo backbone's pooled features of one split, as the linear probe sees them."""
    from bench.data import build_transforms, decode_split
    from bench.engine import build_model

    spec = plan(suite, select_methods("linear"), [task], [0], "final", suite.backbone, None, [])[0]
    model, mean, std = build_model(spec, task.num_classes)
    decode, augment = build_transforms(suite, mean, std, train=False, interpolation=spec.interpolation)
    decoded = decode_split(read_split(suite, task, root, split), decode)
    with torch.no_grad():
        feats = model.eval().features(augment(decoded.pixels))
    return feats.numpy(), decoded.labels.numpy()


def test_the_demo_linear_probe_has_converged_to_what_logistic_regression_gets_on_its_features(demo):
    """The demo's budget for `linear` must not under-train it: its accuracy lands within 1.5
    points (mean over the tasks) of scikit-learn's logistic regression on the same frozen
    features, with C chosen on val200 and refit on train800val200."""
    from sklearn.linear_model import LogisticRegression

    suite, root = demo
    ours, sklearn = [], []
    for task in suite.tasks:
        feats = {s: _frozen_features(suite, root, task, s) for s in ("train800", "val200", "train800val200", "test")}

        def fit(c, split):
            return LogisticRegression(C=c, max_iter=3000).fit(*feats[split])

        best_c = max([0.01, 0.1, 1.0, 10.0, 100.0], key=lambda c: fit(c, "train800").score(*feats["val200"]))
        sklearn.append(100 * fit(best_c, "train800val200").score(*feats["test"]))
        spec = plan(suite, select_methods("linear"), [task], [42], "final", suite.backbone, None, [])[0]
        ours.append(run(spec, suite, root, CPU)["metrics"]["top1"])
    mean_ours, mean_sklearn = sum(ours) / len(ours), sum(sklearn) / len(sklearn)
    assert abs(mean_ours - mean_sklearn) <= 1.5, (ours, sklearn)
