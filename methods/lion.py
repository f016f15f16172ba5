"""LION: implicit vision prompt tuning (Wang et al., "LION: Implicit Vision Prompt Tuning",
AAAI 2024, arXiv 2303.09992), as a documented reconstruction: no public code exists.

From the paper: two equilibrium implicit layers are inserted at the two ends of a frozen
pre-trained backbone, one in front of the input and one behind the output, as prompts that
enrich the vision input and the representation; their parameters are pruned following the
lottery ticket hypothesis, with a robust training in which a magnitude threshold splits key from
non-key parameters and the non-key ones are driven to zero by strong regularisation; the
motivation is the stable, low memory of deep implicit models.

Our choices (each a hyperparameter):
- Equilibrium layer: z* = f(z*, u) = relu(A z* + B u + b), output u + G z* + c, hidden width
  `width`. The input layer acts token-wise on the ViT's tokens after patch and position
  embedding (`input_space="token"`), or on the image itself with 3x3 convolutions
  (`input_space="pixel"`, the paper's CNN setting suggests it); the output layer acts on the
  pooled feature before the head. G and c start at zero, so LION starts as the frozen backbone.
- Well-posedness: relu is 1-Lipschitz, so ||A||_inf <= `contraction` < 1 makes f a contraction
  in the infinity norm with a unique fixed point (El Ghaoui et al., "Implicit Deep Learning",
  2021). We keep it by projecting every row of A (a conv kernel's rows: one output channel's
  weights) onto the L1 ball of that radius after each optimizer step; unlike spectral
  normalisation it needs no power iteration and the bound is exact.
- Forward: solve without building a graph (`solver` "anderson" or "fixed_point", `max_iter`,
  `tol`), then one differentiable step of f. Backward: `backward="implicit"` solves the adjoint
  fixed point y = J^T y + grad with the same solver inside a backward hook (memory does not grow
  with the number of iterations); `backward="phantom"` keeps only the one-step gradient.
- Pruning: after `prune_warmup` of the epochs, the weights (A, B, G) of each layer with
  magnitude below that layer's `sparsity` quantile become non-key and get an L2 pull of
  strength `prune_l2`; after the last epoch they are set to exactly zero and masked. The
  trainable-parameter count is the dense count minus the pruned weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from bench.model import PeftModel, check_cls_vit, freeze, make_head
from bench.registry import register_method


def project_rows_l1(weight: torch.Tensor, radius: float) -> None:
    """In place: each row (dim 0) of `weight`, flattened, onto the L1 ball of `radius`
    (Duchi et al. 2008), so that ||weight||_inf (max row L1 norm) <= radius."""
    rows = weight.data.reshape(weight.shape[0], -1)
    norms = rows.abs().sum(1)
    over = norms > radius
    if not over.any():
        return
    v = rows[over]
    mu = v.abs().sort(dim=1, descending=True).values
    cumsum = mu.cumsum(1)
    k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    cond = mu - (cumsum - radius) / k > 0
    rho = cond.to(v.dtype).cumsum(1).argmax(1, keepdim=True)  # last index where cond holds
    theta = (cumsum.gather(1, rho) - radius) / (rho + 1).to(v.dtype)
    rows[over] = v.sign() * (v.abs() - theta).clamp_min(0)


def fixed_point(f, z0: torch.Tensor, max_iter: int, tol: float):
    """Plain iteration z <- f(z); returns (z, iterations, relative residual)."""
    z, res = z0, float("inf")
    for i in range(1, max_iter + 1):
        nxt = f(z)
        res = ((nxt - z).norm() / (nxt.norm() + 1e-8)).item()
        z = nxt
        if res < tol:
            return z, i, res
    return z, max_iter, res


def anderson(f, z0: torch.Tensor, max_iter: int, tol: float, m: int = 5, lam: float = 1e-4, beta: float = 1.0):
    """Anderson acceleration over the rows of z0 (each row an independent fixed point)."""
    shape = z0.shape
    x0 = z0.reshape(shape[0], -1)
    n, d = x0.shape
    X = torch.zeros(n, m, d, dtype=x0.dtype, device=x0.device)
    Fx = torch.zeros_like(X)
    X[:, 0], Fx[:, 0] = x0, f(x0.view(shape)).reshape(n, -1)
    X[:, 1], Fx[:, 1] = Fx[:, 0], f(Fx[:, 0].view(shape)).reshape(n, -1)
    H = torch.zeros(n, m + 1, m + 1, dtype=x0.dtype, device=x0.device)
    H[:, 0, 1:] = H[:, 1:, 0] = 1
    y = torch.zeros(n, m + 1, 1, dtype=x0.dtype, device=x0.device)
    y[:, 0] = 1
    res = float("inf")
    k = 1
    for k in range(2, max_iter + 1):
        mk = min(k, m)
        G = Fx[:, :mk] - X[:, :mk]
        GG = G @ G.transpose(1, 2)
        # regularise relative to the residuals' scale: a fixed lam would swamp them near convergence
        reg = lam * GG.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
        H[:, 1:mk + 1, 1:mk + 1] = GG + reg[:, None, None] * torch.eye(mk, dtype=x0.dtype, device=x0.device)
        alpha = torch.linalg.solve(H[:, :mk + 1, :mk + 1], y[:, :mk + 1])[:, 1:mk + 1, 0]
        X[:, k % m] = beta * (alpha[:, None] @ Fx[:, :mk])[:, 0] + (1 - beta) * (alpha[:, None] @ X[:, :mk])[:, 0]
        Fx[:, k % m] = f(X[:, k % m].view(shape)).reshape(n, -1)
        res = ((Fx[:, k % m] - X[:, k % m]).norm() / (Fx[:, k % m].norm() + 1e-8)).item()
        if res < tol:
            break
    return Fx[:, k % m].view(shape), k, res


SOLVERS = {"anderson": anderson, "fixed_point": fixed_point}


class EquilibriumLayer(nn.Module):
    """u -> u + G z* + c with z* = relu(A z* + B u + b). Linear maps act on the last dim
    (`conv=False`) or as 3x3 convolutions over (C, H, W) images (`conv=True`)."""

    def __init__(self, dim: int, width: int, conv: bool = False, solver: str = "anderson",
                 max_iter: int = 30, tol: float = 1e-4, backward: str = "implicit", contraction: float = 0.9):
        super().__init__()
        if solver not in SOLVERS:
            raise UserError(f"lion: solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if backward not in ("implicit", "phantom"):
            raise UserError(f"lion: backward must be implicit or phantom, got {backward!r}")
        if not 0 < contraction < 1:
            raise UserError(f"lion: contraction must be in (0, 1), got {contraction}")
        if conv:
            self.A = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.B = nn.Conv2d(dim, width, 3, padding=1)
            self.G = nn.Conv2d(width, dim, 3, padding=1)
        else:
            self.A = nn.Linear(width, width, bias=False)
            self.B = nn.Linear(dim, width)
            self.G = nn.Linear(width, dim)
        nn.init.zeros_(self.G.weight)
        nn.init.zeros_(self.G.bias)
        self.solver, self.max_iter, self.tol = solver, max_iter, tol
        self.backward_mode, self.contraction = backward, contraction
        self.project()
        self.stats = {"calls": 0, "iterations": 0.0, "residual": 0.0}

    def project(self) -> None:
        project_rows_l1(self.A.weight, self.contraction)

    def f(self, z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        return F.relu(self.A(z) + injection)

    def solve(self, f, z0):
        return SOLVERS[self.solver](f, z0, self.max_iter, self.tol)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # The solvers need fp32: under bf16 autocast, Anderson's residuals lose the precision its
        # normal equations need (they become singular). The layer is small; it runs in fp32 and
        # hands fp32 on (the backbone's autocast casts it back for its matmuls).
        with torch.autocast(u.device.type, enabled=False):
            return self._forward(u.float() if u.dtype in (torch.float16, torch.bfloat16) else u)

    def _forward(self, u: torch.Tensor) -> torch.Tensor:
        injection = self.B(u)
        with torch.no_grad():
            z_star, iters, res = self.solve(lambda z: self.f(z, injection), torch.zeros_like(injection))
        self.stats["calls"] += 1
        self.stats["iterations"] += iters
        self.stats["residual"] = res
        z = self.f(z_star, injection)  # one differentiable step at the fixed point
        if self.training and self.backward_mode == "implicit" and z.requires_grad:
            z_in = z_star.detach().requires_grad_()
            with torch.enable_grad():
                f_in = self.f(z_in, injection.detach())

            def adjoint(grad):
                if grad is None:
                    return None
                # y = J^T y + grad, J = df/dz at z*: solved like the forward fixed point
                def step(y):
                    return torch.autograd.grad(f_in, z_in, y, retain_graph=True)[0] + grad
                y, _, _ = self.solve(step, grad)
                return y

            z.register_hook(adjoint)
        return u + self.G(z)

    def weights(self) -> list[nn.Parameter]:
        return [self.A.weight, self.B.weight, self.G.weight]


class LIONModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        check_cls_vit(backbone, "lion")
        freeze(backbone)
        super().__init__(backbone, make_head(backbone.embed_dim, num_classes), frozen_backbone=True)
        opts = dict(solver=hp["solver"], max_iter=hp["max_iter"], tol=hp["tol"], backward=hp["backward"],
                    contraction=hp["contraction"])
        if hp["input_space"] not in ("token", "pixel"):
            raise UserError(f"lion: input_space must be token or pixel, got {hp['input_space']!r}")
        self.pixel = hp["input_space"] == "pixel"
        dim_in = 3 if self.pixel else backbone.embed_dim
        width_in = hp["pixel_width"] if self.pixel else hp["width"]
        self.input_layer = EquilibriumLayer(dim_in, width_in, conv=self.pixel, **opts)
        self.output_layer = EquilibriumLayer(backbone.embed_dim, hp["width"], **opts)
        self.sparsity, self.prune_warmup, self.prune_l2 = hp["sparsity"], hp["prune_warmup"], hp["prune_l2"]
        self.masks: dict[str, torch.Tensor] = {}  # 1 = key weight, 0 = non-key
        self.pruned = False

    def layers(self):
        return [self.input_layer, self.output_layer]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        if self.pixel:
            x = self.input_layer(x)
        x = bb.patch_embed(x)
        x = bb._pos_embed(x)
        x = bb.patch_drop(x)
        x = bb.norm_pre(x)
        if not self.pixel:
            x = self.input_layer(x)
        x = bb.blocks(x)
        x = bb.norm(x)
        return self.output_layer(bb.forward_head(x, pre_logits=True))

    def _named_weights(self):
        for li, layer in enumerate(self.layers()):
            for name, w in zip("ABG", layer.weights()):
                yield f"{li}.{name}", w

    def split_key_weights(self) -> None:
        """Per layer, the `sparsity` fraction of weights with the smallest magnitude is non-key."""
        for li, layer in enumerate(self.layers()):
            ws = layer.weights()
            flat = torch.cat([w.detach().abs().flatten() for w in ws])
            keep = torch.ones_like(flat)
            keep[flat.argsort()[:int(round(self.sparsity * flat.numel()))]] = 0
            for name, w, m in zip("ABG", ws, keep.split([w.numel() for w in ws])):
                self.masks[f"{li}.{name}"] = m.view_as(w).clone()

    def finalize_pruning(self) -> None:
        if not self.masks:
            self.split_key_weights()
        self.pruned = True
        self.after_optimizer_step()

    def regularization(self):
        if not self.masks or self.pruned:
            return None
        total = sum(((w * (1 - self.masks[n])) ** 2).sum() for n, w in self._named_weights())
        return self.prune_l2 * total

    def after_optimizer_step(self) -> None:
        with torch.no_grad():
            if self.pruned:
                for n, w in self._named_weights():
                    w.mul_(self.masks[n])
            for layer in self.layers():
                layer.project()

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        if self.sparsity <= 0:
            return
        if not self.masks and epoch + 1 >= max(1, math.ceil(self.prune_warmup * epochs)) and epoch + 1 < epochs:
            self.split_key_weights()
        if epoch + 1 == epochs:
            self.finalize_pruning()

    def extra_state(self) -> dict:
        return {"masks": {k: m.clone() for k, m in self.masks.items()}, "pruned": self.pruned,
                "stats": [dict(layer.stats) for layer in self.layers()]}

    def load_extra_state(self, state: dict) -> None:
        device = self.head.weight.device
        self.masks = {k: m.to(device) for k, m in state["masks"].items()}
        self.pruned = state["pruned"]
        for layer, stats in zip(self.layers(), state["stats"]):
            layer.stats = dict(stats)

    def param_counts(self) -> dict[str, int]:
        counts = super().param_counts()
        pruned = sum(int((1 - m).sum()) for m in self.masks.values()) if self.pruned else 0
        counts["trainable_params_dense"] = counts["trainable_params"]
        counts["trainable_params"] -= pruned
        counts["trainable_params_no_head"] -= pruned
        return counts

    def run_metrics(self) -> dict[str, float]:
        out = {}
        for name, layer in (("input", self.input_layer), ("output", self.output_layer)):
            calls = max(1, layer.stats["calls"])
            out[f"{name}_mean_iterations"] = layer.stats["iterations"] / calls
            out[f"{name}_final_residual"] = layer.stats["residual"]
        out["pruned_fraction"] = (sum(int((1 - m).sum()) for m in self.masks.values()) /
                                  max(1, sum(m.numel() for m in self.masks.values()))) if self.pruned else 0.0
        out.update(self.param_counts())
        return out


def trainable_params(backbone, num_classes, hp) -> int:
    d, r = backbone.embed_dim, hp["width"]
    out_layer = r * r + (d * r + r) + (r * d + d)
    if hp["input_space"] == "pixel":
        p = hp["pixel_width"]
        in_layer = 9 * p * p + (9 * 3 * p + p) + (9 * p * 3 + 3)
    else:
        in_layer = out_layer
    return in_layer + out_layer + d * num_classes + num_classes


@register_method(
    "lion",
    defaults={"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0, "width": 32, "input_space": "token",
              "pixel_width": 8, "solver": "anderson", "max_iter": 30, "tol": 1e-4, "backward": "implicit",
              "contraction": 0.9, "sparsity": 0.5, "prune_warmup": 0.5, "prune_l2": 1e-2},
    summary="two equilibrium layers (input tokens, pooled output) on a frozen ViT, lottery-ticket pruned",
    paper="Wang et al., LION: Implicit Vision Prompt Tuning, AAAI 2024 (reconstruction)",
    formula=trainable_params,
    grid={"lr": [1e-2, 5e-3, 1e-3], "weight_decay": [0.0, 1e-4]},
    identity_at_init=True,
)
def build(backbone, num_classes, hparams):
    """LION: implicit equilibrium prompts at both ends of a frozen ViT."""
    return LIONModel(backbone, num_classes, hparams)
