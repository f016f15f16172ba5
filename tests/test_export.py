"""`bench run --keep-weights` and `bench export`: the exported state reproduces the run, and a
merged export is a plain timm checkpoint that timm itself loads."""

from __future__ import annotations

import json

import pytest
import torch

from bench.data import resolve_data_root
from bench.export import find_run, load_merged, rebuild, evaluation_top1
from bench.store import Store
from bench.suite import load_suite
from helpers import bench

DEMO = load_suite("demo")


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    results = tmp_path_factory.mktemp("export") / "results"
    proc = bench("run", "--suite", "demo", "--methods", "lora,adapter", "--tasks", "mnist", "--set", "epochs=2",
                 "--set", "warmup_epochs=1", "--keep-weights", "--results", str(results), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Store(results)


@pytest.mark.slow
def test_an_export_reproduces_the_runs_accuracy_and_its_merge_loads_in_timm(kept, tmp_path):
    record = find_run(kept, DEMO, "lora", "mnist", None, "final")
    kept_file = kept.root / "demo" / "lora" / "mnist" / record["weights_file"]
    assert kept_file.is_file() and kept_file.stat().st_size < 200_000  # LoRA's state and the head
    out = tmp_path / "out"
    proc = bench("export", "--suite", "demo", "--method", "lora", "--task", "digits", "--results", str(kept.root),
                 "--out", str(out), "--merge")
    assert proc.returncode == 0, proc.stderr
    about = json.loads((out / "demo_lora_mnist_seed42.json").read_text())
    assert about["run_id"] == record["run_id"] and about["metrics"]["top1"] == record["metrics"]["top1"]
    root = resolve_data_root(DEMO, None)
    # the trained state, loaded into the method's model: the run's test top-1, exactly
    spec, model, mean, std, _ = rebuild(record, DEMO)
    assert evaluation_top1(model, spec, DEMO, root, mean, std) == record["metrics"]["top1"]
    # the merged checkpoint, as timm loads it: a plain ViT with the head, the same predictions
    # up to float rounding (the folded weights differ from the unfolded sums in the last bits)
    plain = load_merged(about, out).eval()
    assert type(plain).__name__ == "VisionTransformer" and not any(m._forward_hooks for m in plain.modules())
    assert sum(p.numel() for p in plain.parameters()) == record["metrics"]["total_params"] - \
        record["metrics"]["trainable_params_no_head"]
    merged_top1 = evaluation_top1(plain, spec, DEMO, root, mean, std)
    assert abs(merged_top1 - record["metrics"]["top1"]) <= 0.2 + 1e-9  # at most one of 500 images
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-4)


@pytest.mark.slow
def test_export_says_what_is_missing(kept, tmp_path):
    out = tmp_path / "out"
    proc = bench("export", "--suite", "demo", "--method", "adapter", "--task", "mnist", "--results", str(kept.root),
                 "--out", str(out), "--merge")
    assert proc.returncode != 0 and "adapter cannot be merged" in proc.stderr and "Traceback" not in proc.stderr
    proc = bench("export", "--suite", "demo", "--method", "lora", "--task", "textures", "--results", str(kept.root),
                 "--out", str(out))
    assert proc.returncode != 0 and "no ok final-stage record of lora on demo/textures" in proc.stderr
    assert "--keep-weights" in proc.stderr
    # a run made without --keep-weights: the command to rerun it
    again = bench("run", "--suite", "demo", "--methods", "linear", "--tasks", "mnist", "--results", str(kept.root),
                  "--quiet")
    assert again.returncode == 0
    proc = bench("export", "--suite", "demo", "--method", "linear", "--task", "mnist", "--results", str(kept.root),
                 "--out", str(out))
    assert proc.returncode != 0 and "kept no weights" in proc.stderr and "--keep-weights --force" in proc.stderr
