"""The contract every registered method, present and future, must keep (as HF PEFT tests its
methods): finite outputs of the right shape, gradients exactly where the method says it trains,
the paper's parameter formula, identity at init where claimed, and a trainable-state round trip."""

import copy

import pytest
import timm
import torch

from bench.engine import make_optimizer
from bench.measure import forward_gflops
from bench.registry import all_methods

BATCH, CLASSES = 3, 5


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                             patch_size=4, embed_dim=24, depth=3, num_heads=2)


def build(method, seed=0, **overrides):
    hp = {**method.defaults, **overrides}
    torch.manual_seed(seed + 1)
    return method.build(tiny_vit(seed), CLASSES, hp), hp


METHODS = sorted(all_methods())


@pytest.fixture(params=METHODS)
def method(request):
    return all_methods()[request.param]


def images(seed=0):
    return torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_forward_is_finite_with_shape_batch_by_classes_and_its_flops_are_countable(method):
    model, _ = build(method)
    model.train()
    out = model(images())
    assert out.shape == (BATCH, CLASSES)
    assert torch.isfinite(out).all()
    assert forward_gflops(model, 16, torch.device("cpu")) > 0
    assert model.training  # counting FLOPs leaves the mode as it found it


def test_trainable_parameters_get_gradients_and_frozen_ones_never_change(method):
    model, hp = build(method, prompt_dropout=0.0) if "prompt_dropout" in method.defaults else build(method)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "a method must train something"
    model.train()
    optimizer = make_optimizer(model, {**hp, "lr": 0.1, "lr_batch_base": 0})
    # One step first: a zero-initialised output projection (LoRA-style, LION) blocks the
    # gradient of what feeds it until it has moved once.
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images(step)), torch.tensor([0, 1, 2]))
        loss.backward()
        if step == 1:
            for name, p in model.named_parameters():
                if p.requires_grad:
                    assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
                else:
                    assert p.grad is None, f"frozen {name} got a gradient"
        optimizer.step()
        model.after_optimizer_step()
    after = model.state_dict()
    for key, value in before.items():
        if key in trainable:
            continue
        assert torch.equal(value, after[key]), f"frozen {key} changed"


def test_trainable_parameter_count_equals_the_methods_formula(method):
    assert method.formula is not None, f"{method.name} must declare its trainable-parameter formula"
    model, hp = build(method)
    counts = model.param_counts()
    assert counts["trainable_params"] == method.formula(tiny_vit(), CLASSES, hp)
    head = 24 * CLASSES + CLASSES
    assert counts["trainable_params_no_head"] == counts["trainable_params"] - head
    assert counts["total_params"] >= sum(p.numel() for p in tiny_vit().parameters()) + head


def test_methods_that_start_as_the_identity_reproduce_the_frozen_features(method):
    if not method.identity_at_init:
        pytest.skip(f"{method.name} does not start as the frozen backbone")
    reference = tiny_vit().eval()
    model, _ = build(method)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.features(images()), reference(images()), atol=1e-6)


def test_saving_and_loading_only_the_trainable_state_reproduces_the_outputs(method):
    model, hp = build(method, seed=0)
    model.train()
    optimizer = make_optimizer(model, {**hp, "lr": 0.05, "lr_batch_base": 0})
    torch.nn.functional.cross_entropy(model(images()), torch.tensor([0, 1, 2])).backward()
    optimizer.step()
    state = copy.deepcopy(model.trainable_state_dict())
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    fresh, _ = build(method, seed=0)  # same frozen backbone, freshly initialised method
    fresh.load_trainable_state_dict(state)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(images(1)), fresh(images(1)))


def test_the_head_is_a_linear_layer_initialised_as_in_vpts_code(method):
    model, _ = build(method)
    assert isinstance(model.head, torch.nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (24, CLASSES)
    from bench.model import make_head
    torch.manual_seed(0)
    wide = make_head(768, 1000)
    # kaiming-normal, fan-out mode: std = sqrt(2 / fan_out)
    assert wide.weight.std().item() == pytest.approx((2 / 1000) ** 0.5, rel=0.02)
    bound = 1 / 768 ** 0.5  # the bias keeps nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert wide.bias.abs().max() <= bound and wide.bias.abs().max() > 0.9 * bound
