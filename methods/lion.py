"""LION: implicit vision prompt tuning (Wang et al., "LION: Implicit Vision Prompt Tuning",
AAAI 2024, arXiv 2303.09992), as a documented reconstruction: no public code exists.

From the paper: two equilibrium implicit layers are inserted at the two ends of a frozen
pre-trained backbone, one in front of the input and one behind the output, as prompts that
enrich the vision input and the representation; their parameters are pruned following the
lottery ticket hypothesis, with a robust training in which a magnitude threshold splits key from
non-key parameters and the non-key ones are driven to zero by strong regularisation; the
motivation is the stable, low memory of deep implicit models.

Our choices (each a hyperparameter; methods/README.md explains them):
- Equilibrium layer: z* = f(z*, u) = relu(A z* + B u + b), output u + G z* + c, hidden width
  `width`. The input layer acts on the image in front of the backbone with 3x3 convolutions
  (`input_space="pixel"`, the default: the paper's Figure 2 puts it "in front of the input"), or
  token-wise on a ViT's tokens after patch and position embedding (`input_space="token"`); the
  output layer acts on the pooled feature behind the backbone, before the head. G and c start at
  zero, so LION starts as the frozen backbone. The pixel variant works on any timm classifier.
- Well-posedness: relu is 1-Lipschitz, so ||A||_inf <= `contraction` < 1 makes f a contraction
  in the infinity norm with a unique fixed point (El Ghaoui et al., "Implicit Deep Learning",
  2021). We keep it by projecting every row of A (a conv kernel's rows: one output channel's
  weights) onto the L1 ball of that radius after each optimizer step; unlike spectral
  normalisation it needs no power iteration and the bound is exact.
- Forward: solve without building a graph (`solver` "anderson" or "fixed_point", `max_iter`,
  `tol`), then one differentiable step of f. Backward: `backward="implicit"` solves the adjoint
  fixed point y = J^T y + grad with the same solver inside a backward hook (memory does not grow
  with the number of iterations); `backward="phantom"` keeps only the one-step gradient.
- Pruning in three phases: dense training; after `prune_start` of the epochs the weights (A, B,
  G) of each layer with magnitude below that layer's `sparsity` quantile become non-key and an L2
  pull of strength `prune_l2` drives them towards zero; after `prune_end` of the epochs they are
  set to exactly zero and masked, and the key weights train on for the remaining epochs. The
  trainable-parameter count is the dense count minus the pruned weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from timm.models.vision_transformer import VisionTransformer

from bench.errors import UserError
from bench.model import PeftModel, freeze, make_head
from bench.method import Setting, register_method


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
    v = v.sign() * (v.abs() - theta).clamp_min(0)
    # With entries far larger than the radius (a diverging step), v.abs() - theta cancels and
    # rounding can leave a row outside the ball: scale such rows onto it, so the bound is exact.
    v = v * (radius / v.abs().sum(1, keepdim=True).clamp_min(radius)).clamp_max(1.0)
    rows[over] = v


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
    # X: the last m iterates, Fx: f of them, G = Fx - X: their residuals, kept slot by slot (every
    # slot read has been written, so the buffers need no zeroing)
    X = torch.empty(n, m, d, dtype=x0.dtype, device=x0.device)
    Fx, G = torch.empty_like(X), torch.empty_like(X)
    X[:, 0], Fx[:, 0] = x0, f(x0.view(shape)).reshape(n, -1)
    X[:, 1], Fx[:, 1] = Fx[:, 0], f(Fx[:, 0].view(shape)).reshape(n, -1)
    torch.sub(Fx[:, :2], X[:, :2], out=G[:, :2])
    H = torch.zeros(n, m + 1, m + 1, dtype=x0.dtype, device=x0.device)
    H[:, 0, 1:] = H[:, 1:, 0] = 1
    y = torch.zeros(n, m + 1, 1, dtype=x0.dtype, device=x0.device)
    y[:, 0] = 1
    eye = torch.eye(m, dtype=x0.dtype, device=x0.device)
    res = float("inf")
    k = 1
    for k in range(2, max_iter + 1):
        mk = min(k, m)
        GG = G[:, :mk] @ G[:, :mk].transpose(1, 2)
        # regularise relative to the residuals' scale: a fixed lam would swamp them near convergence
        reg = lam * GG.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
        H[:, 1:mk + 1, 1:mk + 1] = GG + reg[:, None, None] * eye[:mk, :mk]
        alpha = torch.linalg.solve(H[:, :mk + 1, :mk + 1], y[:, :mk + 1])[:, 1:mk + 1, 0]
        mixed = (alpha[:, None] @ Fx[:, :mk])[:, 0]
        if beta != 1.0:  # undamped (the default) needs no second product
            mixed = beta * mixed + (1 - beta) * (alpha[:, None] @ X[:, :mk])[:, 0]
        slot = k % m
        X[:, slot] = mixed
        Fx[:, slot] = f(mixed.view(shape)).reshape(n, -1)
        torch.sub(Fx[:, slot], X[:, slot], out=G[:, slot])
        res = (G[:, slot].norm() / (Fx[:, slot].norm() + 1e-8)).item()
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
            with torch.no_grad():
                active = (self.A(z_star) + injection > 0).to(z_star.dtype)  # relu' at the fixed point

            def adjoint(grad):
                if grad is None:
                    return None
                # y = J^T y + grad, with J = diag(relu') A the Jacobian of f at z*: solved like the
                # forward fixed point, J^T y written out (no graph is built per iteration)
                def step(y):
                    return self.A_transposed(y * active) + grad
                y, _, _ = self.solve(step, grad)
                return y

            z.register_hook(adjoint)
        return u + self.G(z)

    def A_transposed(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y: the adjoint of the linear map or of the 3x3 convolution A."""
        w = self.A.weight.detach()
        if isinstance(self.A, nn.Conv2d):
            return F.conv_transpose2d(y, w, padding=self.A.padding)
        return y @ w

    def weights(self) -> list[nn.Parameter]:
        return [self.A.weight, self.B.weight, self.G.weight]


class LIONModel(PeftModel):
    def __init__(self, backbone, num_classes: int, hp: dict):
        # each value's own range is checked with the settings below, when the suite is planned;
        # what depends on several values, or on the backbone, is checked here
        pixel = hp["input_space"] == "pixel"
        if not pixel and not isinstance(backbone, VisionTransformer):
            raise UserError(f"lion: input_space='token' acts on a ViT's tokens and needs a timm "
                            f"VisionTransformer, got {type(backbone).__name__}; use input_space=pixel "
                            "(the default), which works on any timm classifier")
        if hp["sparsity"] > 0 and hp["epochs"] < 2:
            raise UserError(f"lion: pruning masks the non-key weights and then trains the key ones for "
                            f"at least one more epoch, so it needs epochs >= 2 (got {hp['epochs']}); "
                            "raise epochs or set sparsity=0")
        if hp["prune_end"] < hp["prune_start"]:
            raise UserError(f"lion: prune_end ({hp['prune_end']}) must not come before prune_start "
                            f"({hp['prune_start']})")
        freeze(backbone)
        dim = int(backbone.num_features)
        super().__init__(backbone, make_head(dim, num_classes), frozen_backbone=True)
        opts = dict(solver=hp["solver"], max_iter=hp["max_iter"], tol=hp["tol"], backward=hp["backward"],
                    contraction=hp["contraction"])
        self.pixel = pixel
        if self.pixel:
            self.input_layer = EquilibriumLayer(3, hp["pixel_width"], conv=True, **opts)
        else:
            self.input_layer = EquilibriumLayer(backbone.embed_dim, hp["width"], **opts)
            # The tokens after patch and position embedding are the output of `norm_pre` (an
            # Identity in most ViTs): a hook there puts the layer in place without copying the
            # ViT's forward or calling its private methods.
            backbone.norm_pre.register_forward_hook(_TokenLayerHook(self.input_layer))
        self.output_layer = EquilibriumLayer(dim, hp["width"], **opts)
        self.sparsity = hp["sparsity"]
        self.prune_split_epoch, self.prune_mask_epoch = prune_schedule(hp["epochs"], hp["prune_start"],
                                                                       hp["prune_end"])
        self.prune_l2 = hp["prune_l2"]
        self.masks: dict[str, torch.Tensor] = {}  # 1 = key weight, 0 = non-key
        self.pruned = False
        self.nonkey_share_at_mask: dict[str, float] = {}

    def layers(self):
        return [self.input_layer, self.output_layer]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.pixel:
            x = self.input_layer(x)
        return self.output_layer(self.backbone(x))  # timm with num_classes=0: the pooled feature

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

    def nonkey_norm_shares(self) -> dict[str, float]:
        """Per layer, the non-key weights' share of the layer's weight norm (0 once masked)."""
        shares = {}
        for li, name in enumerate(("input", "output")):
            pairs = [(w.detach(), self.masks[f"{li}.{n}"]) for n, w in zip("ABG", self.layers()[li].weights())]
            total = torch.sqrt(sum((w ** 2).sum() for w, _ in pairs))
            nonkey = torch.sqrt(sum(((w * (1 - m)) ** 2).sum() for w, m in pairs))
            shares[name] = float(nonkey / total) if total > 0 else 0.0
        return shares

    def mask_nonkey(self) -> None:
        """Zero and mask the non-key weights; the key weights go on training."""
        if not self.masks:
            self.split_key_weights()
        self.nonkey_share_at_mask = self.nonkey_norm_shares()
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
        if epoch + 1 == self.prune_split_epoch and not self.masks:
            self.split_key_weights()
        if epoch + 1 == self.prune_mask_epoch and not self.pruned:
            self.mask_nonkey()

    def epoch_metrics(self) -> dict:
        if self.sparsity <= 0:
            return {}
        phase = "masked" if self.pruned else ("pull" if self.masks else "dense")
        out: dict = {"prune_phase": phase}
        if self.masks and not self.pruned:
            out.update({f"{k}_nonkey_norm_share": v for k, v in self.nonkey_norm_shares().items()})
        return out

    def extra_state(self) -> dict:
        return {"masks": {k: m.clone() for k, m in self.masks.items()}, "pruned": self.pruned,
                "nonkey_share_at_mask": dict(self.nonkey_share_at_mask),
                "stats": [dict(layer.stats) for layer in self.layers()]}

    def load_extra_state(self, state: dict) -> None:
        device = self.head.weight.device
        self.masks = {k: m.to(device) for k, m in state["masks"].items()}
        self.pruned = state["pruned"]
        self.nonkey_share_at_mask = dict(state.get("nonkey_share_at_mask", {}))
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
        if self.pruned:
            out["prune_split_epoch"] = self.prune_split_epoch
            out["prune_mask_epoch"] = self.prune_mask_epoch
            for name, share in self.nonkey_share_at_mask.items():
                out[f"{name}_nonkey_norm_share_at_mask"] = share
        out.update(self.param_counts())
        return out


class _TokenLayerHook:
    """A forward hook that replaces a module's output by `layer(output)` (a plain object, so the
    layer is not registered twice as a submodule)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def __call__(self, module, inputs, output):
        return self.layer(output)


def prune_schedule(epochs: int, start: float, end: float) -> tuple[int, int]:
    """(split epoch, mask epoch), 1-based epochs after which each happens: the split into key and
    non-key weights after `start` of the epochs, the mask after `end` of them, and at least one
    epoch of training of the key weights alone after the mask."""
    split = min(epochs - 1, max(1, math.ceil(start * epochs)))
    mask = min(epochs - 1, max(split, math.ceil(end * epochs)))
    return split, mask


def trainable_params(backbone, num_classes, hp) -> int:
    """Dense count (before pruning) of both layers and the head."""
    d, r = int(backbone.num_features), hp["width"]
    out_layer = r * r + (d * r + r) + (r * d + d)
    if hp["input_space"] == "pixel":
        p = hp["pixel_width"]
        in_layer = 9 * p * p + (9 * 3 * p + p) + (9 * p * 3 + 3)
    else:
        e = backbone.embed_dim
        in_layer = r * r + (e * r + r) + (r * e + e)
    return in_layer + out_layer + d * num_classes + num_classes


SETTINGS = {
    "input_space": Setting("pixel", "where the input layer acts: the image (any classifier) or a ViT's tokens",
                           choices=("pixel", "token")),
    "width": Setting(32, "hidden width of the output layer (and of the token input layer)", min=1),
    "pixel_width": Setting(8, "channels of the pixel input layer's 3x3 convolutions", min=1),
    "solver": Setting("anderson", "fixed-point solver", choices=("anderson", "fixed_point")),
    "max_iter": Setting(30, "solver iterations at most", min=1),
    "tol": Setting(1e-4, "relative residual at which the solver stops", above=0.0),
    "backward": Setting("implicit", "gradient: implicit (adjoint fixed point) or phantom (one step)",
                        choices=("implicit", "phantom")),
    "contraction": Setting(0.9, "bound on ||A||_inf that makes each layer a contraction", above=0.0, below=1.0),
    "sparsity": Setting(0.5, "fraction of each layer's weights pruned (0: no pruning)", min=0.0, below=1.0),
    "prune_start": Setting(0.3, "fraction of the epochs after which key and non-key weights are split",
                           above=0.0, below=1.0),
    "prune_end": Setting(0.6, "fraction of the epochs after which the non-key weights are masked",
                         above=0.0, below=1.0),
    "prune_l2": Setting(1.0, "strength of the L2 pull on the non-key weights", min=0.0),
}


@register_method(
    "lion",
    defaults={"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0},
    settings=SETTINGS,
    summary="two equilibrium layers (on the image, on the pooled feature) around a frozen backbone, "
            "lottery-ticket pruned",
    paper="Wang et al., LION: Implicit Vision Prompt Tuning, AAAI 2024 (reconstruction)",
    formula=trainable_params,
    grid={"lr": [1e-2, 5e-3, 1e-3], "weight_decay": [0.0, 1e-4]},
    identity_at_init=True,
    backbones="any",
    report_columns={"Solver iters": ("input_mean_iterations", "output_mean_iterations")},
)
def build(backbone, num_classes, hparams):
    """LION: implicit equilibrium layers at both ends of a frozen backbone."""
    return LIONModel(backbone, num_classes, hparams)
