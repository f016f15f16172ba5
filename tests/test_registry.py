"""The method registry and hyperparameter resolution (defaults < suite < task < --set)."""

import textwrap

import pytest

from bench.errors import UserError
from bench.spec import plan
from bench.method import ENGINE_SETTINGS, METHODS, all_methods, get_method, select_methods
from bench.registry import load_plugin
from bench.suite import parse_suite


def test_linear_and_full_are_registered_with_the_engine_knobs():
    methods = all_methods()
    assert {"linear", "full"} <= set(methods)
    for m in methods.values():
        assert set(ENGINE_SETTINGS) <= set(m.defaults)
    assert methods["full"].defaults["optimizer"] == "adamw"
    assert methods["linear"].defaults["optimizer"] == "sgd"


def test_select_methods_all_lists_and_unknown_names():
    assert [m.name for m in select_methods("all")] == sorted(all_methods())
    assert [m.name for m in select_methods("full,linear,full")] == ["full", "linear"]
    with pytest.raises(UserError, match="unknown method 'lorra'; registered methods: .*full.*linear"):
        select_methods("linear,lorra")
    with pytest.raises(UserError, match="--methods is empty"):
        select_methods(" , ")


@pytest.fixture
def scratch_registry():
    """Methods a test registers disappear after it."""
    with METHODS.scratch():
        yield


def test_a_plugin_file_registers_a_method_without_touching_the_runner(tmp_path, scratch_registry):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(textwrap.dedent('''
        from bench.model import PeftModel, freeze, make_head
        from bench.registry import register_method

        @register_method("bias-probe", defaults={"lr": 0.3, "rank": 4}, aliases=("bp",))
        def build(backbone, num_classes, hparams):
            """Train the head and the backbone's biases."""
            freeze(backbone)
            for n, p in backbone.named_parameters():
                if n.endswith(".bias"):
                    p.requires_grad_(True)
            return PeftModel(backbone, make_head(backbone.num_features, num_classes), frozen_backbone=False)
    '''))
    load_plugin(str(plugin))
    m = get_method("bp")
    assert m.name == "bias-probe" and m.defaults["rank"] == 4 and m.defaults["epochs"] == 100
    assert m.summary == "Train the head and the backbone's biases."
    with pytest.raises(UserError, match="not a Python file"):
        load_plugin(str(tmp_path / "nope.txt"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('oops')\n")
    with pytest.raises(UserError, match="failed to import: RuntimeError: oops"):
        load_plugin(str(broken))


SUITE = {
    "name": "s", "format": "vtab1k-folder", "image_size": 32, "backbone": "b",
    "splits": {"final": ["train800val200", "test"]},
    "hparams": {"epochs": 7, "warmup_epochs": 1, "batch_size": 16, "full": {"lr": 0.01}},
    "tasks": [{"name": "a", "group": "g", "num_classes": 3, "hparams": {"epochs": 9, "linear": {"lr": 2.0}}},
              {"name": "b", "group": "g", "num_classes": 3}],
}


def specs(overrides, methods="linear,full"):
    suite = parse_suite(SUITE, "s.toml")
    out = plan(suite, select_methods(methods), list(suite.tasks), [1], "final", "b", None, overrides)
    return {(s.method, s.task): s.hparams for s in out}


def test_hyperparameters_resolve_defaults_then_suite_then_task_then_command_line():
    hp = specs([])
    assert hp["linear", "b"]["epochs"] == 7 and hp["linear", "b"]["lr"] == 1.0
    assert hp["linear", "a"]["epochs"] == 9 and hp["linear", "a"]["lr"] == 2.0
    assert hp["full", "a"]["lr"] == 0.01 and hp["full", "a"]["batch_size"] == 16
    hp = specs(["epochs=3", "full.lr=1e-4"])
    assert all(h["epochs"] == 3 for h in hp.values())
    assert hp["full", "b"]["lr"] == 1e-4 and hp["linear", "a"]["lr"] == 2.0


@pytest.mark.parametrize("overrides, message", [
    (["lr"], "expected key=value"),
    (["lr=fast"], r"lr='fast' is not a valid float"),
    (["epochs=2.5"], r"epochs='2.5' is not a valid int"),
    (["rank=4"], "no selected method has a hyperparameter 'rank'"),
    (["lorra.lr=1"], "unknown method 'lorra'"),
    (["epochs=0"], r"--set, method 'linear': epochs=0 is not allowed \(training epochs\): it must be at least 1"),
    (["warmup_epochs=50"], r"warmup_epochs \(50\) must not exceed epochs"),
    (["optimizer=adam"], "optimizer='adam' is not allowed .*choose from sgd, adamw"),
    (["lr=nan"], "lr=nan is not allowed .*finite"),
    (["lr=inf"], "lr=inf is not allowed .*finite"),
    (["momentum=-1"], "momentum=-1.0 is not allowed .*at least 0.0"),
    (["lr_batch_base=-256"], "lr_batch_base=-256 is not allowed .*at least 0"),
])
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        specs(overrides)


def test_an_override_for_a_method_not_selected_is_an_error():
    with pytest.raises(UserError, match="method 'full' is not among --methods"):
        specs(["full.lr=0.1"], methods="linear")


def test_a_suite_table_naming_an_unknown_hyperparameter_is_an_error():
    bad = dict(SUITE, hparams={"linear": {"rank": 3}})
    suite = parse_suite(bad, "s.toml")
    with pytest.raises(UserError, match=r"s.toml \[hparams\]: method 'linear' has no hyperparameter 'rank'"):
        plan(suite, select_methods("linear"), list(suite.tasks), [1], "final", "b", None, [])
