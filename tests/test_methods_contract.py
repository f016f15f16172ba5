"""The contract every registered method, present and future, must keep (as HF PEFT tests its
methods): finite outputs of the right shape, gradients exactly where the method says it trains,
the paper's parameter formula, identity at init where claimed, and a trainable-state round trip.

Every method is held to it on a tiny ViT; a method that declares `backbones="any"` also on a
tiny ResNet, Swin and ConvNeXt, and a ViT-only method must refuse those with one clear error."""

import copy

import pytest
import timm
import torch

from bench.engine import make_optimizer
from bench.errors import UserError
from bench.measure import forward_gflops
from bench.method import all_methods

BATCH, CLASSES = 3, 5

# name -> (builder, input size); each small enough for a step in milliseconds
BACKBONES = {
    "vit": (lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                                      patch_size=4, embed_dim=24, depth=3, num_heads=2), 16),
    # zero_init_last off: a random ResNet's residual branches are otherwise dead (a zero last
    # batch-norm scale), and nothing inside them would get a gradient
    "resnet": (lambda: timm.create_model("test_resnet", pretrained=False, num_classes=0, zero_init_last=False), 32),
    "swin": (lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0,
                                       img_size=16, patch_size=2, window_size=4, embed_dim=12, depths=(1, 1),
                                       num_heads=(1, 2)), 16),
    "convnext": (lambda: timm.create_model("test_convnext", pretrained=False, num_classes=0), 32),
}


def tiny_vit(seed: int = 0):
    return tiny_backbone("vit", seed)


def tiny_backbone(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return BACKBONES[kind][0]()


METHODS = sorted(all_methods())
CASES = [(m, kind) for m in METHODS for kind in BACKBONES
         if kind == "vit" or all_methods()[m].backbones == "any"]


class Case:
    """A method on one tiny backbone."""

    def __init__(self, method, kind):
        self.method, self.kind = method, kind
        self.size = BACKBONES[kind][1]

    def build(self, seed=0, **overrides):
        hp = {**self.method.defaults, **overrides}
        backbone = tiny_backbone(self.kind, seed)
        torch.manual_seed(seed + 1)
        return self.method.build(backbone, CLASSES, hp), hp

    def backbone(self, seed=0):
        return tiny_backbone(self.kind, seed)

    def images(self, seed=0):
        return torch.randn(BATCH, 3, self.size, self.size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=CASES, ids=[f"{m}-{k}" for m, k in CASES])
def case(request):
    name, kind = request.param
    return Case(all_methods()[name], kind)


@pytest.mark.parametrize("name", [m for m in METHODS if all_methods()[m].backbones == "vit"])
@pytest.mark.parametrize("kind", ["resnet", "swin"])
def test_a_vit_only_method_refuses_other_backbones_with_one_clear_error(name, kind):
    method = all_methods()[name]
    with pytest.raises(UserError, match="VisionTransformer"):
        method.build(tiny_backbone(kind), CLASSES, dict(method.defaults))


def test_forward_is_finite_with_shape_batch_by_classes_and_its_flops_are_countable(case):
    model, _ = case.build()
    model.train()
    out = model(case.images())
    assert out.shape == (BATCH, CLASSES)
    assert torch.isfinite(out).all()
    assert forward_gflops(model, case.size, torch.device("cpu")) > 0
    assert model.training  # counting FLOPs leaves the mode as it found it


def test_trainable_parameters_get_gradients_and_frozen_ones_never_change(case):
    method = case.method
    model, hp = case.build(prompt_dropout=0.0) if "prompt_dropout" in method.defaults else case.build()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "a method must train something"
    model.train()
    optimizer = make_optimizer(model, {**hp, "lr": 0.1, "lr_batch_base": 0})
    # One step first: a zero-initialised output projection (LoRA-style, LION) blocks the
    # gradient of what feeds it until it has moved once.
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(case.images(step)), torch.tensor([0, 1, 2]))
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
    trained = model.trained_state_names()  # a backbone in train mode also updates its buffers
    for key, value in before.items():
        if key in trained:
            continue
        assert torch.equal(value, after[key]), f"frozen {key} changed"


def test_trainable_parameter_count_equals_the_methods_formula(case):
    method = case.method
    assert method.formula is not None, f"{method.name} must declare its trainable-parameter formula"
    model, hp = case.build()
    counts = model.param_counts()
    assert counts["trainable_params"] == method.formula(case.backbone(), CLASSES, hp)
    features = case.backbone().num_features
    head = features * CLASSES + CLASSES
    assert counts["trainable_params_no_head"] == counts["trainable_params"] - head
    assert counts["total_params"] >= sum(p.numel() for p in case.backbone().parameters()) + head


def test_methods_that_start_as_the_identity_reproduce_the_frozen_features(case):
    if not case.method.identity_at_init:
        pytest.skip(f"{case.method.name} does not start as the frozen backbone")
    reference = case.backbone().eval()
    model, _ = case.build()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.features(case.images()), reference(case.images()), atol=1e-6)


def test_saving_and_loading_only_the_trainable_state_reproduces_the_outputs(case):
    model, hp = case.build(seed=0)
    model.train()
    optimizer = make_optimizer(model, {**hp, "lr": 0.05, "lr_batch_base": 0})
    torch.nn.functional.cross_entropy(model(case.images()), torch.tensor([0, 1, 2])).backward()
    optimizer.step()
    state = copy.deepcopy(model.trainable_state_dict())
    assert {n for n, p in model.named_parameters() if p.requires_grad} <= set(state)
    assert set(state) <= {n for n, p in model.named_parameters() if p.requires_grad} | {
        n for n, _ in model.named_buffers()}
    fresh, _ = case.build(seed=0)  # same frozen backbone, freshly initialised method
    fresh.load_trainable_state_dict(state)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(case.images(1)), fresh(case.images(1)))


def test_the_head_is_a_linear_layer_initialised_as_in_vpts_code(case):
    model, _ = case.build()
    assert isinstance(model.head, torch.nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (case.backbone().num_features, CLASSES)
    from bench.model import make_head
    torch.manual_seed(0)
    wide = make_head(768, 1000)
    # kaiming-normal, fan-out mode: std = sqrt(2 / fan_out)
    assert wide.weight.std().item() == pytest.approx((2 / 1000) ** 0.5, rel=0.02)
    # one constant bias for every class (VPT: -log(99); any constant gives the same softmax)
    assert torch.equal(wide.bias, torch.full_like(wide.bias, wide.bias[0].item()))
