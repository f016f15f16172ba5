"""LION's equilibrium layers: the solver converges, the implicit gradient is the true one,
memory does not grow with iterations, pruning is exact and stays."""

import pytest
import timm
import torch

from bench.methods.lion import EquilibriumLayer, anderson, fixed_point, project_rows_l1
from bench.registry import get_method


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


def test_the_implicit_gradient_matches_differentiating_through_unrolled_iterations():
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
    model.finalize_pruning()
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
