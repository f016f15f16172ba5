"""Speed work that must not change results: decoded splits, batch loaders, cached features,
precision and compile options. (Speed itself is measured by benchmarks/run.py, not asserted.)"""

import functools
from dataclasses import replace

import pytest
import torch
from torch.utils.data import DataLoader

from bench import accel, data, features
from bench.data import (DecodedDataset, ImageDataset, batch_loader, build_transforms, decode_split,
                        read_split)
from bench.engine import EngineOptions, build_model, run
from bench.errors import UserError
from bench.method import get_method, register_method
from bench.suite import load_suite
from helpers import write_fgvc_task
from test_engine import toy_specs

CPU = EngineOptions(device=torch.device("cpu"))
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(autouse=True)
def _fresh_decoded():
    data.clear_decoded()
    yield
    data.clear_decoded()


def toy_split(toy_suite, split="train800"):
    suite_path, root = toy_suite
    suite = load_suite(str(suite_path))
    return suite, read_split(suite, suite.task("colours"), root, split)


def test_a_decoded_split_gives_bit_identical_batches_to_the_image_by_image_dataset(toy_suite):
    suite, split = toy_split(toy_suite)
    transforms = build_transforms(suite, MEAN, STD, train=True)
    decoded = decode_split(split, transforms[0])
    assert decoded.pixels.dtype == torch.uint8 and decoded.pixels.shape == (40, 3, 32, 32)
    batch = DecodedDataset(decoded, transforms[1])[[3, 0, 7]]
    per_image = ImageDataset(split.items, transforms)
    assert torch.equal(batch[0], torch.stack([per_image[i][0] for i in (3, 0, 7)]))
    assert batch[1].tolist() == [per_image[i][1] for i in (3, 0, 7)]


def test_a_split_is_decoded_once_per_process_and_again_when_an_image_changes(toy_suite, monkeypatch):
    suite, split = toy_split(toy_suite)
    decode = build_transforms(suite, MEAN, STD, train=True)[0]
    opened = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda p: opened.append(p) or real(p))
    first = decode_split(split, decode)
    assert first.source == "decoded" and len(opened) == 40
    again = decode_split(split, decode)
    assert again.source == "memory" and len(opened) == 40 and again.pixels is first.pixels
    path = split.items[5][0]
    from PIL import Image
    Image.new("RGB", (24, 24), (0, 0, 0)).save(path)
    changed = decode_split(split, decode)
    assert changed.source == "decoded" and changed.pixels[5].sum() == 0


def test_the_disk_cache_is_written_beside_the_split_and_read_back_in_a_new_process(toy_suite, monkeypatch):
    suite, split = toy_split(toy_suite)
    decode = build_transforms(suite, MEAN, STD, train=True)[0]
    first = decode_split(split, decode, cache="disk")
    stored = list((split.items[0][0].parents[2] / ".peftbench-decoded").glob("train800-*.pt"))
    assert len(stored) == 1
    data.clear_decoded()  # as a new process would start
    monkeypatch.setattr(data, "load_image", lambda p: pytest.fail(f"decoded {p} again"))
    again = decode_split(split, decode, cache="disk")
    assert again.source == "disk" and torch.equal(again.pixels, first.pixels)
    with pytest.raises(UserError, match="decode cache 'nope'"):
        decode_split(split, decode, cache="nope")


def test_a_split_over_the_memory_budget_is_streamed(toy_suite):
    suite, split = toy_split(toy_suite)
    decode = build_transforms(suite, MEAN, STD, train=True)[0]
    assert decode_split(split, decode, budget=10 * 3 * 32 * 32) is None


def test_images_of_different_shapes_and_random_augmentation_go_image_by_image(tmp_path):
    suite = load_suite("fgvc")
    write_fgvc_task(tmp_path, "CUB_200_2011", "images", [1, 2], {"train": 4, "val": 2, "test": 2})
    split = read_split(suite, suite.task("cub"), tmp_path, "train")
    transforms = build_transforms(suite, MEAN, STD, train=True)
    ds = DecodedDataset(decode_split(split, transforms[0]), transforms[1], per_image=True)
    x, y = ds[[0, 1, 2]]
    assert ds.per_image and x.shape == (3, 3, 224, 224) and y.tolist() == [split.items[i][1] for i in range(3)]


class Indices(torch.utils.data.Dataset):
    def __len__(self):
        return 53

    def __getitem__(self, index):
        return index


def test_the_batch_loader_shuffles_exactly_as_dataloader_with_the_same_generator():
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    reference = DataLoader(list(range(53)), batch_size=10, shuffle=True, generator=gen_a)
    ours = batch_loader(Indices(), 10, shuffle=True, gen=gen_b)
    assert len(ours) == len(reference) == 6
    for _ in range(3):  # epochs: the generator advances the same way
        assert [b.tolist() for b in ours] == [b.tolist() for b in reference]
    assert torch.equal(gen_a.get_state(), gen_b.get_state())
    torch.manual_seed(3)  # without a generator: the same draws from the global one
    expected = [b.tolist() for b in DataLoader(list(range(53)), batch_size=10, shuffle=True)]
    torch.manual_seed(3)
    assert [b.tolist() for b in batch_loader(Indices(), 10, shuffle=True, gen=None)] == expected
    assert [b.tolist() for b in batch_loader(Indices(), 10, shuffle=False, gen=None)][1] == list(range(10, 20))


def test_the_linear_probe_on_cached_features_is_the_per_epoch_run(toy_suite):
    suite_path, root = toy_suite
    suite, specs = toy_specs(suite_path, "linear", ["epochs=4", "lr=1.0"])
    cached = run(specs[0], suite, root, CPU)
    per_epoch = run(specs[0], suite, root, EngineOptions(device=torch.device("cpu"), feature_cache=False))
    assert cached["metrics"]["feature_cache"] is True and per_epoch["metrics"]["feature_cache"] is False
    assert cached["metrics"]["feature_seconds"] > 0
    assert cached["metrics"]["top1"] == per_epoch["metrics"]["top1"]
    for a, b in zip(cached["curve"], per_epoch["curve"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_acc"] == b["train_acc"]


def test_cached_features_train_the_same_head_weights(toy_suite):
    suite_path, root = toy_suite
    suite, specs = toy_specs(suite_path, "linear", ["epochs=2"])
    spec = specs[0]
    task = suite.task(spec.task)
    heads = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        model, mean, std = build_model(spec, task.num_classes)
        opts = EngineOptions(device=torch.device("cpu"), feature_cache=use_cache)
        gen = torch.Generator().manual_seed(spec.seed)
        items = read_split(suite, task, root, "train800val200")
        train_set, train_loader = accel.loader(suite, items, mean, std, True, 10, gen, opts)
        setup = accel.prepare(spec, suite, model, train_loader, train_loader, opts)
        opt = torch.optim.SGD(setup.model.parameters(), lr=0.1, momentum=0.9)
        setup.model.train()
        for _ in range(2):
            for x, y in setup.train_loader:
                loss = torch.nn.functional.cross_entropy(setup.model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        heads.append(model.head.weight.detach().clone())
    assert torch.allclose(heads[0], heads[1], rtol=1e-5, atol=1e-6)


def test_the_feature_cache_is_refused_wherever_the_features_could_change(toy_suite):
    import dataclasses

    suite_path, _ = toy_suite
    suite = load_suite(str(suite_path))
    linear, full = get_method("linear"), get_method("full")
    spec = toy_specs(suite_path, "linear")[1][0]
    model, _, _ = build_model(spec, 3)
    assert features.blocker(linear, model, suite) is None
    assert "does not declare head_only" in features.blocker(full, model, suite)
    assert "augments at random" in features.blocker(linear, model, dataclasses.replace(suite, transform="crop-flip"))
    model.backbone.norm.weight.requires_grad_(True)  # a method that declares more than it trains
    assert "outside the head" in features.blocker(linear, model, suite)


def test_a_head_only_plugin_gets_the_cache_and_its_hooks_still_run(toy_suite):
    from bench.method import METHODS

    with METHODS.scratch():
        _head_only_plugin(toy_suite)


def _head_only_plugin(toy_suite):
    from bench.model import PeftModel, freeze, make_head

    calls = {"reg": 0, "epochs": 0}

    class Probe(PeftModel):
        def regularization(self):
            calls["reg"] += 1
            return 1e-3 * self.head.weight.pow(2).sum()

        def on_epoch_end(self, epoch, epochs):
            calls["epochs"] += 1

    @register_method("probe-l2", defaults={"lr": 1.0}, head_only=True)
    def build(backbone, num_classes, hparams):
        freeze(backbone)
        return Probe(backbone, make_head(backbone.num_features, num_classes))

    suite_path, root = toy_suite
    suite, specs = toy_specs(suite_path, "probe-l2", ["epochs=2"])
    out = run(specs[0], suite, root, CPU)
    assert out["metrics"]["feature_cache"] is True
    assert calls == {"reg": 2 * 5, "epochs": 2}  # 50 images, batch 10


def test_bf16_autocast_runs_on_the_cpu_and_is_recorded(toy_suite):
    suite_path, root = toy_suite
    suite, specs = toy_specs(suite_path, "full", ["epochs=1"])
    out = run(replace(specs[0], precision="bf16"), suite, root, EngineOptions(device=torch.device("cpu")))
    m = out["metrics"]
    assert m["precision"] == "bf16" and m["feature_cache"] is False and m["compile"] is False
    assert 0 <= m["top1"] <= 100 and out["curve"][0]["train_loss"] > 0
    assert accel.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert accel.resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    with pytest.raises(UserError, match="precision 'fp16'"):
        accel.resolve_precision("fp16", torch.device("cpu"))


def test_compile_wraps_the_model_and_keeps_the_result(toy_suite, monkeypatch):
    # the eager backend traces with dynamo but skips code generation: seconds, not a minute
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    suite_path, root = toy_suite
    suite, specs = toy_specs(suite_path, "vpt-shallow", ["epochs=1"])
    plain = run(specs[0], suite, root, CPU)
    compiled = run(specs[0], suite, root, EngineOptions(device=torch.device("cpu"), compile=True))
    assert compiled["metrics"]["compile"] is True
    assert compiled["curve"][0]["train_loss"] == pytest.approx(plain["curve"][0]["train_loss"], rel=1e-4)
    assert compiled["metrics"]["trainable_params"] == plain["metrics"]["trainable_params"]


@pytest.mark.parametrize("space", ["token", "pixel"])
def test_lion_solves_in_fp32_under_bf16_autocast(space):
    """bf16 residuals make Anderson's normal equations singular; the layers run in fp32."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                            patch_size=8, embed_dim=48, depth=2, num_heads=2)
    m = get_method("lion")
    model = m.build(vit, 5, {**m.defaults, "input_space": space})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(8, 3, 32, 32))
    out.float().sum().backward()
    assert model.input_layer.B.weight.grad is not None
    assert model.output_layer.stats["residual"] < 1e-3
