"""LION's equilibrium layers: the solver converges, the implicit gradient is the true one,
memory does not grow with iterations, the contraction holds through training, and the
lottery-ticket pruning splits, pulls, masks and then trains what it kept."""

import pytest
import timm
import torch

from bench.engine import make_optimizer, train_step
from bench.errors import UserError
from bench.methods.lion import EquilibriumLayer, anderson, fixed_point, project_rows_l1, prune_schedule
from bench.method import get_method


def contraction_problem(seed=0, n=4, d=32, kappa=0.95):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    project_rows_l1(A, kappa)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (lambda z: torch.relu(z @ A.T + b)), torch.zeros(n, d, dtype=torch.float64), A


def test_projection_puts_every_row_on_the_l1_ball_and_keeps_short_rows():
    w = torch.randn(20, 30)
    w[0] = 0.001
    short = w[0].clone()
    project_rows_l1(w, 0.9)
    assert (w.abs().sum(1) <= 0.9 + 1e-5).all()
    assert torch.allclose(w.abs().sum(1)[1:], torch.full((19,), 0.9), atol=1e-5)
    assert torch.equal(w[0], short)


def test_the_solvers_reach_a_small_residual_and_anderson_needs_fewer_iterations():
    f, z0, _ = contraction_problem()
    z_fp, it_fp, res_fp = fixed_point(f, z0, 500, 1e-6)
    z_aa, it_aa, res_aa = anderson(f, z0, 500, 1e-6)
    for z in (z_fp, z_aa):
        assert ((f(z) - z).norm() / f(z).norm()).item() < 1e-4
    assert torch.allclose(z_fp, z_aa, atol=1e-5)
    assert it_aa < it_fp, (it_aa, it_fp)


def layer(backward="implicit", max_iter=200, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    lay = EquilibriumLayer(6, 5, max_iter=max_iter, tol=1e-10, backward=backward, **kw).to(dtype)
    with torch.no_grad():
        lay.G.weight.normal_()  # a non-zero output projection, so gradients flow
    lay.train()
    return lay


def unrolled(lay, u, steps=300):
    inj = lay.B(u)
    z = torch.zeros_like(inj)
    for _ in range(steps):
        z = lay.f(z, inj)
    return u + lay.G(z)


@pytest.mark.parametrize("conv", [False, True])
def test_the_implicit_gradient_matches_differentiating_through_unrolled_iterations(conv):
    if conv:  # the pixel layer: 3x3 convolutions, whose adjoint is a transposed convolution
        torch.manual_seed(0)
        lay = EquilibriumLayer(3, 4, conv=True, max_iter=200, tol=1e-10).to(torch.float64)
        with torch.no_grad():
            lay.G.weight.normal_()
        lay.train()
        u = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    else:
        lay = layer(dtype=torch.float64)
        u = torch.randn(3, 6, dtype=torch.float64)
    lay(u).pow(2).sum().backward()
    implicit = [p.grad.clone() for p in lay.parameters()]
    lay.zero_grad()
    unrolled(lay, u).pow(2).sum().backward()
    for got, want in zip(implicit, [p.grad for p in lay.parameters()]):
        assert (got - want).norm() / (want.norm() + 1e-12) < 1e-3


def test_gradcheck_in_float64_on_a_small_layer():
    lay = layer(dtype=torch.float64)
    u = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: lay(x), (u,), eps=1e-6, atol=1e-5)


def test_the_phantom_gradient_differs_from_the_implicit_one_but_points_the_same_way():
    u = torch.randn(3, 6)
    grads = {}
    for mode in ("implicit", "phantom"):
        lay = layer(backward=mode)
        lay(u).pow(2).sum().backward()
        grads[mode] = lay.B.weight.grad.flatten()
    assert not torch.allclose(grads["implicit"], grads["phantom"])
    assert torch.nn.functional.cosine_similarity(grads["implicit"], grads["phantom"], dim=0) > 0


def saved_bytes(max_iter):
    lay = layer(max_iter=max_iter, contraction=0.99)
    u = torch.randn(64, 6)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = lay(u)
    out.sum().backward()
    return total, lay.stats["iterations"]


def test_training_memory_does_not_grow_with_solver_iterations():
    small, it_small = saved_bytes(5)
    large, it_large = saved_bytes(50)
    assert it_large > it_small  # the solver really ran longer
    assert large == small


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                             patch_size=4, embed_dim=24, depth=2, num_heads=2)


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_pruning_zeroes_exactly_the_requested_fraction_and_it_stays_zero(sparsity):
    m = get_method("lion")
    model = m.build(tiny_vit(), 4, {**m.defaults, "sparsity": sparsity})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    dense = model.param_counts()["trainable_params"]
    model.split_key_weights()
    model.mask_nonkey()
    for li, layer in enumerate(model.layers()):
        masks = [model.masks[f"{li}.{n}"] for n in "ABG"]
        total = sum(mk.numel() for mk in masks)
        assert sum(int((1 - mk).sum()) for mk in masks) == round(sparsity * total)  # exactly
        for w, mk in zip(layer.weights(), masks):
            assert (w.detach()[mk == 0] == 0).all()
        # B and G are never projected: every key weight there is still non-zero
        # (A's projection onto the L1 ball may zero a few key weights of its own)
        for w, mk in zip(layer.weights()[1:], masks[1:]):
            assert (w.detach()[mk == 1] != 0).all()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(4, 3, 16, 16)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
        model.after_optimizer_step()
    for layer in model.layers():
        assert all((w.detach() * (1 - model.masks[n]) == 0).all() for n, w in model._named_weights())
    counts = model.param_counts()
    pruned = sum(int((1 - mk).sum()) for mk in model.masks.values())
    assert counts["trainable_params_dense"] == dense and counts["trainable_params"] == dense - pruned


def test_the_pixel_space_input_layer_starts_as_the_identity_on_the_image():
    m = get_method("lion")
    model = m.build(tiny_vit(), 3, {**m.defaults, "input_space": "pixel"})
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.input_layer(x), x)
        assert torch.allclose(model.features(x), tiny_vit().eval()(x), atol=1e-6)
    assert model.param_counts()["trainable_params"] == m.formula(tiny_vit(), 3, {**m.defaults, "input_space": "pixel"})


def lion(backbone=None, **overrides):
    m = get_method("lion")
    return m.build(backbone if backbone is not None else tiny_vit(), 4, {**m.defaults, **overrides})


def row_l1(layer):
    return layer.A.weight.detach().reshape(layer.A.weight.shape[0], -1).abs().sum(1).max().item()


@pytest.mark.parametrize("space", ["pixel", "token"])
def test_training_steps_that_leave_the_contraction_ball_are_projected_back_onto_it(space):
    """The well-posedness of both layers rests on ||A||_inf <= contraction: an optimizer step
    that leaves the ball must be projected back before the next forward."""
    torch.manual_seed(0)
    model = lion(input_space=space, contraction=0.5)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3] * 2)
    left_the_ball = False
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        left_the_ball |= max(row_l1(layer) for layer in model.layers()) > 0.5 + 1e-3
        model.after_optimizer_step()  # what the engine calls after every step
        for layer in model.layers():
            assert row_l1(layer) <= 0.5 + 1e-5
    assert left_the_ball  # the steps really tried to leave it, so the projection was needed


def test_the_solver_finds_the_same_fixed_point_from_any_start_after_training():
    """A contraction has one fixed point: different starts must agree after the weights moved."""
    torch.manual_seed(0)
    model = lion(contraction=0.9)
    model.train()
    opt = make_optimizer(model, {**model_defaults(), "lr": 1.0, "lr_batch_base": 0})
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3] * 2)
    for _ in range(5):
        train_step(model, opt, x, y)
    layer = model.output_layer
    inj = layer.B(torch.randn(4, 24)).detach()
    f = lambda z: layer.f(z, inj)  # noqa: E731
    with torch.no_grad():
        a, _, _ = fixed_point(f, torch.zeros_like(inj), 500, 1e-9)
        b, _, _ = fixed_point(f, torch.randn_like(inj) * 10, 500, 1e-9)
    assert torch.allclose(a, b, atol=1e-5)


def model_defaults():
    return dict(get_method("lion").defaults)


def test_the_prune_schedule_leaves_epochs_to_pull_and_to_train_the_key_weights():
    assert prune_schedule(100, 0.3, 0.6) == (30, 60)
    assert prune_schedule(10, 0.3, 0.6) == (3, 6)
    assert prune_schedule(2, 0.3, 0.6) == (1, 1)  # no room to pull: split and mask, then one epoch
    for epochs in range(2, 40):
        split, mask = prune_schedule(epochs, 0.3, 0.6)
        assert 1 <= split <= mask < epochs  # at least one epoch after the mask


def test_pruning_splits_then_pulls_the_non_key_weights_then_masks_them_and_trains_the_rest():
    torch.manual_seed(0)
    model = lion(epochs=10, prune_start=0.3, prune_end=0.6, prune_l2=1.0)
    model.train()
    opt = make_optimizer(model, {**model_defaults(), "lr": 0.05, "lr_batch_base": 0})
    x, y = torch.randn(16, 3, 16, 16), torch.tensor([0, 1, 2, 3] * 4)
    phases, shares = [], []
    key_before_last_epochs = None
    for epoch in range(10):
        for _ in range(4):
            train_step(model, opt, x, y)
        model.on_epoch_end(epoch, 10)
        metrics = model.epoch_metrics()
        phases.append(metrics["prune_phase"])
        shares.append(metrics.get("output_nonkey_norm_share"))
        if epoch == 6:
            key_before_last_epochs = {n: w.detach().clone() for n, w in model._named_weights()}
    assert phases == ["dense"] * 2 + ["pull"] * 3 + ["masked"] * 5
    # the pull drives the non-key weights towards zero before they are masked
    assert shares[4] < shares[2]
    run = model.run_metrics()
    assert (run["prune_split_epoch"], run["prune_mask_epoch"]) == (3, 6)
    assert 0 <= run["output_nonkey_norm_share_at_mask"] < 0.5 and run["pruned_fraction"] == 0.5
    # masked weights are exactly zero; the key weights went on training after the mask
    moved = 0
    for name, w in model._named_weights():
        mask = model.masks[name]
        assert (w.detach()[mask == 0] == 0).all()
        moved += int((w.detach() != key_before_last_epochs[name])[mask == 1].sum())
    assert moved > 0


def test_pruning_needs_an_epoch_after_the_mask_and_sensible_fractions():
    with pytest.raises(UserError, match="epochs >= 2"):
        lion(epochs=1)
    lion(epochs=1, sparsity=0.0)  # nothing to prune: one epoch is fine
    with pytest.raises(UserError, match="prune_end"):
        lion(prune_start=0.6, prune_end=0.3)
    m = get_method("lion")
    for key, value, why in (("sparsity", 1.0, "below 1.0"), ("prune_start", 0.0, "above 0.0"),
                            ("contraction", 1.0, "below 1.0"), ("input_space", "pixels", "choose from pixel, token")):
        with pytest.raises(UserError, match=f"{key}={value!r} is not allowed .*{why}"):
            m.check_hparams({**m.defaults, key: value}, "--set")


def test_the_token_input_layer_needs_a_vit_and_the_pixel_one_works_on_any_classifier():
    resnet = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    with pytest.raises(UserError, match="input_space=pixel"):
        lion(resnet, input_space="token")
    model = lion(timm.create_model("test_resnet", pretrained=False, num_classes=0))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.slow
def test_on_the_demo_pruning_half_the_weights_costs_at_most_a_point():
    """The lottery-ticket procedure must not cut what it trained: at the demo's budget the pruned
    model, after training its key weights on, scores within a point of the same run without
    pruning. (Zeroing the non-key weights after the last step instead cost 13 points here.)"""
    from bench.data import resolve_data_root
    from bench.engine import EngineOptions, run
    from bench.method import select_methods
    from bench.spec import plan
    from bench.suite import load_suite

    suite = load_suite("demo")
    root = resolve_data_root(suite, None)
    task = [suite.task("shapes_loc")]
    top1 = {}
    for sparsity in (0.5, 0.0):
        spec = plan(suite, select_methods("lion"), task, [42], "final", suite.backbone, None,
                    [f"sparsity={sparsity}"])[0]
        out = run(spec, suite, root, EngineOptions(device=torch.device("cpu")))
        top1[sparsity] = out["metrics"]["top1"]
        if sparsity:
            assert out["method_metrics"]["pruned_fraction"] == 0.5
            assert out["curve"][-1]["prune_phase"] == "masked"
    assert top1[0.5] >= top1[0.0] - 1.0, top1
