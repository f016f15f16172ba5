"""LoRA, BitFit, SSF, the adapters and AdaptFormer held to their sources: parameter counts on
ViT-B/16, LoRA's untouched k rows, merges that change nothing, and the recipe's drop-path."""

import copy

import pytest
import timm
import torch

from bench.engine import make_optimizer, train_step
from bench.method import get_method

CLASSES = 5


def tiny_vit(drop_path: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                             patch_size=4, embed_dim=24, depth=3, num_heads=2, drop_path_rate=drop_path)


def build(name: str, backbone=None, **overrides):
    m = get_method(name)
    hp = {**m.defaults, **overrides}
    torch.manual_seed(1)
    return m.build(backbone if backbone is not None else tiny_vit(), CLASSES, hp), hp


def trained(name: str, steps: int = 3, **overrides):
    """A model of the method after a few optimizer steps, so its update is not the init's."""
    model, hp = build(name, **overrides)
    model.train()
    opt = make_optimizer(model, {**hp, "lr": 0.05, "lr_batch_base": 0})
    x, y = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(6) % CLASSES
    for _ in range(steps):
        train_step(model, opt, x, y)
    return model


@pytest.mark.slow
def test_the_formulas_give_the_published_counts_on_vit_b16():
    """ViT-B/16 as the papers' (timm's vit_base_patch16_224, built without weights): the counts
    methods-next.md derives from each source, without the head."""
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    assert sum(p.numel() for p in vit.parameters()) == 85_798_656
    expected = [("lora", {}, 294_912), ("lora", {"targets": "qkv"}, 294_912), ("bitfit", {}, 102_912),
                ("ssf", {}, 205_824), ("adapter", {}, 156_768), ("adapter-houlsby", {}, 313_536 + 38_400),
                ("adaptformer", {}, 1_189_632), ("adaptformer", {"dim": 8}, 156_768),
                ("vpt-deep", {}, 92_160), ("vpt-shallow", {}, 7_680), ("lion", {}, 51_995),
                ("repadapter", {}, 239_808), ("fact-tt", {}, 21_504), ("fact-tt", {"r": 4}, 8_448),
                ("fact-tk", {}, 86_528), ("fact-tk", {"r": 8}, 13_952), ("convpass", {}, 327_552)]
    head = 768 * 100 + 100
    for name, overrides, count in expected:
        m = get_method(name)
        hp = {**m.defaults, **overrides}
        assert m.formula(vit, 100, hp) - head == count, (name, overrides)
        model = m.build(copy.deepcopy(vit), 100, hp)
        assert model.param_counts()["trainable_params_no_head"] == count, (name, overrides)


def test_lora_on_q_and_v_leaves_the_k_rows_of_qkv_as_they_were():
    model = trained("lora")
    frozen = tiny_vit()
    x = torch.randn(2, 5, 24)
    d = 24
    for qkv, plain, delta in zip((b.attn.qkv for b in model.backbone.blocks),
                                 (b.attn.qkv for b in frozen.blocks), model.deltas):
        assert delta.delta_weight()[d:2 * d].abs().max() == 0
        model.eval()
        with torch.no_grad():
            out, ref = qkv(x), plain(x)
        assert torch.equal(out[..., d:2 * d], ref[..., d:2 * d])        # k untouched
        assert not torch.allclose(out[..., :d], ref[..., :d])           # q and v trained
        assert not torch.allclose(out[..., 2 * d:], ref[..., 2 * d:])


@pytest.mark.parametrize("name, overrides", [("lora", {}), ("lora", {"targets": "qkv"}), ("ssf", {}),
                                             ("repadapter", {}), ("repadapter", {"groups": 1, "scale": 3.0}),
                                             ("fact-tt", {"scale": 5.0}), ("fact-tk", {"scale": 5.0, "r": 4})])
def test_a_merged_model_is_the_plain_backbone_and_gives_the_same_outputs(name, overrides):
    model = trained(name, **overrides)
    model.eval()
    merged = model.merged()
    merged.eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(merged(x), model(x), atol=1e-5)
    backbone_params = sum(p.numel() for p in tiny_vit().parameters())
    head = 24 * CLASSES + CLASSES
    assert sum(p.numel() for p in merged.parameters()) == backbone_params + head
    assert type(merged.backbone) is type(tiny_vit())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in merged.backbone.modules())
    assert set(merged.backbone.state_dict()) == set(tiny_vit().state_dict())


def test_methods_that_cannot_merge_say_so():
    for name in ("adapter", "adaptformer", "vpt-deep", "lion", "convpass"):
        assert build(name)[0].merged() is None, name


@pytest.mark.parametrize("name", ["lora", "bitfit", "ssf", "adapter", "adapter-houlsby", "adaptformer", "repadapter",
                                  "fact-tt", "fact-tk", "convpass", "noah"])
def test_drop_path_is_on_while_these_methods_train_and_off_when_they_evaluate(name):
    model, hp = build(name, tiny_vit(drop_path=hp_drop_path(name)))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = model.features(x)
        torch.manual_seed(1)
        b = model.features(x)
    assert not torch.allclose(a, b)  # stochastic depth drew different paths
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.features(x), model.features(x))


def hp_drop_path(name: str) -> float:
    return get_method(name).defaults["drop_path"]


def test_drop_path_is_off_for_vpt_and_the_recipes_say_so():
    assert hp_drop_path("vpt-deep") == hp_drop_path("vpt-shallow") == hp_drop_path("linear") == 0.0
    assert all(hp_drop_path(n) == 0.1 for n in ("lora", "bitfit", "ssf", "adapter", "adapter-houlsby", "adaptformer"))
    model, _ = build("vpt-shallow", tiny_vit(drop_path=0.1))  # even a backbone built with it
    model.train()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.features(x), model.features(x))  # the frozen ViT stays in eval mode


def test_the_adamw_recipe_is_what_the_sources_ran():
    for name in ("lora", "bitfit", "ssf", "adapter", "adapter-houlsby", "adaptformer"):
        hp = get_method(name).defaults
        assert (hp["optimizer"], hp["lr"], hp["lr_batch_base"], hp["weight_decay"]) == ("adamw", 1e-3, 64, 1e-4)
        assert (hp["epochs"], hp["warmup_epochs"], hp["batch_size"], hp["lr_schedule"]) == (100, 10, 64, "epoch")
        assert get_method(name).grid["lr"] == [1e-3, 1e-2] and get_method(name).grid["weight_decay"] == [1e-4, 1e-3]
    from bench.model import warmup_cosine_per_epoch as f
    # timm's CosineLRScheduler as they stepped it: from 1e-6, peak 1e-3, down towards 1e-5
    assert f(0, 10, 100, 1e-3, 1e-2) * 1e-3 == pytest.approx(1e-6)
    assert f(10, 10, 100, 1e-3, 1e-2) == pytest.approx(1.0)
    assert f(99, 10, 100, 1e-3, 1e-2) * 1e-3 == pytest.approx(1e-5, rel=0.05)


def test_targets_that_are_not_there_are_refused_naming_the_module():
    from bench.errors import UserError

    vit = tiny_vit()
    vit.blocks[1].attn.qkv = torch.nn.Identity()  # a ViT whose qkv is not a Linear
    with pytest.raises(UserError, match=r"blocks.1.attn.qkv of this VisionTransformer is a Identity"):
        build("lora", vit)
    vit = tiny_vit()
    del vit.blocks[2].mlp
    with pytest.raises(UserError, match=r"blocks.2 of this VisionTransformer has none"):
        build("adapter", vit)


def test_convpass_needs_a_square_grid_and_one_class_token_and_sees_its_neighbours():
    from bench.errors import UserError

    with pytest.raises(UserError, match="3 prefix tokens"):
        build("convpass", timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                                            patch_size=4, embed_dim=24, depth=1, num_heads=2, reg_tokens=2))
    with pytest.raises(UserError, match=r"patch grid is \(4, 2\)"):
        build("convpass", timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                            img_size=(16, 8), patch_size=4, embed_dim=24, depth=1, num_heads=2))
    # the bypass of one block, alone: a change to one patch token moves its grid neighbours and
    # no token further away (a 3x3 convolution); the class token sees only itself
    model = trained("convpass", scale=2.0)
    bypass = model.bypasses[0].eval()
    x = torch.randn(1, 17, 24)
    moved = x.clone()
    moved[0, 1 + 5] += 1.0                                # patch (1, 1) of the 4x4 grid
    with torch.no_grad():
        diff = (bypass(moved, torch.zeros(1, 17, 24)) - bypass(x, torch.zeros(1, 17, 24))).abs().sum(-1)[0]
    changed = {i - 1 for i in range(1, 17) if diff[i] > 1e-7}
    neighbours = {r * 4 + c for r in range(3) for c in range(3)}  # rows 0-2, columns 0-2
    assert changed <= neighbours and 5 in changed and diff[0] == 0


@pytest.mark.slow
def test_noah_retrains_the_subnets_noah_committed_with_their_parameter_counts():
    """The 19 committed subnets on ViT-B/16: 287,278 to 431,686 parameters, mean 360,134
    (methods-next.md), the vtab1k suite naming each task's own."""
    from bench.suite import load_suite

    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    m = get_method("noah")
    suite = load_suite("vtab1k")
    head = 768 * 100 + 100
    counts = []
    for task in suite.tasks:
        assert task.hparams["noah"]["subnet"] == task.name
        counts.append(m.formula(vit, 100, {**m.defaults, "subnet": task.name}) - head)
    assert (min(counts), max(counts)) == (287_278, 431_686)
    assert sum(counts) / len(counts) == pytest.approx(360_134.26, abs=0.01)
    model = m.build(copy.deepcopy(vit), 100, {**m.defaults, "subnet": "dtd"})
    assert model.param_counts()["trainable_params_no_head"] == m.formula(vit, 100, {**m.defaults, "subnet": "dtd"}) - head


def test_noah_gives_each_block_the_prompts_rank_and_width_of_its_subnet():
    from bench.errors import UserError

    # NOAH's DTD subnet (experiments/NOAH/subnet/VTAB/ViT-B_prompt_dtd.yaml, RETRAIN)
    prompts = [10, 5, 1, 1, 5, 10, 5, 1, 1, 5, 1, 1]
    widths = [1, 1, 1, 10, 1, 1, 10, 10, 10, 10, 10, 1]
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, patch_size=4,
                            embed_dim=24, depth=12, num_heads=2)
    model, _ = build("noah", vit, subnet="dtd")
    assert model.sizes["prompt"] == prompts and model.sizes["lora"] == prompts and model.sizes["adapter"] == widths
    assert [a.down.out_features for a in model.adapters] == widths
    assert [d.A["qkv"].out_features for d in model.loras] == prompts  # one A for q, k and v
    seen = []
    for block in vit.blocks:  # registered after the method's hooks: sees the tokens with the prompts
        block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    assert seen == [17 + p for p in prompts]  # the CLS and 16 patch tokens, then this block's prompts
    with pytest.raises(UserError, match="has 12 layers .* this backbone has 3 blocks"):
        build("noah", subnet="dtd")


def test_a_report_with_noah_rows_says_whose_search_chose_them(tmp_path):
    from bench.reports.table import build_report
    from bench.spec import RunSpec
    from bench.store import Store
    from bench.suite import load_suite

    suite = load_suite("vtab1k")
    store = Store(tmp_path)
    s = RunSpec(suite="vtab1k", task="dtd", method="noah", seed=1, stage="final", backbone="vit_base_patch16_224",
                checkpoint=None, image_size=224, hparams={"lr": 1e-3, "subnet": "dtd"})
    store.write(s, {"run_id": s.run_id, "spec": s.to_dict(), "status": "ok", "finished_at": "2026-01-01",
                    "metrics": {"top1": 70.0, "trainable_params": 1, "trainable_params_no_head": 1}})
    notes = build_report(store, suite).notes
    assert any(n.startswith("noah: retrains the per-task architecture") and "NOAH's own search" in n for n in notes)
