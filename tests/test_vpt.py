"""VPT held to the paper's definition: a reference written here from the text, same outputs."""

import math

import pytest
import timm
import torch

from bench.errors import UserError
from bench.spec import plan
from bench.method import get_method, select_methods
from bench.suite import load_suite


def tiny_vit(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(pretrained=False, num_classes=0, img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=2)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", **args)


def reference_vpt(vit, prompts, head, x, deep):
    """VPT from the paper's definition, written against timm's ViT parts by hand."""
    tokens = vit.patch_embed(x)                                   # (B, N, D)
    cls = vit.cls_token.expand(x.shape[0], -1, -1)
    tokens = torch.cat([cls, tokens], dim=1) + vit.pos_embed      # position embedding first
    p = prompts.shape[1]
    seq = torch.cat([tokens[:, :1], prompts[0].expand(x.shape[0], -1, -1), tokens[:, 1:]], dim=1)
    for i, block in enumerate(vit.blocks):
        if deep and i > 0:                                        # replace, do not add
            seq = torch.cat([seq[:, :1], prompts[i].expand(x.shape[0], -1, -1), seq[:, 1 + p:]], dim=1)
        seq = block(seq)
    return head(vit.norm(seq)[:, 0])                              # CLS after the final norm


@pytest.mark.parametrize("name, deep", [("vpt-shallow", False), ("vpt-deep", True)])
def test_vpt_matches_the_reference_written_from_the_definition(name, deep):
    method = get_method(name)
    model = method.build(tiny_vit(), 7, {**method.defaults, "prompt_length": 4})
    model.eval()
    with torch.no_grad():
        model.prompts.normal_()  # any prompt values: the structure is what is tested
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ours = model(x)
        ref = reference_vpt(tiny_vit().eval(), model.prompts, model.head, x, deep)
    assert model.prompts.shape == ((3 if deep else 1), 4, 24)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_prompt_init_dropout_and_frozen_eval_mode_follow_the_paper():
    deep, shallow = get_method("vpt-deep"), get_method("vpt-shallow")
    assert deep.defaults["prompt_dropout"] == 0.1 and shallow.defaults["prompt_dropout"] == 0.0
    assert get_method("vpt") is deep
    vit_b = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    model = deep.build(vit_b, 10, {**deep.defaults, "prompt_length": 50})
    bound = math.sqrt(6 / (3 * 16 * 16 + 768))
    assert bound == pytest.approx(0.0625)
    assert model.prompts.abs().max() <= bound
    assert model.prompts.abs().max() > 0.9 * bound  # uniform over the whole interval
    model.train()
    assert model.prompt_dropout.training and not model.backbone.training
    assert not any(m.training for m in model.backbone.modules())


@pytest.mark.parametrize("p", [1, 10, 50])
def test_parameter_formulas_on_the_real_size_vit_b16(p):
    vit_b = timm.create_model("vit_base_patch16_224.orig_in21k", pretrained=False, num_classes=0)
    assert sum(q.numel() for q in vit_b.parameters()) == 85_798_656
    head = 768 * 100 + 100
    for name, per_prompt in (("vpt-deep", 9216), ("vpt-shallow", 768)):
        m = get_method(name)
        counts = m.build(vit_b, 100, {**m.defaults, "prompt_length": p}).param_counts()
        assert counts["trainable_params_no_head"] == per_prompt * p
        assert counts["trainable_params"] == per_prompt * p + head
        assert counts["total_params"] == 85_798_656 + per_prompt * p + head


def test_models_vpt_cannot_handle_are_refused_with_the_reason():
    m = get_method("vpt-deep")
    with pytest.raises(UserError, match="4 prefix tokens"):
        m.build(tiny_vit(reg_tokens=3), 3, m.defaults)
    with pytest.raises(UserError, match="pools with 'avg'"):
        m.build(tiny_vit(global_pool="avg"), 3, m.defaults)
    with pytest.raises(UserError, match="needs a timm VisionTransformer"):
        m.build(torch.nn.Linear(3, 3), 3, m.defaults)


def test_vtab1k_gives_vpt_deep_its_per_task_prompt_lengths_and_vpt_is_an_alias():
    suite = load_suite("vtab1k")
    specs = plan(suite, select_methods("vpt,vpt-shallow,linear"), list(suite.tasks), [42], "final",
                 suite.backbone, None, [])
    deep = {s.task: s.hparams["prompt_length"] for s in specs if s.method == "vpt-deep"}
    assert deep["patch_camelyon"] == 100 and deep["oxford_flowers102"] == 1 and deep["smallnorb_azi"] == 200
    shallow = {s.hparams["prompt_length"] for s in specs if s.method == "vpt-shallow"}
    assert shallow == {get_method("vpt-shallow").defaults["prompt_length"]}
    assert all("prompt_length" not in s.hparams for s in specs if s.method == "linear")
