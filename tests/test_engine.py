"""The engine on a tiny pretrained ViT: it learns, it is reproducible, it measures, it fails loudly."""

import math

import pytest
import torch

from bench import engine
from bench.engine import DivergedError, EngineOptions, run
from bench.runs import execute_spec
from bench.spec import plan
from bench.model import warmup_cosine
from bench.method import select_methods
from bench.store import Store
from bench.suite import load_suite

CPU = EngineOptions(device=torch.device("cpu"))


def toy_specs(suite_path, methods="linear,full", overrides=(), seeds=(0,)):
    suite = load_suite(str(suite_path))
    return suite, plan(suite, select_methods(methods), list(suite.tasks), list(seeds), "final",
                       suite.backbone, None, list(overrides))


def test_every_method_learns_a_separable_toy_task(toy_suite):
    suite_path, data = toy_suite
    suite, specs = toy_specs(suite_path)
    for spec in specs:
        out = run(spec, suite, data, CPU)
        assert out["metrics"]["top1"] >= 90.0, (spec.method, spec.task, out["metrics"]["top1"])
        assert out["curve"][-1]["train_loss"] < out["curve"][0]["train_loss"]


def test_a_run_records_every_cost_metric(toy_suite):
    suite_path, data = toy_suite
    suite, specs = toy_specs(suite_path, "linear")
    m = run(specs[0], suite, data, CPU)["metrics"]
    assert m["trainable_params"] == 96 * 3 + 3 and m["trainable_params_no_head"] == 0
    assert m["total_params"] > 400_000
    assert m["peak_memory_mib"] > 50
    # what training added over the process before it: far below the process's own footprint
    assert 0 <= m["peak_memory_growth_mib"] < m["peak_memory_mib"] - 50
    assert m["train_seconds"] > 0 and m["eval_seconds"] > 0
    assert m["train_throughput"] > 0 and m["inference_throughput"] > 0
    assert 0.01 < m["gflops_per_image"] < 0.1  # ~2 * 0.45M params * 17 tokens
    assert m["n_train"] == 50 and m["n_eval"] == 30 and m["eval_split"] == "test"


def test_the_same_seed_gives_the_same_run_and_another_seed_does_not(toy_suite):
    suite_path, data = toy_suite
    suite, specs = toy_specs(suite_path, "full", ["epochs=2", "warmup_epochs=0"], seeds=(0, 1))
    first = run(specs[0], suite, data, CPU)
    again = run(specs[0], suite, data, CPU)
    assert (specs[1].task, specs[1].seed) == (specs[0].task, 1)
    other = run(specs[1], suite, data, CPU)
    assert [c["train_loss"] for c in first["curve"]] == [c["train_loss"] for c in again["curve"]]
    assert first["metrics"]["top1"] == again["metrics"]["top1"]
    assert [c["train_loss"] for c in first["curve"]] != [c["train_loss"] for c in other["curve"]]


def test_a_diverging_run_is_recorded_as_failed_with_its_error(toy_suite, tmp_path):
    suite_path, data = toy_suite
    suite, specs = toy_specs(suite_path, "full", ["lr=1e30", "epochs=2"])
    with pytest.raises(DivergedError):
        run(specs[0], suite, data, CPU)
    store = Store(tmp_path / "results")
    record = execute_spec(specs[0], suite, data, store, CPU)
    assert record["status"] == "failed"
    assert "DivergedError: training loss became nan" in record["error"]
    assert store.read(specs[0])["status"] == "failed"
    assert record["env"]["packages"]["torch"] and record["env"]["host"]


def test_warmup_then_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 0, 10) == pytest.approx(1.0)
    assert not math.isnan(warmup_cosine(5, 0, 0))


class _Killed(BaseException):
    """Stands in for SIGKILL/preemption: not an Exception, so nothing records it as a failure."""


@pytest.mark.parametrize("method", ["full", "lion", "linear"])  # linear: on cached features
def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_result(toy_suite, tmp_path, monkeypatch, method):
    # LION prunes at epoch 2 of 4, so its masks must survive the restart too; the linear probe
    # trains on features computed once, and its shuffling must survive it as well.
    suite_path, data = toy_suite
    suite, specs = toy_specs(suite_path, method, ["epochs=4", "warmup_epochs=1"])
    spec = specs[0]
    straight = run(spec, suite, data, CPU)
    ckpt = tmp_path / "run.ckpt"
    opts = EngineOptions(device=torch.device("cpu"), checkpoint_path=ckpt, checkpoint_interval=0)
    real_save = engine.save_checkpoint
    saves = []

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state["epoch"])
        if state["epoch"] == 3:
            raise _Killed

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        run(spec, suite, data, opts)
    assert saves == [1, 2, 3] and ckpt.exists()
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    resumed = run(spec, suite, data, opts)
    assert resumed["metrics"]["resumed_from_epoch"] == 3 and straight["metrics"]["resumed_from_epoch"] == 0
    assert [c["train_loss"] for c in resumed["curve"]] == pytest.approx(
        [c["train_loss"] for c in straight["curve"]], rel=1e-6)
    assert resumed["metrics"]["top1"] == straight["metrics"]["top1"]
    assert resumed["metrics"]["trainable_params"] == straight["metrics"]["trainable_params"]


def test_a_checkpoint_of_another_spec_is_ignored(toy_suite, tmp_path):
    suite_path, data = toy_suite
    suite, specs = toy_specs(suite_path, "linear", ["epochs=2"], seeds=(0, 1))
    ckpt = tmp_path / "run.ckpt"
    engine.save_checkpoint(ckpt, {"run_id": specs[1].run_id, "epoch": 1})
    out = run(specs[0], suite, data, EngineOptions(device=torch.device("cpu"), checkpoint_path=ckpt))
    assert out["metrics"]["resumed_from_epoch"] == 0


@pytest.mark.parametrize("method", ["lion", "vpt-deep"])
def test_eval_every_records_test_accuracy_without_changing_the_run(toy_suite, method):
    """`--eval-every`: the test evaluations during training are kept in the curve, and the run
    is the one it is without them, to the bit (losses, final top-1, LION's solver statistics)."""
    suite_path, data = toy_suite
    suite, specs = toy_specs(suite_path, method, ["epochs=5", "warmup_epochs=1"])
    spec = specs[0]
    plain = run(spec, suite, data, CPU)
    watched = run(spec, suite, data, EngineOptions(device=torch.device("cpu"), eval_every=2))
    assert [c["train_loss"] for c in watched["curve"]] == [c["train_loss"] for c in plain["curve"]]
    assert watched["metrics"]["top1"] == plain["metrics"]["top1"]
    for key in ("input_mean_iterations", "output_mean_iterations", "trainable_params"):
        assert watched["metrics"].get(key) == plain["metrics"].get(key)
    # epochs 2 and 4, and the last (5), whose value is the run's top-1
    assert [c["epoch"] for c in watched["curve"] if "diagnostic_top1" in c] == [2, 4, 5]
    assert watched["curve"][-1]["diagnostic_top1"] == watched["metrics"]["top1"]
    assert all(0 <= c["diagnostic_top1"] <= 100 for c in watched["curve"] if "diagnostic_top1" in c)
    assert not any("diagnostic_top1" in c for c in plain["curve"])


def test_a_tune_stage_run_gets_no_test_evaluations(toy_suite):
    suite_path, data = toy_suite
    suite = load_suite(str(suite_path))
    spec = plan(suite, select_methods("linear"), list(suite.tasks)[:1], [0], "tune", suite.backbone, None,
                ["epochs=3"])[0]
    out = run(spec, suite, data, EngineOptions(device=torch.device("cpu"), eval_every=1))
    assert not any("diagnostic_top1" in c for c in out["curve"])


def test_every_record_states_its_selection_rule_and_its_weights_file_hash(toy_suite, tmp_path):
    import hashlib

    from bench.backbones import demo_weights_path

    suite_path, data = toy_suite
    suite, specs = toy_specs(suite_path, "linear", ["epochs=2"])
    store = Store(tmp_path / "results")
    rec = execute_spec(specs[0], suite, data, store, CPU)
    assert rec["selection"] == {"epoch": "last", "hparams": "given", "selected_on": None}
    expected = hashlib.sha256(demo_weights_path().read_bytes()).hexdigest()
    assert rec["weights"]["sha256"] == expected and rec["weights"]["source"] == "package"
    assert store.read(specs[0])["weights"] == rec["weights"]
    tuned = execute_spec(specs[0], suite, data, store, engine_opts(protocol="vtab"))
    assert tuned["selection"] == {"epoch": "last", "hparams": "selected", "selected_on": "val200"}


def engine_opts(**kw):
    return EngineOptions(device=torch.device("cpu"), **kw)
